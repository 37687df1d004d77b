"""The run journal: every answer a run received, written the moment it arrives, so a run
that dies (a crash, Ctrl-C, `kill -9`) resumes without asking any model again.

One JSON line per answer, keyed like the response cache. Each line is flushed to the
operating system as it is written, which survives the death of the process (not of the
machine). On resume the journal is read back, and a request whose key has an unused
answer takes it instead of going to the model: identical requests are answered in the
order they were first answered, so a sampled (non-deterministic) call gets its own
recorded answer back too.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from pathlib import Path

from llmflow.runtime.backends.base import Generation


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._replay: dict[str, deque[Generation]] = defaultdict(deque)
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of a killed run may be cut short
                self._replay[entry["key"]].append(Generation.model_validate(entry["generation"]))
        self._file = path.open("a", encoding="utf-8")
        path.chmod(0o600)

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

    def record(self, key: str, generation: Generation) -> None:
        entry = {"key": key, "generation": generation.model_dump(mode="json")}
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
