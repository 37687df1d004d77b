"""Where a run keeps what outlives it: `.llmflow/` in the working directory (or
`$LLMFLOW_HOME`), holding the response cache and one folder per run.

    .llmflow/cache/cache.db         response cache (SQLite, key → JSON text)
    .llmflow/runs/RUN/run.json      program, flow, inputs, options, status, outputs
    .llmflow/runs/RUN/journal.jsonl every answer received (for --resume)
    .llmflow/runs/RUN/trace.jsonl   one record per call (OpenTelemetry GenAI names)

Our folders are 0700 and our files 0600. The home folder is created 0700 when it does not
exist; one that exists (a folder `LLMFLOW_HOME` names) keeps its mode.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from llmflow.runtime.store import StoreError, dumps, read_json_file

STATUSES = ("running", "stopped", "done", "failed")
"""A run that is "running" in its record but whose process is gone was killed (SIGKILL,
power loss): it is treated as stopped."""

_FIELDS: dict[str, type | tuple[type, ...]] = {
    "program": str,
    "flow": str,
    "inputs": dict,
    "models": list,
    "status": str,
    "started": (int, float),
}
_OPTIONAL: dict[str, type | tuple[type, ...]] = {"outputs": dict, "finished": (int, float)}


def home() -> Path:
    return Path(os.environ.get("LLMFLOW_HOME") or ".llmflow")


def ensure_home(root: Path | None = None) -> Path:
    """The home folder: created owner-only if it does not exist (its missing parents get
    the usual mode); an existing one keeps its mode."""
    root = root or home()
    try:
        root.mkdir(mode=0o700, parents=True)
        root.chmod(0o700)  # the umask may have taken bits from mkdir's mode
    except FileExistsError:
        if not root.is_dir():
            raise StoreError(f"{root} is not a folder (LLMFLOW_HOME names where runs go)") from None
    except OSError as err:
        raise StoreError(f"cannot create {root}: {err.strerror}") from None
    return root


def private_dir(path: Path, parents: bool = False) -> Path:
    """One of llmflow's own folders: created owner-only, or tightened to it (group and
    others lose their access; the owner's own bits are left as they are)."""
    try:
        path.mkdir(mode=0o700, parents=parents)
        path.chmod(0o700)  # the umask may have taken bits from mkdir's mode
    except FileExistsError:
        if not path.is_dir():
            raise StoreError(f"{path} is not a folder") from None
        try:
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                path.chmod(mode & 0o700)
        except OSError as err:
            raise StoreError(f"cannot use {path}: {err.strerror}") from None
    except OSError as err:
        raise StoreError(f"cannot create {path}: {err.strerror}") from None
    return path


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.id = path.name

    @classmethod
    def create(cls, root: Path | None = None) -> RunDir:
        """A new run folder, never one another run has: two runs started in the same
        second (or at the same instant, in two processes) get two folders."""
        runs = private_dir(ensure_home(root) / "runs")
        for _ in range(1000):
            path = runs / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                continue
            except OSError as err:
                raise StoreError(f"cannot create a run folder in {runs}: {err.strerror}") from None
            path.chmod(0o700)
            return cls(path)
        raise StoreError(f"cannot create a run folder in {runs}: every name tried is taken")

    @classmethod
    def find(cls, ref: str, root: Path | None = None) -> RunDir:
        """A run by id (`20261126-124501-ab12`), the path of its folder, or `last` (the
        latest run whose record is written: a folder still being set up is not one)."""
        runs = (root or home()) / "runs"
        known = _runs_in(runs)
        if ref == "last" and known:
            return cls(_latest(runs, known))
        for path in (Path(ref), runs / ref):
            if os.path.lexists(path / "run.json"):
                return cls(path)
        hint = f"; recent runs: {', '.join(known[-3:])}" if known else ""
        raise StoreError(f"no run '{ref}' in {runs}{hint}")

    @classmethod
    def of_output(cls, output: Path, root: Path | None = None) -> RunDir | None:
        """The latest dataset run that wrote this results file (its record names it),
        if any: running again with the same `--output` resumes it."""
        runs = (root or home()) / "runs"
        wanted = str(output.resolve())
        for name in reversed(_runs_in(runs)):
            run = cls(runs / name)
            try:
                dataset = run.read_meta().get("dataset")
            except StoreError:
                continue  # a broken record is no one's results file
            if isinstance(dataset, dict) and dataset.get("output") == wanted:
                return run
        return None

    @property
    def journal(self) -> Path:
        return self.path / "journal.jsonl"

    @property
    def trace(self) -> Path:
        return self.path / "trace.jsonl"

    @property
    def meta_path(self) -> Path:
        return self.path / "run.json"

    def read_meta(self) -> dict[str, Any]:
        """The run's record, checked: a corrupt one is an error naming the file."""
        meta = read_json_file(self.meta_path, "a run record")
        problem = _meta_problem(meta)
        if problem:
            raise StoreError(f"{self.meta_path}: not a run record: {problem}")
        return meta

    def lock(self) -> None:
        """Hold the run for this process until `unlock` (or the process ends): a second
        `--resume` of it while it runs would send every call again and keep its own
        budget, so it is refused."""
        try:
            fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            raise StoreError(f"cannot lock run {self.id}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(
                f"run {self.id} is still running in another process; wait for it to stop"
            ) from None
        self._lock = fd

    def unlock(self) -> None:
        fd = getattr(self, "_lock", None)
        if fd is not None:
            os.close(fd)  # closing the file releases the lock
            self._lock = None

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Replace the record in one step (a temporary file renamed over it): a reader, or
        a crash, sees the old record or the new one, never part of one."""
        data = dumps(meta, indent=2).encode("utf-8")
        try:
            fd, tmp = tempfile.mkstemp(prefix=".run.", suffix=".tmp", dir=self.path)  # 0600
        except OSError as err:
            raise StoreError(f"cannot write {self.meta_path}: {err.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(tmp, self.meta_path)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StoreError(f"cannot write {self.meta_path}: {err.strerror}") from None


def _runs_in(runs: Path) -> list[str]:
    """The ids of the runs in `runs` that have a record, oldest first."""
    if not runs.is_dir():
        return []
    return sorted(
        entry.name
        for entry in os.scandir(runs)
        if entry.is_dir() and os.path.lexists(os.path.join(entry.path, "run.json"))
    )


def _latest(runs: Path, known: list[str]) -> Path:
    """The run started last. Ids sort by the second they were made in; runs made in the
    same second are told apart by the start time in their records."""
    stamp = known[-1][:15]
    same = [name for name in known if name[:15] == stamp]
    if len(same) == 1:
        return runs / same[0]

    def started(name: str) -> float:
        try:
            return float(RunDir(runs / name).read_meta()["started"])
        except StoreError:
            return 0.0

    return runs / max(same, key=lambda name: (started(name), name))


def _meta_problem(meta: Any) -> str | None:
    if not isinstance(meta, dict):
        return "expected a JSON object"
    for name in _FIELDS:
        if name not in meta:
            return f"'{name}' is missing"
    for name, kind in (_FIELDS | _OPTIONAL).items():
        value = meta.get(name)
        if name in meta and (not isinstance(value, kind) or isinstance(value, bool)):
            return f"'{name}' should be {_KINDS[name]}, not {_json_type(value)}"
    if not all(isinstance(m, str) for m in meta["models"]):
        return "'models' should be a list of names"
    if meta["status"] not in STATUSES:
        return f"'status' should be one of {', '.join(STATUSES)}"
    return None


_KINDS = {
    "program": "a path",
    "flow": "a name",
    "inputs": "an object",
    "models": "a list of names",
    "status": "a string",
    "started": "a time (seconds)",
    "outputs": "an object",
    "finished": "a time (seconds)",
}


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return names.get(type(value), type(value).__name__)
