"""A backend that answers as a model once did: from a table of recorded answers.

A replay table is JSON lines, one recording a line:

    {"key": "What is 2 + 3?", "answers": {"gpt-4-1106-preview": "5", "mixtral": "6"}}

`key` is text the prompt contains (a question as the dataset gives it), or a list of
texts it contains all of (`["college_medicine", "Which ..."]`: one question asked under
two subjects, with different outcomes); `answers` holds what each recorded model
answered. A model `replay("gpt-4-1106-preview", table=...)`
answers a call with its column's answer for the key its rendered prompt contains, so a
program runs on published outcomes of real models (RouteLLM's MMLU and GSM8K tables, see
bench/routing) with the runtime, the budget and the trace all real.

Finding the key: a backend sees only the rendered prompt, with the template's text around
the key. Each key is indexed by a *fingerprint* of its longest part: a run of a few
consecutive words (`\\w+` runs), never its first or last word (template text may be glued
to those: `Q:{{q}}`), and the first such run no other key has taken (the questions of a
subject often share their first sentence). A key's inner words are words of any prompt
that contains it, so looking up every run of that many consecutive words of the prompt
finds every key it may contain; each candidate is then confirmed as a substring (each of
its parts). Keys of fewer than three words have
no fingerprint and are tried one by one. The longest key the prompt contains (its parts'
lengths added) answers; two different keys of that length are an error, as is a prompt
with no recorded key.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmflow.compiler import tokens
from llmflow.compiler.models import ModelSpec
from llmflow.runtime.backends.base import BackendError, Generation, GenerationRequest

MAX_LINE_BYTES = 16 * 2**20
"""Longest table line (one recording), as long as a dataset row may be."""
FINGERPRINT_WORDS = 6
"""Words in a key's fingerprint (fewer for keys of fewer than eight words): enough that
most runs of a prompt's words are no key's fingerprint."""
SHOWN_PROMPT_CHARS = 80
"""How much of an unmatched prompt an error shows."""
_WORD = re.compile(r"\w+")
_FIELDS = ("key", "answers")


class TableError(BackendError):
    """A replay table cannot be used: the message names file:line:col and what is wrong."""


def answer_tokens(text: str) -> int:
    """Tokens billed for `text`: `compiler/tokens.typical` (about four ASCII characters
    a token, three UTF-8 bytes of other scripts) rounded up. A recording has no token
    counts of its own; this is the estimate every plan uses, so plans and bills agree."""
    return math.ceil(tokens.typical(text))


Key = tuple[str, ...]
"""A recording's key: the texts a prompt must contain, longest first."""


