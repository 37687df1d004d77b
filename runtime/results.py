"""The results file of a dataset run: one JSON line per row, appended as each row ends.

    {"id": 7, "outputs": {...}, "error": null, "stats": {...}, "digest": "9f2c…"}

Each line goes to the operating system in one write the moment its row is done, so a
killed run keeps every row it finished, and the file is synced to disk at most a second
behind (and when the run ends). A crash can leave only the last line cut short: opening
the file again drops a last line without its newline, even one that reads as a whole
result (a write cut just before its newline looks so), and its row runs again. Any other
line that is not a result, the last one included, is someone's edit, and is refused with
its line and column rather than guessed at. A row whose line would be too long to read
back (MAX_LINE) is written as failed, saying so.

Opening an existing file is resuming it: the ids it holds are done, and `retry_failed`
then rewrites it (in one rename) without its failed rows, so they run again and each id keeps
one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from llmflow.runtime.batch import RowResult
from llmflow.runtime.calls import RowId
from llmflow.runtime.secrets import clip
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
    the row's input digest) and the appender of new lines. What it appends is counted,
    not remembered (a run's own rows are one per id already), so memory does not grow
    with the rows a run writes."""

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
        self.written_failed = 0
        """Of them, rows that failed."""
        self._fd = _open(path)
        self._synced = time.monotonic()
        try:
            self._kept = self._read(warn)
            """Byte ranges of the lines of rows that succeeded: what a retry keeps."""
            self._end = os.fstat(self._fd).st_size
        except BaseException:
            self.close()
            raise

    def retry_failed(self) -> None:
        """Drop the failed rows' lines, so that they run again and each id keeps one
        (before any row is written: a run's own failures are its to report)."""
        if self.written:
            raise StoreError(f"{self.path}: failed rows are retried before rows are written")
        if self.failed:
            self._rewrite()
            self.failed.clear()

    @property
    def rows(self) -> int:
        """Rows the file holds: done or failed."""
        return len(self.done) + len(self.failed) + self.written

    @property
    def failed_rows(self) -> int:
        """Rows of the file that failed, before this run and in it."""
        return len(self.failed) + self.written_failed

    def has(self, row_id: RowId) -> bool:
        key = id_key(row_id)
        return key in self.done or key in self.failed

    def digest(self, row_id: RowId) -> str | None:
        key = id_key(row_id)
        return self.done.get(key, self.failed.get(key))

    def write(self, result: RowResult) -> None:
        """Append the row's line (a row the file held is refused: one line per id)."""
        key = id_key(result.id)
        if key in self.done or key in self.failed:
            raise StoreError(f"{self.path}: row {clip(key, 60)} is written already")
        value = result.to_json()
        data = (dumps(value) + "\n").encode("utf-8")
        if len(data) > MAX_LINE:
            value["outputs"] = {}
            value["error"] = (
                f"the row's outputs take {len(data) // 2**20} MiB, more than a results line "
                f"holds ({MAX_LINE // 2**20} MiB)"
            )
            data = (dumps(value) + "\n").encode("utf-8")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
            now = time.monotonic()
            if now - self._synced >= SYNC_EVERY:
                os.fsync(self._fd)
                self._synced = now
        except OSError as err:
            with contextlib.suppress(OSError):  # no part line for a later one to follow
                os.ftruncate(self._fd, self._end)
            raise StoreError(f"cannot write {self.path}: {err.strerror}") from None
        self.written_failed += value["error"] is not None
        self._end += len(data)
        self.written += 1

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _read(self, warn: Callable[[str], None]) -> list[tuple[int, int]]:
        """Read what the file holds; drop a last line cut short. Returns the byte
        ranges of the lines of rows that succeeded."""
        kept: list[tuple[int, int]] = []
        for start, line, size, complete, number, last in _lines(self._fd):
            if not complete and last:
                warn(
                    f"{self.path}:{number}: the last line is cut short (a crash?): "
                    "dropped, its row runs again"
                )
                os.ftruncate(self._fd, start)
                break
            entry = _entry(line)
            if isinstance(entry, Refusal):
                raise StoreError(
                    f"{self.path}:{number}:{entry.column}: not a result line of llmflow "
                    f"({entry.why}); fix or remove it, or write to another --output"
                )
            row_id, digest, failed = entry
            key = id_key(row_id)
            if key in self.done or key in self.failed:
                raise StoreError(
                    f"{self.path}:{number}:1: row {clip(key, 60)} is in the file twice; "
                    "keep one line per row, or write to another --output"
                )
            (self.failed if failed else self.done)[key] = digest
            if not failed:
                kept.append((start, start + size))
        return kept

    def _rewrite(self) -> None:
        """The file without its failed rows, replaced in one rename (a crash leaves the
        old file or the new one). Through a symbolic link, its target is rewritten."""
        target = Path(os.path.realpath(self.path))
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        except OSError as err:
            raise StoreError(f"cannot rewrite {self.path}: {err.strerror}") from None
        kept: list[tuple[int, int]] = []
        end = 0
        try:
            os.fchmod(fd, stat.S_IMODE(os.fstat(self._fd).st_mode))
            for start, stop in self._kept:
                data = os.pread(self._fd, stop - start, start)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                kept.append((end, end + len(data)))
                end += len(data)
            os.fsync(fd)
            os.replace(tmp, target)
        except OSError as err:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StoreError(f"cannot rewrite {self.path}: {err.strerror}") from None
        os.close(self._fd)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        self._fd = fd
        self._kept, self._end = kept, end


