"""The response cache: a deterministic request's answer, kept across runs.

A request is deterministic when it samples greedily (temperature 0) or with a seed that was
chosen (`--seed`, `seed=`; a seed drawn at random for one run is never asked again);
then the same model, prompt and parameters give the same answer, and paying for it again
buys nothing. Keys are hashes of exactly what reaches the model (backend, model id,
endpoint, turns, sampling parameters, constraint), never of where the call sits in the
plan.

The store is one SQLite table of key → JSON text (`cache.db`, owner-only, in an
owner-only folder). Nothing else is ever read from it: no pickle, no other encoding, so a
`cache.db` crafted by someone else (a cloned repository's `.llmflow/`) can at worst hold
wrong answers, never run code. An entry that is not a valid answer is a miss. A cache
that cannot be opened, read or written never stops a run: the problem is reported once
and the run goes on without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llmflow.compiler.models import ModelSpec
from llmflow.runtime.backends.base import Generation, GenerationRequest
from llmflow.runtime.runs import private_dir
from llmflow.runtime.store import StoreError, dumps, open_private


def request_key(spec: ModelSpec, request: GenerationRequest) -> str:
    """What identifies an answer: everything the model sees, nothing about scheduling."""
    identity = {
        "backend": spec.backend,
        "id": spec.id,
        "base_url": spec.settings.get("base_url"),
        "chat": spec.chat,
        "request": request.model_dump(
            mode="json", exclude={"model", "group", "priority", "node", "random_seed"}
        ),
    }
    text = json.dumps(identity, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def deterministic(request: GenerationRequest) -> bool:
    """Worth caching: greedy, or sampled with a seed someone chose (a run's seed drawn
    at random is never asked again)."""
    return request.temperature == 0 or (request.seed is not None and not request.random_seed)


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class ResponseCache:
    """Answers by request key. `report` hears, once, why the cache is being bypassed
    (default: a RuntimeWarning)."""

    def __init__(self, directory: Path, report: Callable[[str], None] | None = None) -> None:
        self.path = directory / "cache.db"
        self._report = report if report is not None else _warn
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            self._db = _open(directory, self.path)
        except (OSError, StoreError, sqlite3.Error) as err:
            self._bypass(err)

    def get(self, key: str) -> Generation | None:
        """The stored answer, or None: not stored, not a valid answer, or no cache."""
        row = self._execute("SELECT answer FROM answers WHERE key = ?", (key,))
        return _answer(row[0]) if row else None

    def put(self, key: str, generation: Generation) -> None:
        text = dumps(generation.model_dump(mode="json"))
        self._execute("INSERT OR REPLACE INTO answers (key, answer) VALUES (?, ?)", (key, text))

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None

    def _execute(self, sql: str, params: tuple[str, ...]) -> tuple[Any, ...] | None:
        with self._lock:
            if self._db is None:
                return None
            try:
                return self._db.execute(sql, params).fetchone()
            except sqlite3.Error as err:
                self._bypass(err)
                return None

    def _bypass(self, err: Exception) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        detail = str(err) if isinstance(err, StoreError) else f"{self.path}: {_reason(err)}"
        if type(err) is sqlite3.DatabaseError:  # not a database, or a damaged one
            detail += f" (delete {self.path} to start a new cache)"
        self._report(f"response cache unusable, running without it: {detail}")


def _reason(err: Exception) -> str:
    return (err.strerror if isinstance(err, OSError) else None) or str(err)


def _open(directory: Path, path: Path) -> sqlite3.Connection:
    private_dir(directory, parents=True)
    # Create (or tighten) the database and SQLite's side files first, owner-only, and
    # refuse a link or a directory in their place; SQLite gives the -wal and -shm files it
    # creates the database's mode.
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        side = path.with_name(name)
        if side == path or os.path.lexists(side):
            os.close(open_private(side, os.O_RDWR | os.O_CREAT))
    db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA trusted_schema = OFF")  # a crafted schema's views run no functions
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT)")
        db.execute("SELECT answer FROM answers LIMIT 1").fetchone()
    except BaseException:
        db.close()
        raise
    return db


def _answer(value: Any) -> Generation | None:
    """The answer an entry holds, if it is one: JSON text of a Generation, nothing else."""
    if not isinstance(value, str):
        return None
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        return Generation.model_validate(data, strict=True)
    except ValidationError:
        return None
