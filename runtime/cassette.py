"""Recorded answers: a reviewable JSON file of what each model answered to each request, so
a program's tests replay without any model, and fail, saying what changed, when a prompt
no longer matches its recording.

Like the response cache (`runtime/cache.py`) it maps a request to an answer, but it is
made to be committed beside the program and read by people: one JSON document with its
entries in a stable order, each holding the request as the runtime sent it (so a miss can
be explained with a diff) and the answer, keyed by a hash of exactly that request. And it
is strict where the cache is lenient: replaying, a request that is not recorded fails its
call (no model is ever asked), and a file that cannot be read is an error with its
position, never a silent miss.

Modes: `replay` answers only from the file and never creates a backend; `record` sends
every request to its model and writes what it answered (entries the recording did not use
are dropped at the end of a complete recording); `new` replays what is recorded and
records what is missing. Files are written to a temporary file and renamed, under a lock
on their folder, merging with what other sessions wrote meanwhile, so the file is never
cut, lost or clobbered. Nothing secret is stored: no setting of a model (its address, its
key's variable), and every text passes `secrets.redact` first.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmflow.compiler.ast import Span
from llmflow.compiler.diagnostics import Diagnostic, render_all, sort_key
from llmflow.compiler.models import ModelSpec
from llmflow.errors import LLMFlowError
from llmflow.runtime import secrets
from llmflow.runtime.backends.base import BackendError, Constraint, Generation, GenerationRequest
from llmflow.runtime.calls import RunSeed

VERSION = 1
"""The file format's version; a file of another version is refused, never guessed at."""

MAX_BYTES = 64 * 2**20
"""A cassette larger than this is refused unread (a test suite's answers come nowhere
near it; a file that large is not one)."""

MAX_PROBLEMS = 10
"""Problems of one file reported (each costs a slow pass to place)."""

MAX_DIFF_LINES = 60
"""Lines of a miss's diff shown; the rest are counted."""

MAX_DIFF_LINE = 240
"""Characters of one diff line shown."""

SAVE_EVERY = 5.0
"""Seconds between saves while recording, so a recording that is stopped keeps most of
what it paid for."""

CASSETTE_SEED = RunSeed(0)
"""The run seed of runs with a cassette that were given none (or one drawn at random):
sampled calls must send the seeds they were recorded with to be found again."""

Mode = Literal["replay", "record", "new"]
MODES: tuple[Mode, ...] = ("replay", "record", "new")
Send = Callable[[GenerationRequest], Awaitable[Generation]]


class CassetteError(LLMFlowError):
    """A cassette file cannot be used. `diagnostics`: every problem, with its position in
    the file where there is one; `render()` shows them like compile errors."""

    def __init__(self, diagnostics: list[Diagnostic], sources: dict[str, str] | None = None):
        self.diagnostics = diagnostics
        self.sources = sources or {}
        first = diagnostics[0]
        where = str(first.span) if first.span else first.file or ""
        super().__init__(f"{where}: {first.message}" if where else first.message)

    def render(self) -> str:
        return render_all(self.diagnostics, self.sources)


class CassetteMiss(BackendError):
    """Replaying, a request the cassette has no answer for. A `BackendError` that no retry
    or fallback can help: its call fails, the run's other calls go on. The message is one
    line; `explain()` adds the diff against the closest recorded request."""

    def __init__(self, path: Path, model: RecordedModel, summary: str, diff: list[str]):
        self.path = path
        self.model = model
        self.summary = summary
        self.diff = diff
        super().__init__(
            f"{path}: no recorded answer for this request to model '{model.name}' "
            f"({summary}); run with --record to record it again",
            retryable=False,
            sent=False,
        )

    def explain(self) -> str:
        """The message, then the unified diff of the closest recording against this
        request (already redacted and cut to MAX_DIFF_LINES)."""
        return "\n".join([self.message, *self.diff]) + "\n"


# ---- the file's shape ------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RecordedModel(_Strict):
    name: str
    """The model's declared name (`model small = ...`): for people; not part of the key."""
    backend: str
    id: str
    """The backend's model id; a path to a model file keeps only the file's name, so a
    cassette recorded on one machine replays on another."""
    chat: bool


class RecordedTurn(_Strict):
    role: Literal["system", "user", "assistant"]
    text: list[str]
    """The text's lines, each with its line ending: one JSON line per prompt line, so a
    changed prompt line is one changed line in a review."""


