"""The results file of a dataset run: one JSON line per row, appended as each row ends.

    {"id": 7, "outputs": {...}, "error": null, "stats": {...}, "digest": "9f2c…"}

Each line goes to the operating system in one write the moment its row is done, so a
killed run keeps every row it finished, and the file is synced to disk at most a second
behind (and when the run ends). A crash can leave only the last line cut short: opening
the file again drops that line (its row runs again). Any other line that is not a result
is someone's edit, and is refused with its line and column rather than guessed at.

Opening an existing file is resuming it: the ids it holds are done, and `retry_failed`
then rewrites it (in one rename) without its failed rows, so they run again and each id keeps
one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from llmflow.runtime.batch import RowResult
from llmflow.runtime.calls import RowId
from llmflow.runtime.store import StoreError, dumps

SYNC_EVERY = 1.0
"""Seconds between syncs of the results file to disk."""

MAX_LINE = 64 * 2**20
"""Longest result line read back (a row's outputs; far above any model's answer)."""


def id_key(row_id: RowId) -> str:
    """A row id as a dict key: 7 and "7" are two ids."""
    return json.dumps(row_id)


class ResultsFile:
    """An open results file: what it held when opened (`done`, `failed`: id key →
    the row's input digest) and the appender of new lines."""

    def __init__(
        self,
        path: Path,
        *,
        warn: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.path = path
        self.done: dict[str, str | None] = {}
        self.failed: dict[str, str | None] = {}
        self.written = 0
        """Lines this process appended."""
        self._fd = _open(path)
        self._synced = time.monotonic()
        try:
            self._kept = self._read(warn)
        except BaseException:
            self.close()
            raise

    def retry_failed(self) -> None:
        """Drop the failed rows' lines, so that they run again and each id keeps one."""
        if self.failed:
            self._rewrite(self._kept)
            self.failed.clear()

    @property
    def rows(self) -> int:
        """Rows the file holds: done or failed."""
        return len(self.done) + len(self.failed)

    def has(self, row_id: RowId) -> bool:
        key = id_key(row_id)
        return key in self.done or key in self.failed

    def digest(self, row_id: RowId) -> str | None:
        key = id_key(row_id)
        return self.done.get(key, self.failed.get(key))

    def write(self, result: RowResult) -> None:
        data = (dumps(result.to_json()) + "\n").encode("utf-8")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
            now = time.monotonic()
            if now - self._synced >= SYNC_EVERY:
                os.fsync(self._fd)
                self._synced = now
        except OSError as err:
            raise StoreError(f"cannot write {self.path}: {err.strerror}") from None
        (self.done if result.error is None else self.failed)[id_key(result.id)] = result.digest
        self.written += 1

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _read(self, warn: Callable[[str], None]) -> list[tuple[int, int]]:
        """Read what the file holds; drop a last line cut short. Returns the byte
        ranges of the lines of rows that succeeded (what a retry keeps)."""
        kept: list[tuple[int, int]] = []
        for start, line, number, last in _lines(self._fd):
            complete = line.endswith(b"\n")
            entry = _entry(line) if complete else None
            if entry is None:
                if last:
                    shown = "cut short" if not complete else "not a whole result"
                    warn(
                        f"{self.path}:{number}: the last line is {shown} (a crash?): "
                        "dropped, its row runs again"
                    )
                    os.ftruncate(self._fd, start)
                    break
                raise StoreError(
                    f"{self.path}:{number}:1: not a result line of llmflow; fix or remove "
                    "it, or write to another --output"
                )
            row_id, digest, failed = entry
            key = id_key(row_id)
            if key in self.done or key in self.failed:
                raise StoreError(
                    f"{self.path}:{number}:1: row {key} is in the file twice; keep one line "
                    "per row, or write to another --output"
                )
            (self.failed if failed else self.done)[key] = digest
            if not failed:
                kept.append((start, start + len(line)))
        return kept

    def _rewrite(self, kept: list[tuple[int, int]]) -> None:
        """The file without its failed rows, replaced in one rename (a crash leaves the
        old file or the new one)."""
        folder = self.path.parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=folder)
        except OSError as err:
            raise StoreError(f"cannot rewrite {self.path}: {err.strerror}") from None
        try:
            os.fchmod(fd, stat.S_IMODE(os.fstat(self._fd).st_mode))
            for start, stop in kept:
                data = os.pread(self._fd, stop - start, start)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
            os.replace(tmp, self.path)
        except OSError as err:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StoreError(f"cannot rewrite {self.path}: {err.strerror}") from None
        os.close(self._fd)
        self._fd = fd
        os.lseek(fd, 0, os.SEEK_END)


def _open(path: Path) -> int:
    """The results file for reading and appending, created if missing (as any file the
    user's commands create); anything but a regular file is refused."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as err:
        if path.is_dir():
            raise StoreError(f"--output {path} is a directory, not a file") from None
        raise StoreError(f"cannot write {path}: {err.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreError(f"--output {path} is not a regular file (resuming needs to read it)")
    return fd


def _lines(fd: int) -> Iterator[tuple[int, bytes, int, bool]]:
    """(byte offset, line, line number, whether it is the last) of each non-blank line."""
    with os.fdopen(os.dup(fd), "rb") as file:
        file.seek(0)
        offset, number = 0, 0
        line = file.readline(MAX_LINE + 1)
        while line:
            following = file.readline(MAX_LINE + 1)
            number += 1
            if line.strip():
                yield offset, line, number, not following
            offset += len(line)
            line = following


def _entry(line: bytes) -> tuple[RowId, str | None, bool] | None:
    """(id, digest, failed) of a result line, or None if it is not one."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    row_id, error, digest = value.get("id"), value.get("error", 0), value.get("digest")
    if isinstance(row_id, bool) or not isinstance(row_id, str | int):
        return None
    if not isinstance(value.get("outputs"), dict) or not (error is None or isinstance(error, str)):
        return None
    return row_id, digest if isinstance(digest, str) else None, error is not None
