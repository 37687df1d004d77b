"""The run journal: every answer a run received, written the moment it arrives, so a run
that dies (a crash, Ctrl-C, `kill -9`) resumes without asking any model again.

One JSON line per answer, keyed like the response cache. Each line is written to the
operating system as it is recorded, which survives the death of the process (not of the
machine). On resume the journal is read back, and a request whose key has an unused
answer takes it instead of going to the model: identical requests are answered in the
order they were first answered, so a sampled (non-deterministic) call gets its own
recorded answer back too.

A crash may cut the journal anywhere, and a folder may come from elsewhere: a line that
cannot be read back whole (cut short, not UTF-8, not JSON, not an entry of the right
shape and types) is skipped and counted, never fatal. Its call is simply sent again.
"""

from __future__ import annotations

from collections import defaultdict, deque
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llmflow.runtime.backends.base import Generation
from llmflow.runtime.calls import RowId
from llmflow.runtime.store import JsonLines, read_json_lines


def read_journal(path: Path) -> tuple[list[tuple[str, Generation]], int]:
    """The journal's entries (key, answer) in the order they were written, and how many
    lines were unreadable. A missing journal is empty; a directory in its place is an
    error naming it."""
    entries, unreadable = read_journal_rows(path)
    return [(key, generation) for key, generation, _ in entries], unreadable


def read_journal_rows(path: Path) -> tuple[list[tuple[str, Generation, RowId | None]], int]:
    """`read_journal`, each entry with the row that recorded it (None: no row said)."""
    values, unreadable = read_json_lines(path)
    entries = []
    for value in values:
        entry = _entry(value)
        if entry is None:
            unreadable += 1
        else:
            entries.append(entry)
    return entries, unreadable


def _entry(value: Any) -> tuple[str, Generation, RowId | None] | None:
    if not isinstance(value, dict):
        return None
    key, generation, row = value.get("key"), value.get("generation"), value.get("row")
    if not isinstance(key, str) or not isinstance(generation, dict):
        return None
    if isinstance(row, bool) or not isinstance(row, str | int):
        row = None  # the answer is still good; only whose it was is unknown
    try:
        return key, Generation.model_validate(generation, strict=True), row
    except ValidationError:
        return None


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        entries, self.unreadable = read_journal_rows(path)
        self._replay: dict[str, deque[Generation]] = defaultdict(deque)
        self._rows: dict[RowId, list[str]] = defaultdict(list)
        """The keys each row recorded, in order (`take_row`)."""
        for key, generation, row in entries:
            self._replay[key].append(generation)
            if row is not None:
                self._rows[row].append(key)
        self._out = JsonLines(path)

    @property
    def replayable(self) -> int:
        return sum(len(q) for q in self._replay.values())

    @property
    def dollars(self) -> float:
        """What the answers not yet replayed cost when they arrived: before a resumed run
        takes any, what the run has spent on answers so far."""
        return sum(answer.dollars for queue in self._replay.values() for answer in queue)

    def take(self, key: str) -> Generation | None:
        """The recorded answer for a request, if the journal holds one not yet used."""
        queue = self._replay.get(key)
        return queue.popleft() if queue else None

    def take_row(self, row: RowId) -> list[tuple[str, Generation]]:
        """Every unused answer the row recorded (key, answer), taken: what a row run
        elsewhere (a Ray worker) replays. Identical requests share their answers, as
        with `take`: another row's answer to the same request may come back."""
        taken = []
        for key in self._rows.pop(row, []):
            answer = self.take(key)
            if answer is not None:
                taken.append((key, answer))
        return taken

    def record(self, key: str, generation: Generation, row: RowId | None = None) -> None:
        """Write an answer down; `row`: the dataset row that asked (an executor that
        replays row by row finds a row's answers by it)."""
        entry: dict[str, Any] = {"key": key, "generation": generation.model_dump(mode="json")}
        if row is not None:
            entry["row"] = row
        self._out.write(entry)

    def close(self) -> None:
        self._out.close()