def _open(path: Path) -> int:
    """The results file for reading and appending, created if missing (as any file the
    user's commands create); anything but a regular file is refused (a FIFO is opened
    without waiting for a writer, then refused)."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as err:
        if path.is_dir():
            raise StoreError(f"--output {path} is a directory, not a file") from None
        raise StoreError(f"cannot write {path}: {err.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreError(f"--output {path} is not a regular file (resuming needs to read it)")
    os.set_blocking(fd, True)
    return fd


def _lines(fd: int) -> Iterator[tuple[int, bytes, int, bool, int, bool]]:
    """(byte offset, line, its length, whether it ends with a newline, line number,
    whether it is the last) of each non-blank line. Of a line longer than MAX_LINE only
    the first MAX_LINE + 1 bytes are read, the rest is skipped unread."""
    with os.fdopen(os.dup(fd), "rb") as file:
        file.seek(0)
        offset, number = 0, 0
        line, size, complete = _read_line(file)
        while line:
            following = _read_line(file)
            number += 1
            if line.strip():
                yield offset, line, size, complete, number, not following[0]
            offset += size
            line, size, complete = following


def _read_line(file: IO[bytes]) -> tuple[bytes, int, bool]:
    """The next line (at most MAX_LINE + 1 bytes of it), its whole length, and whether
    it ends with a newline."""
    line = file.readline(MAX_LINE + 1)
    if len(line) <= MAX_LINE or line.endswith(b"\n"):
        return line, len(line), line.endswith(b"\n")
    size = len(line)
    while (rest := file.readline(2**20)) and not rest.endswith(b"\n"):
        size += len(rest)
    return line, size + len(rest), rest.endswith(b"\n")


@dataclass(frozen=True)
class Refusal:
    """Why a line is not a result, and where."""

    why: str
    column: int = 1


def _entry(line: bytes) -> tuple[RowId, str | None, bool] | Refusal:
    """(id, digest, failed) of a result line, or why it is not one."""
    if len(line) > MAX_LINE:
        return Refusal(f"longer than {MAX_LINE // 2**20} MiB")
    try:
        value = json.loads(line)
    except UnicodeDecodeError as err:
        return Refusal("not UTF-8 text", err.start + 1)
    except json.JSONDecodeError as err:
        return Refusal(f"not JSON: {err.msg}", err.colno)
    except (ValueError, RecursionError):
        return Refusal("not JSON that can be read")
    if not isinstance(value, dict):
        return Refusal("not a JSON object")
    row_id, error, digest = value.get("id"), value.get("error", 0), value.get("digest")
    if isinstance(row_id, bool) or not isinstance(row_id, str | int):
        return Refusal('no "id" that is a string or an integer')
    if not isinstance(value.get("outputs"), dict):
        return Refusal('no "outputs" object')
    if not (error is None or isinstance(error, str)):
        return Refusal('no "error" that is null or a string')
    return row_id, digest if isinstance(digest, str) else None, error is not None