class RecordedRequest(_Strict):
    turns: list[RecordedTurn]
    max_tokens: int
    temperature: float = Field(allow_inf_nan=False)
    stop: list[str]
    seed: int | None
    constraint: Constraint | None


class RecordedAnswer(_Strict):
    text: list[str]
    finish_reason: str | None
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    cached_tokens: int = Field(ge=0)


class Entry(_Strict):
    key: str
    """`entry_key(model, request)`: checked when the file is read."""
    model: RecordedModel
    request: RecordedRequest
    answer: RecordedAnswer


class CassetteFile(_Strict):
    version: int
    entries: list[Entry]


def lines(text: str) -> list[str]:
    """A text as the file keeps it: its lines, each with its ending ('' is [])."""
    return text.splitlines(keepends=True)


def recorded_model(spec: ModelSpec) -> RecordedModel:
    model_id = Path(spec.id).name if os.path.isabs(spec.id) else spec.id
    return RecordedModel(name=spec.name, backend=spec.backend, id=model_id, chat=spec.chat)


def recorded_request(request: GenerationRequest) -> RecordedRequest:
    """What of a request reaches the model and changes its answer, redacted: the turns,
    the sampling parameters and the constraint; not its scheduling (group, priority,
    node, the optimizer's shared-prefix estimate)."""
    turns, constraint = request.turns, request.constraint
    if constraint is not None:
        constraint = Constraint.model_validate_json(secrets.redact(constraint.model_dump_json()))
    return RecordedRequest(
        turns=[RecordedTurn(role=t.role, text=lines(secrets.redact(t.text))) for t in turns],
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        stop=[secrets.redact(s) for s in request.stop],
        seed=request.seed,
        constraint=constraint,
    )


