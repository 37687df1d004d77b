"""The files a run leaves behind (journal, trace, run record): created owner-only, never
written through a symbolic link, and read back without trusting them, because a crash may
cut a line anywhere and a folder may come from someone else (a cloned repository).

Only JSON is ever read back: nothing here (or anywhere in llmflow) unpickles.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from llmflow.errors import LLMFlowError

MAX_LINE = 16 * 2**20
"""Bytes: a longer JSON line is skipped unread (no answer comes near it)."""

_CHUNK = 2**20


class StoreError(LLMFlowError):
    """A file of the run folder cannot be used; the message names it."""


def dumps(value: Any, indent: int | None = None) -> str:
    """JSON text that always encodes to UTF-8: non-ASCII kept as is, unless the value holds
    a lone surrogate (a model may send one), then everything escaped."""
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, indent=indent)
    return text


def open_private(path: Path, flags: int) -> int:
    """A descriptor on a regular file, never through a symbolic link; opened for writing,
    the file is only its owner's (created 0600, or tightened to it). Anything else in its
    place (a directory, a link, a device) is an error naming the file."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        if path.is_symlink():
            raise StoreError(
                f"{path} is a symbolic link: llmflow does not follow one there"
            ) from None
        if path.is_dir():
            raise StoreError(f"{path} is a directory, not a file") from None
        raise StoreError(f"cannot use {path}: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise StoreError(f"{path} is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"{path} is not a regular file")
        if flags & (os.O_WRONLY | os.O_RDWR) and info.st_mode & 0o777 != 0o600:
            os.fchmod(fd, 0o600)
    except OSError as err:
        os.close(fd)
        raise StoreError(f"cannot use {path}: {err.strerror or err}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


class JsonLines:
    """Appends one JSON value per line, each written to the operating system at once (it
    survives the process being killed). A last line an earlier crash cut short is ended
    first, so nothing appended glues onto it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = open_private(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        size = os.fstat(self._fd).st_size
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            self._write(b"\n")

    def write(self, value: Any) -> None:
        self._write((dumps(value) + "\n").encode("utf-8"))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_json_lines(path: Path) -> tuple[list[Any], int]:
    """The values of a JSON-lines file, and how many of its lines could not be read (cut
    short, not UTF-8, not JSON, NUL bytes, longer than MAX_LINE). Blank lines are neither.
    A missing file has no lines."""
    try:
        fd = open_private(path, os.O_RDONLY)
    except StoreError:
        if not os.path.lexists(path):
            return [], 0
        raise
    values: list[Any] = []
    unreadable = 0
    with os.fdopen(fd, "rb") as file:
        while line := file.readline(MAX_LINE + 1):
            if len(line) > MAX_LINE and not line.endswith(b"\n"):
                unreadable += 1
                while (rest := file.readline(_CHUNK)) and not rest.endswith(b"\n"):
                    pass
                continue
            if not line.strip():
                continue
            try:
                values.append(json.loads(line.decode("utf-8")))
            except (ValueError, RecursionError):  # also UnicodeDecodeError, huge ints
                unreadable += 1
    return values, unreadable


def read_json_file(path: Path, what: str) -> Any:
    """The JSON value a whole file holds; `what` names it in errors ("a run record")."""
    fd = open_private(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as file:
        data = file.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise StoreError(f"{path}: not {what}: not UTF-8 (byte {err.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise StoreError(
            f"{path}:{err.lineno}:{err.colno}: not {what}: not JSON ({err.msg})"
        ) from None
    except (ValueError, RecursionError) as err:
        raise StoreError(f"{path}: not {what}: {err}") from None