@dataclass
class ReplayTable:
    """One table's recordings, indexed for finding the key a prompt contains."""

    path: Path
    keys: list[Key] = field(default_factory=list)
    answers: list[dict[str, str]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    """Each key's length (its parts' lengths added): the longest match wins."""
    _index: dict[int, dict[tuple[str, ...], list[int]]] = field(default_factory=dict)
    """Fingerprint length → fingerprint → recordings (positions in `keys`)."""
    _unindexed: list[int] = field(default_factory=list)
    """Recordings whose keys are too short to have a fingerprint."""

    def add(self, key: Key, answers: dict[str, str], line: int) -> None:
        position = len(self.keys)
        self.keys.append(key)
        self.answers.append(answers)
        self.lines.append(line)
        self.sizes.append(sum(map(len, key)))
        words = _WORD.findall(key[0])
        if len(words) < 3:
            self._unindexed.append(position)
            return
        size = min(FINGERPRINT_WORDS, len(words) - 2)
        index = self._index.setdefault(size, {})
        best: tuple[str, ...] | None = None
        for start in range(1, len(words) - size):  # inner windows: not the first/last word
            window = tuple(words[start : start + size])
            bucket = index.get(window)
            if bucket is None:
                best = window
                break
            if best is None or len(bucket) < len(index[best]):
                best = window
        assert best is not None
        index.setdefault(best, []).append(position)

    def models(self) -> list[str]:
        """The recorded models, in the order the table first names them."""
        seen: dict[str, None] = {}
        for answers in self.answers:
            seen.update(dict.fromkeys(answers))
        return list(seen)

    def _in(self, position: int, text: str) -> bool:
        return all(part in text for part in self.keys[position])

    def find(self, text: str) -> int | None:
        """The recording whose key `text` contains (the longest), or None. Raises
        TableError when two different keys of that length are both in the text."""
        candidates: set[int] = set(self._unindexed)
        if self._index:
            words = _WORD.findall(text)
            for size, index in self._index.items():
                for start in range(len(words) - size + 1):
                    bucket = index.get(tuple(words[start : start + size]))
                    if bucket is not None:
                        candidates.update(bucket)
        found = [p for p in candidates if self._in(p, text)]  # each confirmed once
        if not found:
            return None
        longest = max(self.sizes[p] for p in found)
        ties = sorted(p for p in found if self.sizes[p] == longest)
        if len(ties) > 1:
            lines = " and ".join(str(self.lines[p]) for p in ties[:2])
            raise TableError(
                f"replay table {self.path}: the prompt contains two recorded keys of the "
                f"same length (lines {lines}); make one key longer so the prompt names "
                "one recording"
            )
        return ties[0]


def _problem(path: Path, line: int, col: int, message: str) -> TableError:
    return TableError(f"{path}:{line}:{col}: {message}")


def _key(path: Path, number: int, value: object) -> Key:
    """A line's key, longest part first, or its TableError."""
    parts = [value] if isinstance(value, str) else value
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
        raise _problem(
            path,
            number,
            1,
            "'key' must be the text prompts contain (a string), or a list of such texts",
        )
    if not all(p.strip() for p in parts):
        raise _problem(path, number, 1, "'key' is empty: it would match every prompt")
    return tuple(sorted(dict.fromkeys(parts), key=lambda p: (-len(p), p)))


def _recording(path: Path, number: int, raw: bytes) -> tuple[Key, dict[str, str]] | None:
    """One line's key and answers (None: a blank line), or its TableError."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _problem(path, number, err.start + 1, "not UTF-8 text") from None
    if not text.strip():
        return None
    try:
        value = json.loads(text.rstrip("\r\n"))  # an error's column stays on its line
    except json.JSONDecodeError as err:
        raise _problem(path, number, err.colno, f"not valid JSON: {err.msg}") from None
    except RecursionError:
        raise _problem(path, number, 1, "JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise _problem(
            path,
            number,
            1,
            'a recording is an object: {"key": "question", "answers": {"model": "answer"}}',
        )
    unknown = [k for k in value if k not in _FIELDS]
    if unknown:
        raise _problem(
            path, number, 1, f"unknown field '{unknown[0]}' (a recording has key and answers)"
        )
    answers = value.get("answers")
    if not isinstance(answers, dict) or not all(isinstance(a, str) for a in answers.values()):
        raise _problem(
            path, number, 1, "'answers' must map each model id to its answer text (a string)"
        )
    return _key(path, number, value.get("key")), answers


def read_table(path: Path) -> ReplayTable:
    """Read and index a table. Every problem is a TableError naming file:line:col: a
    line that is not UTF-8 or not JSON (a cut last line), not a recording, too long, or
    whose key another line has already recorded."""
    table = ReplayTable(path)
    first_line: dict[Key, int] = {}
    try:
        handle = path.open("rb")
    except OSError as err:
        raise TableError(f"replay table {path} cannot be read: {err.strerror or err}") from None
    with handle:
        number = 0
        while True:
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise _problem(path, number, 1, f"line longer than {MAX_LINE_BYTES // 2**20} MiB")
            recording = _recording(path, number, raw)
            if recording is None:
                continue
            key, answers = recording
            if key in first_line:
                raise _problem(
                    path, number, 1, f"key recorded twice (first on line {first_line[key]})"
                )
            first_line[key] = number
            table.add(key, answers, number)
    return table


_tables: dict[tuple[str, int, int], ReplayTable] = {}
_tables_lock = threading.Lock()


def load_table(path: Path) -> ReplayTable:
    """The table at `path`, read once per process while the file is unchanged (the
    run's check and its backend share it)."""
    try:
        stat = os.stat(path)
    except OSError as err:
        raise TableError(f"replay table {path} cannot be read: {err.strerror or err}") from None
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    with _tables_lock:
        table = _tables.get(key)
        if table is None:
            for old in [k for k in _tables if k[0] == key[0]]:
                del _tables[old]
            table = _tables[key] = read_table(path)
        return table


def model_table(spec: ModelSpec) -> ReplayTable:
    """A replay model's table, checked to record its model (its id)."""
    from llmflow.runtime.backends.kinds import ReplaySettings

    settings = ReplaySettings.model_validate(spec.settings)
    if not settings.table:
        raise BackendError(
            f"model '{spec.name}' (replay \"{spec.id}\") has no table: write "
            f'replay("{spec.id}", table="answers.jsonl")'
        )
    table = load_table(Path(settings.table))
    if not table.keys:
        raise TableError(f"replay table {table.path} records nothing")
    recorded = table.models()
    if spec.id not in recorded:
        raise TableError(
            f"model '{spec.name}': replay table {table.path} has no answers of "
            f"'{spec.id}'; it records: {', '.join(recorded[:10])}"
        )
    return table


@dataclass
class ReplayBackend:
    """Serves replay models: each call gets its model's recorded answer for the key its
    prompt contains, cut at the request's first stop string, after the model's latency."""

    models: dict[str, ModelSpec]
    _tables: dict[str, ReplayTable] = field(default_factory=dict)
    _latency: dict[str, float] = field(default_factory=dict)

    def table(self, name: str) -> ReplayTable:
        table = self._tables.get(name)
        if table is None:
            from llmflow.runtime.backends.kinds import ReplaySettings

            spec = self.models[name]
            table = self._tables[name] = model_table(spec)
            self._latency[name] = ReplaySettings.model_validate(spec.settings).latency or 0.0
        return table

    def answer(self, request: GenerationRequest) -> str:
        """The recorded answer, or a BackendError naming the model and the prompt."""
        spec = self.models[request.model]
        table = self.table(request.model)
        found = None
        for turn in reversed(request.turns):  # the question is asked last, mostly
            found = table.find(turn.text)
            if found is not None:
                break
        if found is None:
            prompt = "".join(t.text for t in request.turns).strip()
            shown = prompt[:SHOWN_PROMPT_CHARS] + ("…" if len(prompt) > SHOWN_PROMPT_CHARS else "")
            raise BackendError(
                f"model '{spec.name}' (replay \"{spec.id}\"): no recorded key in the prompt "
                f"{json.dumps(shown, ensure_ascii=False)}; the table {table.path} records "
                f"{len(table.keys):,} keys"
            )
        text = table.answers[found].get(spec.id)
        if text is None:
            raise BackendError(
                f"model '{spec.name}' (replay \"{spec.id}\"): {table.path}:{table.lines[found]} "
                f"records no answer of '{spec.id}' for this prompt's key"
            )
        for stop in request.stop:
            if stop and stop in text:
                text = text[: text.index(stop)]
        return text

    async def generate(self, request: GenerationRequest) -> Generation:
        start = time.perf_counter()
        text = self.answer(request)
        latency = self._latency.get(request.model, 0.0)
        if latency:
            await asyncio.sleep(latency)
        return Generation(
            text=text,
            input_tokens=sum(answer_tokens(t.text) for t in request.turns),
            output_tokens=answer_tokens(text),
            seconds=time.perf_counter() - start,
            finish_reason="stop",
        )

    async def aclose(self) -> None:
        return None