def entry_key(model: RecordedModel, request: RecordedRequest) -> str:
    """The hash an entry is found by: the model (kind, id, chat or completion; not its
    declared name) and the request as recorded."""
    identity = {
        "model": model.model_dump(mode="json", exclude={"name"}),
        "request": request.model_dump(mode="json"),
    }
    text = json.dumps(identity, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def make_entry(spec: ModelSpec, request: GenerationRequest, answer: Generation) -> Entry:
    model, asked = recorded_model(spec), recorded_request(request)
    return Entry(
        key=entry_key(model, asked),
        model=model,
        request=asked,
        answer=RecordedAnswer(
            text=lines(secrets.redact(secrets.mask_keys(answer.text))),
            finish_reason=answer.finish_reason,
            input_tokens=answer.input_tokens,
            output_tokens=answer.output_tokens,
            cached_tokens=answer.cached_tokens,
        ),
    )


def _order(entry: Entry) -> tuple[str, str, str]:
    """Entries are kept by model, then prompt: a changed prompt stays beside its old self."""
    prompt = "".join(line for turn in entry.request.turns for line in turn.text)
    return (entry.model.name, prompt, entry.key)


def dump(entries: dict[str, Entry]) -> str:
    """The file's text: sorted keys, two-space indent, one entry after another."""
    ordered = sorted(entries.values(), key=_order)
    data = {"version": VERSION, "entries": [e.model_dump(mode="json") for e in ordered]}
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate a model sent: escape everything
        text = json.dumps(data, indent=2, sort_keys=True)
    return text + "\n"


# ---- reading -----------------------------------------------------------------------------


def load(path: Path) -> dict[str, Entry]:
    """The entries of a cassette file by key. CassetteError: the file cannot be read, or
    is not a cassette (each problem with its line and column)."""
    text = _read_text(path)
    try:  # the fast way (pydantic's own JSON parser); on any problem, the careful one
        parsed = CassetteFile.model_validate_json(text)
    except (ValidationError, ValueError, RecursionError):
        parsed = _parse_carefully(path, text)
    return _checked(path, text, parsed)


def _parse_carefully(path: Path, text: str) -> CassetteFile:
    """The file's content, or the error that says where and why it is not a cassette."""
    shown = str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise _error(shown, text, f"not JSON: {err.msg}", err.pos) from None
    except (ValueError, RecursionError) as err:  # a huge integer; nesting too deep
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise _error(shown, text, f"not a cassette: {reason}", None) from None
    if not isinstance(data, dict):
        raise _error(shown, text, "not a cassette: not a JSON object", _first_char(text))
    places = _Places(text)
    version = data.get("version")
    if version != VERSION:
        offset = places.of(("version",)) if "version" in data else _first_char(text)
        raise _error(
            shown,
            text,
            f"cassette version {json.dumps(version)[:20]} is not one this llmflow reads "
            f"({VERSION})",
            offset,
            "record it again with this llmflow (--record)",
        )
    try:
        parsed = CassetteFile.model_validate(data)
    except ValidationError as err:
        diags = [
            _diagnostic(shown, text, _problem(e), places.of(e["loc"]))
            for e in err.errors(include_url=False)[:MAX_PROBLEMS]
        ]
        raise CassetteError(sorted(diags, key=sort_key), {shown: text}) from None
    return parsed


def _checked(path: Path, text: str, parsed: CassetteFile) -> dict[str, Entry]:
    """The entries by key, if each key is its request's and no request is there twice."""
    shown = str(path)
    if parsed.version != VERSION:
        _parse_carefully(path, text)  # raises, placing the version
    places = _Places(text)
    entries: dict[str, Entry] = {}
    diags: list[Diagnostic] = []
    for i, entry in enumerate(parsed.entries):
        if entry_key(entry.model, entry.request) != entry.key:
            where = places.of(("entries", i, "key"))
            diags.append(
                _diagnostic(
                    shown,
                    text,
                    f"entry {i + 1}: its key does not match its request (was it edited?)",
                    where,
                    "record the cassette again (--record) rather than editing requests",
                )
            )
        elif entry.key in entries:
            where = places.of(("entries", i, "key"))
            diags.append(_diagnostic(shown, text, f"entry {i + 1} records a request twice", where))
        entries[entry.key] = entry
        if len(diags) >= MAX_PROBLEMS:
            break
    if diags:
        raise CassetteError(diags, {shown: text})
    return entries


def _read_text(path: Path) -> str:
    shown = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise _fail(shown, "no cassette here", "record one with --record") from None
    except OSError as err:
        raise _fail(shown, f"cannot read it: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _fail(shown, "not a regular file")
        if info.st_size > MAX_BYTES:
            raise _fail(shown, f"larger than {MAX_BYTES // 2**20} MiB: not a cassette")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as file:
        data = file.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise _fail(shown, f"larger than {MAX_BYTES // 2**20} MiB: not a cassette")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        before = data[: err.start].decode("utf-8", "replace")
        raise _error(shown, before, "not UTF-8 text", len(before)) from None
    if "\x00" in text:
        raise _error(shown, text, "not a cassette: it holds a NUL byte", text.index("\x00"))
    return text


def _fail(shown: str, message: str, hint: str = "") -> CassetteError:
    return CassetteError([Diagnostic(kind="file", message=message, file=shown, hint=hint)])


def _error(
    shown: str, text: str, message: str, offset: int | None, hint: str = ""
) -> CassetteError:
    return CassetteError([_diagnostic(shown, text, message, offset, hint)], {shown: text})


def _diagnostic(
    shown: str, text: str, message: str, offset: int | None, hint: str = ""
) -> Diagnostic:
    if offset is None:
        return Diagnostic(kind="file", message=message, file=shown, hint=hint)
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    span = Span(file=shown, line=line, col=col, end_line=line, end_col=col + 1)
    return Diagnostic(kind="file", message=message, span=span, hint=hint)


def _first_char(text: str) -> int:
    return len(text) - len(text.lstrip())


def _problem(error: Any) -> str:
    where = ".".join(_part(part) for part in error["loc"]) or "the file"
    return f"not a cassette: {where}: {error['msg']}"


def _part(part: str | int) -> str:
    """A step of a value's path, as a message shows it: a key the file chose is quoted,
    escaped (no terminal escapes, no bidi overrides) and cut short, unless it is a name."""
    if isinstance(part, int) or (part.isidentifier() and part.isascii() and len(part) <= 40):
        return str(part)
    quoted = json.dumps(part)
    return quoted if len(quoted) <= 40 else quoted[:39] + '…"'


class _Places:
    """Where in the file each value starts: parsed again, slowly and once, only when there
    is an error to place (the fast parser keeps no positions)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._tree: _Located | None = None
        self._failed = False

    def of(self, loc: tuple[Any, ...]) -> int | None:
        """The offset of the value at `loc` (a pydantic error's path), or of the deepest
        value on the way that exists."""
        if self._tree is None and not self._failed:
            try:
                self._tree = _located(self.text)
            except (ValueError, RecursionError):
                self._failed = True
        node = self._tree
        if node is None:
            return None
        for part in loc:
            children = node.children
            found = isinstance(children, dict) and isinstance(part, str) and part in children
            found |= (
                isinstance(children, list) and isinstance(part, int) and 0 <= part < len(children)
            )
            if not found:
                break
            node = children[part]  # type: ignore[index]
        return node.offset


class _Located:
    """A JSON value's offset in its text, and its children's (by key or index)."""

    def __init__(self, offset: int, children: dict[str, _Located] | list[_Located] | None):
        self.offset = offset
        self.children = children


def _located(text: str) -> _Located:
    """The text's JSON value with the offset of every value in it."""
    decoder = json.JSONDecoder()
    white = " \t\n\r"

    def value(i: int) -> tuple[_Located, int]:
        while i < len(text) and text[i] in white:
            i += 1
        if i < len(text) and text[i] == "{":
            return obj(i)
        if i < len(text) and text[i] == "[":
            return arr(i)
        _, end = decoder.raw_decode(text, i)
        return _Located(i, None), end

    def skip(i: int) -> int:
        while i < len(text) and text[i] in white:
            i += 1
        return i

    def obj(start: int) -> tuple[_Located, int]:
        children: dict[str, _Located] = {}
        i = skip(start + 1)
        if text.startswith("}", i):
            return _Located(start, children), i + 1
        while True:
            name, i = decoder.raw_decode(text, skip(i))
            i = skip(i)
            if not text.startswith(":", i):
                raise ValueError("expected ':'")
            child, i = value(i + 1)
            children[str(name)] = child
            i = skip(i)
            if text.startswith("}", i):
                return _Located(start, children), i + 1
            if not text.startswith(",", i):
                raise ValueError("expected ','")
            i += 1

    def arr(start: int) -> tuple[_Located, int]:
        items: list[_Located] = []
        i = skip(start + 1)
        if text.startswith("]", i):
            return _Located(start, items), i + 1
        while True:
            child, i = value(i)
            items.append(child)
            i = skip(i)
            if text.startswith("]", i):
                return _Located(start, items), i + 1
            if not text.startswith(",", i):
                raise ValueError("expected ','")
            i += 1

    return value(0)[0]


# ---- explaining a miss --------------------------------------------------------------------


def shown_request(request: RecordedRequest) -> list[str]:
    """A request as a miss's diff shows it: each turn's lines under its role, then the
    parameters, one a line."""
    shown: list[str] = []
    for turn in request.turns:
        shown.append(f"[{turn.role}]\n")
        shown += [line if line.endswith("\n") else line + "\n" for line in turn.text]
    shown += [
        f"max_tokens: {request.max_tokens}\n",
        f"temperature: {request.temperature}\n",
        f"stop: {json.dumps(request.stop, ensure_ascii=False)}\n",
        f"seed: {request.seed}\n",
    ]
    if request.constraint is not None:
        constraint = request.constraint.model_dump(mode="json", exclude_none=True)
        shown.append(f"constraint: {json.dumps(constraint, sort_keys=True)}\n")
    return shown


Shown = tuple[list[str], frozenset[str]]
"""A request's shown lines, and the set of them (for a quick first ranking)."""


def _shown(request: RecordedRequest) -> Shown:
    shown = shown_request(request)
    return shown, frozenset(shown)


def _closest(asked: RecordedRequest, candidates: list[Entry], shown: dict[str, Shown]) -> Entry:
    """The candidate whose request reads most like this one: difflib's ratio over the
    shown lines, for the few with the most lines in common (so a cassette of thousands of
    entries explains a miss in milliseconds). `shown`: each entry's lines, by key, kept
    from one miss to the next."""
    mine, my_set = _shown(asked)
    ranked = []
    for entry in candidates:
        known = shown.get(entry.key)
        if known is None:
            known = shown[entry.key] = _shown(entry.request)
        ranked.append((-len(my_set & known[1]) / max(len(my_set | known[1]), 1), entry.key))
    ranked.sort()
    matcher = difflib.SequenceMatcher(None)
    matcher.set_seq2(mine)  # difflib indexes the second sequence, once
    best: tuple[float, float, str] | None = None
    for common, key in ranked[:8]:
        matcher.set_seq1(shown[key][0])
        score = (matcher.ratio(), -common, key)
        if best is None or score[:2] > best[:2]:
            best = score
    assert best is not None
    return next(e for e in candidates if e.key == best[2])


def _diff(recorded: RecordedRequest, asked: RecordedRequest, key: str) -> list[str]:
    diff = list(
        difflib.unified_diff(
            shown_request(recorded), shown_request(asked), f"recorded ({key})", "now", n=2
        )
    )
    shown = [secrets.clip(line.rstrip("\n"), MAX_DIFF_LINE) for line in diff]
    if len(shown) > MAX_DIFF_LINES:
        shown = [*shown[:MAX_DIFF_LINES], f"... {len(shown) - MAX_DIFF_LINES} more diff lines"]
    return shown


def _summary(recorded: RecordedRequest, asked: RecordedRequest, key: str) -> str:
    """What changed, in a few words, for the one-line message."""
    changed = [
        f"{name} {getattr(recorded, name)!r} → {getattr(asked, name)!r}"
        for name in ("max_tokens", "temperature", "stop", "seed")
        if getattr(recorded, name) != getattr(asked, name)
    ]
    if recorded.constraint != asked.constraint:
        changed.append("the output's constraint changed")
    if [t.role for t in recorded.turns] != [t.role for t in asked.turns]:
        changed.append(f"{len(recorded.turns)} turns recorded, {len(asked.turns)} now")
    else:
        old = [line for turn in recorded.turns for line in turn.text]
        new = [line for turn in asked.turns for line in turn.text]
        opcodes = difflib.SequenceMatcher(None, old, new).get_opcodes()
        differ = sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in opcodes if tag != "equal")
        if differ:
            changed.append(f"the prompt differs in {differ} line{'s' if differ != 1 else ''}")
    return f"closest recording {key}: " + ", ".join(changed or ["it differs"])


# ---- the cassette --------------------------------------------------------------------------


class Cassette:
    """Recorded answers in the JSON file at `path`, used as `mode` says (see the module).

    `prune`: at the end of a complete recording (`mode="record"`), drop the entries that
    were in the file and that no request asked for (False: a recording of some tests
    only). `seed`: the run seed of runs given none. Replaying needs the file; recording
    starts one if there is none (its folder must exist)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        mode: Mode = "replay",
        *,
        prune: bool = True,
        seed: RunSeed = CASSETTE_SEED,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"cassette mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.path = Path(path)
        self.mode: Mode = mode
        self.prune = prune
        self.seed = seed
        if mode == "replay" or os.path.lexists(self.path):
            self._entries = load(self.path)
        else:
            if not self.path.parent.is_dir():
                raise _fail(str(self.path), f"no folder {self.path.parent} to record it in")
            self._entries = {}
        self._loaded = set(self._entries)
        """The keys the file had when this cassette read it: the only ones a recording
        may drop (what other sessions record meanwhile is theirs)."""
        self._recorded: dict[str, Entry] = {}
        self._used: set[str] = set()
        self._incomplete = False
        """A request failed while recording: what it had recorded must not be dropped."""
        self._dirty = False
        self._saved_at = time.monotonic()
        self._save_every = SAVE_EVERY
        """Seconds between saves while recording: SAVE_EVERY, or ten times what the last
        save took (a save holds up the run's event loop; a big file must not stall it)."""
        self._shown: dict[str, Shown] = {}
        """Each entry's request as a miss's diff shows it, made on the first miss."""
        self.misses: list[CassetteMiss] = []
        """Every request replay could not answer, in order (`explain()` each)."""
        self.replayed = 0
        self.recorded = 0

    @property
    def sends(self) -> bool:
        """Whether this cassette may send requests to models (record, new)."""
        return self.mode != "replay"

    @property
    def entries(self) -> dict[str, Entry]:
        """Every entry it knows by key: the file's as read, with what it recorded."""
        return {**self._entries, **self._recorded}

    def unused(self) -> list[Entry]:
        """Entries of the file no request asked for (so far), in the file's order."""
        return sorted((e for k, e in self._entries.items() if k not in self._used), key=_order)

    async def answer(self, spec: ModelSpec, request: GenerationRequest, send: Send) -> Generation:
        """The answer to a request: replayed from the file, or (recording) what `send`
        got from the model, recorded. Replaying a request not recorded raises
        CassetteMiss (and keeps it in `misses`)."""
        model, asked = recorded_model(spec), recorded_request(request)
        key = entry_key(model, asked)
        if self.mode != "record":
            entry = self._recorded.get(key) or self._entries.get(key)
            if entry is not None:
                self._used.add(key)
                self.replayed += 1
                return _replayed(entry, request)
            if self.mode == "replay":
                miss = self._miss(model, asked)
                self.misses.append(miss)
                raise miss
        try:
            answer = await send(request)
        except BaseException:
            self._incomplete = True
            raise
        entry = make_entry(spec, request, answer)
        self._recorded[entry.key] = entry
        self._used.add(entry.key)
        self.recorded += 1
        self._dirty = True
        if time.monotonic() - self._saved_at >= self._save_every:
            self.save()
        return answer

    def save(self, final: bool = False) -> None:
        """Write what was recorded, merged with the file as it is now on disk (another
        session may have written to it); `final`: the recording is over, so (record mode,
        `prune`, nothing failed) the entries it did not use are dropped. Written to a
        temporary file renamed over the old one, under a lock on the folder."""
        drop = final and self.mode == "record" and self.prune and not self._incomplete
        if not self._dirty and not (drop and self._loaded - self._used):
            return
        started = time.monotonic()
        with _folder_lock(self.path.parent):
            on_disk = load(self.path) if os.path.lexists(self.path) else {}
            if drop:
                for key in self._loaded - self._used:
                    on_disk.pop(key, None)
            on_disk.update(self._recorded)
            _write_atomically(self.path, dump(on_disk))
            self._entries = on_disk
        if drop:
            self._loaded = set()  # pruned: a later save of this cassette only adds
        self._dirty = False
        self._saved_at = time.monotonic()
        self._save_every = max(SAVE_EVERY, 10 * (self._saved_at - started))

    def _miss(self, model: RecordedModel, asked: RecordedRequest) -> CassetteMiss:
        known = list(self.entries.values())
        same = [e for e in known if (e.model.backend, e.model.id) == (model.backend, model.id)]
        candidates = same or [e for e in known if e.model.name == model.name]
        if not candidates:
            summary = f"nothing is recorded for {model.backend} model '{model.id}'"
            return CassetteMiss(self.path, model, summary, [])
        closest = _closest(asked, candidates, self._shown)
        diff = _diff(closest.request, asked, closest.key)
        return CassetteMiss(self.path, model, _summary(closest.request, asked, closest.key), diff)

    def __enter__(self) -> Cassette:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if self.sends:
            self.save(final=kind is None)


def _replayed(entry: Entry, request: GenerationRequest) -> Generation:
    answer = entry.answer
    return Generation(
        text="".join(answer.text),
        input_tokens=answer.input_tokens,
        output_tokens=answer.output_tokens,
        cached_tokens=answer.cached_tokens,
        finish_reason=answer.finish_reason,
        source="cassette",
        seed=request.seed,
    )


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on the cassette's folder (flock on the folder itself, so no lock
    file is left beside the program) while a session merges and writes."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0))
    except OSError as err:
        raise _fail(str(folder), f"cannot lock the folder: {err.strerror or err}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_atomically(path: Path, text: str) -> None:
    """Replace the file with `text` in one rename: a reader (or a crash) sees the old
    file or the new one, never half of one. A link at `path` is replaced, not followed."""
    data = text.encode("utf-8")
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _fail(str(path), f"cannot write it: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, _mode_of(path))
        os.replace(temporary, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise _fail(str(path), f"cannot write it: {err.strerror or err}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a power cut
        folder = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _mode_of(path: Path) -> int:
    """The permissions the file has (a recording keeps them), else 0644: a file to
    commit, not a private one (it holds no secret)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o644


class OfflineBackend:
    """The backend of a session that only replays: there is none. Never called (the
    cassette answers first); if it ever were, it says so instead of loading a model."""

    async def generate(self, request: GenerationRequest) -> Generation:
        raise BackendError(
            f"model '{request.model}': a replaying cassette sends nothing", sent=False
        )

    async def aclose(self) -> None:
        return None


__all__ = [
    "CASSETTE_SEED",
    "Cassette",
    "CassetteError",
    "CassetteMiss",
    "Entry",
    "OfflineBackend",
    "load",
]
