"""The embedded backend: GGUF models run in-process by llama.cpp.

Embedded models ship as PyPI packages, so a program runs with no server and no
download. Each model is loaded on first use and serves one call at a time (llama.cpp
keeps one KV cache per context); different models run in parallel threads.

Prefill is most of a small model's time on a CPU, so the backend makes the optimizer's
prefix groups pay off: calls waiting for a model are served by one worker that runs a
group's calls back to back (their shared prefix stays in the context), and the KV state
after a group's shared prefix is saved in a memory-bounded LRU, so a call of the group
arriving after other prompts restores it instead of evaluating the prefix again. The
optimized calls waiting when one is served that share its prefix run with it, as
parallel sequences of one llama.cpp batch (`llama_batch`): the prefix is evaluated once
and the calls' suffixes and outputs are decoded together, at a large batch's rate.
Ungrouped calls of priority 0 (-O0) are served first come, first served, and reuse only
what llama.cpp keeps of the previous call's prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import itertools
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import Llama, LlamaGrammar, StoppingCriteriaList
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import json_schema_to_gbnf

from llmflow.compiler.models import LOCAL_MODELS, ModelSpec, local_context
from llmflow.runtime.backends import llama_batch
from llmflow.runtime.backends.base import (
    BackendError,
    Constraint,
    Generation,
    GenerationRequest,
)

logger = logging.getLogger(__name__)

DEFAULT_SEED = 0
"""Sampling seed when a request sets none, so runs are reproducible."""


def _llama_seed(seed: int | None) -> int:
    """The request's seed as llama.cpp takes it: a uint32 other than 2**32 - 1, which
    means "random" there (a run's derived seeds are below 2**31 anyway)."""
    return DEFAULT_SEED if seed is None else seed % 0xFFFFFFFF


MIN_SHARED_PREFIX = 64
"""Fewer common tokens than this do not justify reordering calls or restoring a state."""

DEFAULT_STATE_CACHE_MB = 1024
"""Saved KV states a backend keeps, all models together; a model's `state_cache_mb` caps
its own (and raises the backend's total if it is larger)."""

MAX_SEQUENCES = 16
"""Calls one model decodes together (llama.cpp sequences of its context)."""

_GROUP_HISTORY = 256
"""Groups whose last prompt a model remembers, to find what each group shares."""

_SEQ = 0
"""The llama.cpp sequence llama-cpp-python evaluates everything in; batched calls get
the prefix from it."""

_CHUNK_FILE = re.compile(r"(?P<name>.+\.gguf)\.part(?P<index>\d+)")
_REQUIREMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

_PATTERN_GRAMMARS = {
    "int": 'root ::= "-"? [0-9]+',
    "float": 'root ::= "-"? [0-9]+ ("." [0-9]+)? ([eE] [-+]? [0-9]+)?',
    "bool": 'root ::= "true" | "false"',
}

_GBNF_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


@llama_cpp.llama_log_callback
def _log_to_python(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """Send llama.cpp's C logging to Python logging (debug) instead of stderr."""
    logger.debug("%s", (text or b"").decode("utf-8", errors="replace").rstrip())


# Replaces llama-cpp-python's own callback, which prints errors to stderr.
llama_cpp.llama_log_set(_log_to_python, ctypes.c_void_p(0))

_LOAD_LOCK = threading.Lock()
"""Loading swaps `sys.stderr` process-wide, so two loads must not overlap."""


def find_model_file(model_id: str) -> Path:
    """The GGUF file for an embedded model name or a path to a `.gguf` file.

    Catalog models are found through their package's installed file list, without
    importing the package (the `llm` plugin packages import heavy dependencies).
    A model shipped as chunk packages is assembled once into the user cache.
    """
    local = LOCAL_MODELS.get(model_id)
    if local is None:
        path = Path(model_id).expanduser()
        if not path.is_file():
            raise BackendError(
                f"'{model_id}' is neither an embedded model "
                f"({', '.join(LOCAL_MODELS)}) nor an existing .gguf file"
            )
        return path
    dist = _distribution(model_id, local.distribution, local.distribution)
    for file in dist.files or []:
        if file.name.endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    return _assemble_chunks(model_id, dist)


def cache_dir() -> Path:
    """Where assembled model files live: `$XDG_CACHE_HOME/llmflow/models`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llmflow" / "models"


def _distribution(model_id: str, name: str, install: str) -> Distribution:
    try:
        return distribution(name)
    except PackageNotFoundError:
        raise BackendError(
            f"embedded model '{model_id}' needs the package {install}: pip install {install}"
        ) from None


def _assemble_chunks(model_id: str, dist: Distribution) -> Path:
    """Concatenate `NAME.gguf.partNN` files from the package's dependencies, once.

    The result is written to a temporary file, checked against the package's
    SHA256SUMS and renamed into place, so a crash never leaves a bad model behind.
    """
    main = dist.metadata["Name"]
    parts: dict[int, Path] = {}
    names: set[str] = set()
    for requirement in dist.requires or []:
        match = _REQUIREMENT_NAME.match(requirement)
        if match is None or ";" in requirement:
            continue
        part_dist = _distribution(model_id, match.group(), main)
        for file in part_dist.files or []:
            chunk = _CHUNK_FILE.fullmatch(file.name)
            if chunk:
                names.add(chunk["name"])
                parts[int(chunk["index"])] = Path(str(part_dist.locate_file(file)))
    if len(names) != 1 or sorted(parts) != list(range(len(parts))):
        raise BackendError(f"the package {main} does not hold one complete GGUF file")
    (name,) = names
    chunks = [parts[index] for index in sorted(parts)]
    target = cache_dir() / f"{main}-{dist.version}" / name
    try:
        size = sum(chunk.stat().st_size for chunk in chunks)
        if target.is_file() and target.stat().st_size == size:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        _concatenate(chunks, target, _expected_sha256(dist, name))
    except OSError as error:
        raise BackendError(
            f"could not assemble embedded model '{model_id}' into {target.parent}: "
            f"{error.strerror or error}"
        ) from None
    return target


def _expected_sha256(dist: Distribution, name: str) -> str | None:
    for file in dist.files or []:
        if file.name == "SHA256SUMS":
            for line in file.read_text().splitlines():
                digest, _, listed = line.partition(" ")
                if listed.strip().lstrip("*") == name:
                    return digest.lower()
    return None


def _concatenate(chunks: list[Path], target: Path, sha256: str | None) -> None:
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as source:
                    while block := source.read(1 << 20):
                        out.write(block)
                        digest.update(block)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise BackendError(
                f"the assembled model file {target.name} is corrupt (sha256 mismatch); "
                "reinstall its package"
            )
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; the cache is plain data
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _gbnf_literal(text: str) -> str:
    """A GBNF string literal matching `text` exactly."""
    escaped = "".join(
        _GBNF_ESCAPES.get(char)
        or (f"\\x{ord(char):02x}" if ord(char) < 0x20 or ord(char) == 0x7F else char)
        for char in text
    )
    return f'"{escaped}"'


def _grammar_source(constraint: Constraint) -> str | None:
    """The GBNF grammar enforcing a constraint, or None if it cannot be enforced."""
    if constraint.choices:
        return "root ::= " + " | ".join(map(_gbnf_literal, constraint.choices))
    if constraint.json_schema is not None:
        try:
            return json_schema_to_gbnf(json.dumps(constraint.json_schema))
        except Exception as error:  # the converter raises many kinds on odd schemas
            # Not enforcing is allowed: the caller validates every result.
            logger.debug("JSON schema not enforced: %s", error)
            return None
    if constraint.pattern is not None:
        return _PATTERN_GRAMMARS[constraint.pattern]
    return None


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """The length of the longest common prefix of two token arrays."""
    n = min(len(a), len(b))
    mismatch = np.flatnonzero(a[:n] != b[:n])
    return int(mismatch[0]) if mismatch.size else n


@dataclass(eq=False)
class _SavedState:
    """The KV cache of llama.cpp's sequence 0 after evaluating `tokens`.

    Only the KV cells are kept, not the logits (`Llama.save_state` copies a logits array
    of up to n_batch x n_vocab floats, ~100 MB here), so whoever restores a state must
    evaluate at least one more token before sampling; our callers always do.
    """

    model: str
    tokens: np.ndarray
    data: ctypes.Array[ctypes.c_uint8]

    @property
    def nbytes(self) -> int:
        return ctypes.sizeof(self.data) + self.tokens.nbytes


class _StateCache:
    """The saved states of a backend's models, the least recently used evicted first.

    All states together stay under the backend's budget, and a model that sets
    `state_cache_mb` keeps its own under that too. Model threads share it, hence the lock.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, bytes], _SavedState] = OrderedDict()

    def nbytes(self, model: str | None = None) -> int:
        with self._lock:
            return self._used(model)

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, model: str, tokens: np.ndarray) -> tuple[_SavedState | None, int]:
        """The state of `model` sharing the longest prefix with `tokens`, and its length."""
        best, length = None, 0
        with self._lock:
            for state in self._entries.values():
                if state.model == model:
                    common = _common_prefix(state.tokens, tokens)
                    if common > length:
                        best, length = state, common
        return best, length

    def touch(self, state: _SavedState) -> None:
        with self._lock:
            key = (state.model, state.tokens.tobytes())
            if key in self._entries:
                self._entries.move_to_end(key)

    def add(self, state: _SavedState, limit: int) -> None:
        with self._lock:
            key = (state.model, state.tokens.tobytes())
            self._entries.pop(key, None)
            self._entries[key] = state
            self._evict(state.model, limit)
            self._evict(None, self.budget)

    def _used(self, model: str | None) -> int:
        return sum(s.nbytes for s in self._entries.values() if model in (None, s.model))

    def _evict(self, model: str | None, limit: int) -> None:
        used = self._used(model)
        for key, state in list(self._entries.items()):
            if used <= limit:
                return
            if model in (None, state.model):
                del self._entries[key]
                used -= state.nbytes


@dataclass(eq=False)
class _Call:
    """A request waiting for its model's worker, and where to send its result."""

    request: GenerationRequest
    grammar: LlamaGrammar | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Generation]
    order: int
    """Arrival number: first come, first served among equals."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: np.ndarray | None = None
    """The prompt's tokens, set by the worker (tokenizing needs the loaded model)."""
    error: BackendError | None = None

    @property
    def fifo(self) -> bool:
        """Unoptimized (-O0): served in arrival order, never through the state cache."""
        return self.request.group is None and self.request.priority == 0


def _next_call(
    waiting: Sequence[_Call], last_group: str | None, reusable: Callable[[_Call], int]
) -> _Call:
    """The call a free model serves next.

    (a) The call whose prompt has the longest prefix already in the context or a saved
    state (`reusable`), if at least MIN_SHARED_PREFIX tokens, so shared text is evaluated
    once; else (b) one of the group just served, so a group runs back to back; else
    (c) the highest priority. Ties, and queues of -O0 calls only, go first come first
    served. A long group can delay other calls: the optimizer made it a group to finish
    it sooner, and its calls are known in advance, so this does not starve anyone forever.
    """
    if all(call.fifo for call in waiting):
        return waiting[0]

    def urgency(call: _Call) -> tuple[float, int]:
        return call.request.priority, -call.order

    lengths = {call: reusable(call) for call in waiting}
    best = max(waiting, key=lambda call: (lengths[call], *urgency(call)))
    if lengths[best] >= MIN_SHARED_PREFIX:
        return best
    same = [c for c in waiting if last_group is not None and c.request.group == last_group]
    if same:
        return max(same, key=urgency)
    return max(waiting, key=urgency)


@dataclass
class _Model:
    """A model's slot: its spec, its loaded Llama, its queue of calls."""

    spec: ModelSpec
    state_limit: int
    """Bytes of saved states this model may keep."""
    mutex: threading.Lock = field(default_factory=threading.Lock)
    """Guards `waiting` and `serving` (event loop and worker threads both touch them)."""
    waiting: list[_Call] = field(default_factory=list)
    serving: bool = False
    """A worker thread is draining `waiting`; there is at most one per model."""
    busy: threading.Lock = field(default_factory=threading.Lock)
    """Held while `llm` is in use: by the worker for each call, by unloading."""
    llm: Llama | None = None
    formatter: Jinja2ChatFormatter | None = None
    last_group: str | None = None
    group_prompts: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict)
    """The last prompt served of each recent group, to find what the group shares."""


class LocalBackend:
    """Serves every `local` model of a run from GGUF files through llama.cpp."""

    def __init__(self, models: dict[str, ModelSpec]) -> None:
        default = DEFAULT_STATE_CACHE_MB << 20
        self._models = {
            name: _Model(spec, _state_limit(spec, default)) for name, spec in models.items()
        }
        # A model may raise its own cap above the default; the total still has a bound.
        self._states = _StateCache(max([default, *(m.state_limit for m in self._models.values())]))
        self._grammars: dict[str, LlamaGrammar | None] = {}
        self._arrivals = itertools.count()
        self._workers: set[asyncio.Future[None]] = set()

    async def generate(self, request: GenerationRequest) -> Generation:
        model = self._models.get(request.model)
        if model is None:
            raise BackendError(f"no embedded model named '{request.model}'")
        loop = asyncio.get_running_loop()
        call = _Call(request, self._grammar(request.constraint), loop, loop.create_future(), 0)
        with model.mutex:
            call.order = next(self._arrivals)
            model.waiting.append(call)
            start, model.serving = not model.serving, True
        if start:
            worker = loop.run_in_executor(None, self._serve, model)
            self._workers.add(worker)  # keeps a reference; the worker reports through calls
            worker.add_done_callback(self._workers.discard)
        try:
            return await call.future
        except asyncio.CancelledError:
            call.cancelled.set()  # a running call stops at its next token
            with model.mutex:
                if call in model.waiting:
                    model.waiting.remove(call)
            raise

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """The tokens a request's prompt becomes on its model (for measurements)."""
        model = self._models[request.model]
        with model.busy:
            llm = model.llm if model.llm is not None else _load(model)
            return _prompt_tokens(model, llm, request)

    def count_tokens(self, request: GenerationRequest) -> int | None:
        """The request's prompt tokens on its model, for the gateway's estimates; None
        until the model is loaded (the first calls use the bound that holds for any
        tokenizer). Tokenizing only reads the vocabulary, so it may run while the
        worker generates."""
        model = self._models.get(request.model)
        llm = model.llm if model is not None else None
        if model is None or llm is None:
            return None
        try:
            return len(_prompt_tokens(model, llm, request))
        except BackendError:
            return None  # the call itself reports it

    def measure_speed(self, name: str, prompt: int = 512, output: int = 64) -> tuple[float, float]:
        """Prefill and decode tokens per second of a model, measured now: `prompt` tokens
        from an empty KV cache, then `output` greedy tokens (the end token ignored)."""
        model = self._models[name]
        with model.busy:
            llm = model.llm if model.llm is not None else _load(model)
            text = " ".join(f"word{i % 97}" for i in range(prompt))
            tokens = llm.tokenize(text.encode("utf-8"), add_bos=True)[:prompt]
            llm.reset()
            start = time.perf_counter()
            llm.eval(tokens)
            prefill = len(tokens) / (time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(output):
                token = llm.sample(temp=0.0)
                llm.eval([token])
            decode = output / (time.perf_counter() - start)
            llm.reset()
            return prefill, decode

    async def aclose(self) -> None:
        """Free every loaded model (waiting for a call still running on it)."""
        for model in self._models.values():
            await asyncio.to_thread(_unload, model)

    def _grammar(self, constraint: Constraint | None) -> LlamaGrammar | None:
        if constraint is None:
            return None
        key = constraint.model_dump_json()
        if key not in self._grammars:
            source = _grammar_source(constraint)
            self._grammars[key] = (
                None if source is None else LlamaGrammar.from_string(source, verbose=False)
            )
        return self._grammars[key]

    def _serve(self, model: _Model) -> None:
        """Drain the model's queue on this thread, one call at a time, then stop."""
        try:
            while self._serve_next(model):
                pass
        except BaseException as error:  # a bug here must not leave callers waiting forever
            with model.mutex:
                failed, model.waiting, model.serving = model.waiting, [], False
            for call in failed:
                _settle(call, error=BackendError(f"model '{model.spec.name}' failed: {error}"))
            raise

    def _serve_next(self, model: _Model) -> bool:
        """Serve the next call; False when the queue is empty (and the worker done)."""
        with model.busy:
            with model.mutex:
                if not model.waiting:
                    model.serving = False
                    return False
            try:
                llm = model.llm if model.llm is not None else _load(model)
            except BackendError as error:
                with model.mutex:
                    failed, model.waiting = model.waiting, []
                for call in failed:
                    _settle(call, error=error)
                return True
            call = self._take(model, llm)
            if call is None:
                return True
            if not call.fifo:
                self._serve_together(model, llm, call)
                return True
            try:
                result = self._generate(model, llm, call)
            except Exception as error:  # BackendError, or a bug: report it, never hang
                _settle(call, error=error)
            else:
                _settle(call, result=result)
            return True

    def _serve_together(self, model: _Model, llm: Llama, call: _Call) -> None:
        """Serve an optimized call, and with it the waiting calls that share its prefix.

        The call's prefix goes into the context as for a call alone (`_prefill`: saved
        states, save points); then the waiting optimized calls sharing at least
        MIN_SHARED_PREFIX tokens with the context join it as parallel sequences. Each
        result is handed over as soon as its call finishes.
        """
        started = time.perf_counter()
        try:
            tokens = self._checked_tokens(model, llm, call)
            cached = self._prefill(model, llm, call, tokens)
        except Exception as error:  # BackendError, llama.cpp failures, or a bug
            _settle(call, error=_failure(model, error))
            return
        finally:
            model.last_group = call.request.group
        first = min(_common_prefix(llm._input_ids, tokens), len(tokens) - 1)
        limit = llama_batch.max_tokens(llm, len(tokens), call.request.max_tokens)
        room = llm.n_ctx() - llm.n_tokens - (len(tokens) - first + limit)
        served = [(call, first, cached), *self._companions(model, llm, room)]
        jobs = [
            llama_batch.Job(
                tokens=self._tokens(model, llm, c),
                reused=reused,
                max_tokens=c.request.max_tokens,
                temperature=c.request.temperature,
                seed=_llama_seed(c.request.seed),
                stop=[stop for stop in c.request.stop if stop],
                grammar=c.grammar,
                cancelled=c.cancelled.is_set,
            )
            for c, reused, _ in served
        ]

        def done(index: int, output: llama_batch.Output) -> None:
            c, _, cached = served[index]
            result = Generation(
                text=output.text,
                input_tokens=len(jobs[index].tokens),
                output_tokens=len(output.tokens),
                cached_tokens=cached + output.shared,
                seconds=time.perf_counter() - started,
                finish_reason=output.finish_reason,
            )
            _settle(c, result=result)

        try:
            llama_batch.run(llm, jobs, done)
        except Exception as error:  # finished calls are settled already; this does not
            for c, _, _ in served:  # change them
                _settle(c, error=_failure(model, error))

    def _companions(self, model: _Model, llm: Llama, room: int) -> list[tuple[_Call, int, int]]:
        """Dequeue the waiting optimized calls that share at least MIN_SHARED_PREFIX
        tokens with the context, longest share first, as many as the context has
        sequences and KV cells (`room`) for; each with its shared length, twice (the
        tokens it starts from, the tokens it reports as cached)."""
        with model.mutex:
            waiting = [c for c in model.waiting if not c.fifo]
        shares = []
        for c in waiting:
            try:
                tokens = self._checked_tokens(model, llm, c)
            except BackendError:
                continue  # reported when the call is served alone
            shared = min(_common_prefix(llm._input_ids, tokens), len(tokens) - 1)
            if shared >= MIN_SHARED_PREFIX:
                shares.append((c, shared))
        shares.sort(key=lambda cs: (-cs[1], -cs[0].request.priority, cs[0].order))
        chosen = []
        for c, shared in shares[: llama_batch.sequences(llm) - 1]:
            assert c.tokens is not None
            limit = llama_batch.max_tokens(llm, len(c.tokens), c.request.max_tokens)
            if (need := len(c.tokens) - shared + limit) <= room:
                room -= need
                chosen.append((c, shared, shared))
        with model.mutex:
            chosen = [choice for choice in chosen if choice[0] in model.waiting]
            for c, _, _ in chosen:
                model.waiting.remove(c)
        return chosen

    def _take(self, model: _Model, llm: Llama) -> _Call | None:
        """Choose and dequeue the next call (None if it was cancelled meanwhile)."""
        with model.mutex:
            waiting = list(model.waiting)
        if not waiting:
            return None
        call = _next_call(waiting, model.last_group, lambda c: self._reusable(model, llm, c))
        with model.mutex:
            if call not in model.waiting:
                return None
            model.waiting.remove(call)
        return call

    def _reusable(self, model: _Model, llm: Llama, call: _Call) -> int:
        """Prompt tokens of `call` found in the context or (grouped calls) a saved state."""
        try:
            tokens = self._tokens(model, llm, call)
        except BackendError:
            return 0  # reported when the call is served
        length = _common_prefix(llm._input_ids, tokens)
        if not call.fifo:
            length = max(length, self._states.longest(model.spec.name, tokens)[1])
        return length

    def _generate(self, model: _Model, llm: Llama, call: _Call) -> Generation:
        """Run one call on the worker thread (blocking)."""
        request = call.request
        started = time.perf_counter()
        tokens = self._checked_tokens(model, llm, call)
        try:
            reused = self._prefill(model, llm, call, tokens)
            result = llm.create_completion(
                prompt=tokens.tolist(),
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                stop=[stop for stop in request.stop if stop],
                seed=_llama_seed(request.seed),
                grammar=call.grammar,
                stopping_criteria=StoppingCriteriaList(
                    [lambda _ids, _logits: call.cancelled.is_set()]
                ),
            )
        except (RuntimeError, ValueError) as error:  # llama.cpp decode failures
            raise BackendError(f"model '{model.spec.name}' failed: {error}") from None
        finally:
            model.last_group = request.group
        choice = result["choices"][0]  # type: ignore[index]
        usage = result["usage"]  # type: ignore[index]
        return Generation(
            text=choice["text"],
            input_tokens=usage["prompt_tokens"],
            output_tokens=usage["completion_tokens"],
            cached_tokens=reused,
            seconds=time.perf_counter() - started,
            finish_reason=choice["finish_reason"],
        )

    def _prefill(self, model: _Model, llm: Llama, call: _Call, tokens: np.ndarray) -> int:
        """Put the longest known prefix of the prompt in the context; return its length.

        `create_completion` then keeps the context's common prefix with the prompt and
        evaluates the rest, always including the last prompt token (for its logits).
        An -O0 call gets only that reuse of the previous call's prefix. An optimized call
        (one with a group or a priority) first restores a saved state if it beats the
        context by MIN_SHARED_PREFIX tokens, then evaluates the rest of its prompt in
        steps, saving the state where it stops sharing with its group and before its
        last token, so later calls find their prefix even if other prompts ran between.
        """
        last = len(tokens) - 1
        reused = _common_prefix(llm._input_ids, tokens)
        group = call.request.group
        if call.fifo:
            return min(reused, last)
        name = model.spec.name
        state, in_state = self._states.longest(name, tokens)
        if state is not None and in_state >= reused + MIN_SHARED_PREFIX:
            if _restore(llm, state):
                self._states.touch(state)
                reused = in_state
            else:
                reused = in_state = 0
        reused = min(reused, last)
        # Save points: where the prompt stops sharing with its group, and its whole
        # prompt (but the last token), since a later call may share any prefix of it
        # (an item of one map reading what an item of another map read).
        points = [last]
        if group is not None:
            shared, siblings = self._group_shared(model, llm, call, tokens)
            model.group_prompts[group] = tokens
            model.group_prompts.move_to_end(group)
            if len(model.group_prompts) > _GROUP_HISTORY:
                model.group_prompts.popitem(last=False)
            points.insert(0, shared)
            if siblings and shared >= MIN_SHARED_PREFIX and last - shared < 2 * MIN_SHARED_PREFIX:
                # A short tail after the group's prefix is cheaper evaluated in the batch
                # with the waiting siblings'. A call alone keeps its whole prompt: the
                # group's next call may extend it (a conversation, a growing transcript).
                points.pop()
        points = [p for p in points if p >= MIN_SHARED_PREFIX and p > max(in_state, reused)]
        if not points:
            return reused
        if not _truncate(llm, reused):
            return 0  # this model cannot drop part of its cache; llama.cpp starts over
        done = reused
        for end in sorted(set(points)):
            llm.eval(tokens[done:end].tolist())
            done = end
            if (size := _state_size(llm)) <= model.state_limit:
                self._states.add(_save(llm, name, size), model.state_limit)
        return reused

    def _group_shared(
        self, model: _Model, llm: Llama, call: _Call, tokens: np.ndarray
    ) -> tuple[int, bool]:
        """How much of the prompt its group shares: the longest common prefix with a
        waiting call of the group or with the group's previous prompt; all but the last
        token when no other call of the group is known yet. And whether calls of the
        group are waiting."""
        group = call.request.group
        with model.mutex:
            siblings = [c for c in model.waiting if c.request.group == group]
        others = []
        for sibling in siblings:
            with contextlib.suppress(BackendError):
                others.append(self._tokens(model, llm, sibling))
        if group is not None and (previous := model.group_prompts.get(group)) is not None:
            others.append(previous)
        longest = max((_common_prefix(tokens, other) for other in others), default=len(tokens))
        return min(longest, len(tokens) - 1), bool(siblings)

    def _checked_tokens(self, model: _Model, llm: Llama, call: _Call) -> np.ndarray:
        """The call's prompt tokens, if the model can take them."""
        tokens = self._tokens(model, llm, call)
        if not len(tokens):
            raise BackendError(f"empty prompt for model '{model.spec.name}'")
        if len(tokens) >= llm.n_ctx():
            raise BackendError(
                f"the prompt ({len(tokens)} tokens) does not fit the context of "
                f"model '{model.spec.name}' ({llm.n_ctx()} tokens)"
            )
        return tokens

    def _tokens(self, model: _Model, llm: Llama, call: _Call) -> np.ndarray:
        """The call's prompt tokens, computed once."""
        if call.error is not None:
            raise call.error
        if call.tokens is None:
            try:
                call.tokens = np.array(_prompt_tokens(model, llm, call.request), dtype=np.intc)
            except BackendError as error:
                call.error = error
                raise
        return call.tokens


def _prompt_tokens(model: _Model, llm: Llama, request: GenerationRequest) -> list[int]:
    """Chat models go through their own template; base models get the raw text."""
    if model.formatter is None:
        text = "".join(turn.text for turn in request.turns)
        return llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    try:
        text = model.formatter(
            messages=[{"role": turn.role, "content": turn.text} for turn in request.turns]
        ).prompt
    except Exception as error:  # jinja2 errors, and the template's own raise_exception
        raise BackendError(
            f"model '{model.spec.name}' cannot format this conversation: {error}"
        ) from None
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
    if tokens[:2] == [llm.token_bos()] * 2:  # the template wrote the BOS itself
        tokens = tokens[1:]
    return tokens


def _failure(model: _Model, error: BaseException) -> BaseException:
    """What a caller is told when serving its call raised `error`."""
    if isinstance(error, RuntimeError | ValueError):  # llama.cpp failures, BatchError
        return BackendError(f"model '{model.spec.name}' failed: {error}")
    return error  # a BackendError, or a bug: reported as it is, never hangs a caller


def _settle(
    call: _Call, result: Generation | None = None, error: BaseException | None = None
) -> None:
    """Hand a worker's outcome to the caller's event loop (unless the caller gave up)."""

    def settle() -> None:
        if call.future.done():
            return
        if error is not None:
            call.future.set_exception(error)
        else:
            call.future.set_result(result)  # type: ignore[arg-type]

    with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits
        call.loop.call_soon_threadsafe(settle)


def _state_limit(spec: ModelSpec, default: int) -> int:
    """The bytes of saved states a model may keep: its `state_cache_mb`, or the default."""
    limit = spec.options.get("state_cache_mb")
    if limit is None:
        return default
    if isinstance(limit, bool) or not isinstance(limit, int | float) or limit < 0:
        raise BackendError(
            f"model '{spec.name}': state_cache_mb must be a number of megabytes >= 0"
        )
    return int(limit * (1 << 20))


# The state helpers below rely on llama-cpp-python internals (checked against 0.3.x):
# `input_ids`/`n_tokens` are the tokens in the KV cache, `_ctx.kv_cache_seq_rm` drops
# cells, and `_requires_eval` forces `generate` to evaluate before sampling.


def _truncate(llm: Llama, n: int) -> bool:
    """Keep only the first `n` tokens in the context (False if the model cannot)."""
    if not llm._ctx.kv_cache_seq_rm(_SEQ, n, -1):
        llm.reset()
        return False
    llm.n_tokens = min(llm.n_tokens, n)
    return True


def _state_size(llm: Llama) -> int:
    return int(llama_cpp.llama_state_seq_get_size(llm.ctx, _SEQ))


def _save(llm: Llama, model: str, size: int) -> _SavedState:
    """Snapshot the KV cells of the tokens in the context."""
    data = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(llm.ctx, data, size, _SEQ)
    if written != size:
        raise BackendError(f"model '{model}' failed: could not save its state")
    return _SavedState(model, llm._input_ids.copy(), data)


def _restore(llm: Llama, state: _SavedState) -> bool:
    """Replace the context with a saved state (False, and an empty context, on failure)."""
    size = ctypes.sizeof(state.data)
    if llama_cpp.llama_state_seq_set_data(llm.ctx, state.data, size, _SEQ) != size:
        logger.debug("could not restore a saved state; evaluating the prompt instead")
        llm.reset()
        return False
    n = len(state.tokens)
    llm.input_ids[:n] = state.tokens
    llm.n_tokens = n
    llm._requires_eval = True  # no logits were restored
    return True


def _load(model: _Model) -> Llama:
    """Load a model's GGUF file and, for a chat model, its chat template."""
    spec = model.spec
    local = LOCAL_MODELS.get(spec.id)
    path = find_model_file(spec.id)
    # The window the plan was made for (catalog.resolve sets it); a spec built by hand
    # without one gets what resolve would have given it.
    n_ctx = spec.context or local_context(
        local.context if local else None, spec.options.get("n_ctx")
    )
    # verbose=False would make llama-cpp-python redirect file descriptors 1 and 2
    # during the load, which loses output written meanwhile by other threads; with
    # verbose=True its C logs still go to our callback and its prints are swallowed.
    started = time.perf_counter()
    try:
        with (
            _LOAD_LOCK,
            open(os.devnull, "w") as devnull,
            contextlib.redirect_stderr(devnull),
        ):
            llm = Llama(
                model_path=str(path), n_ctx=int(n_ctx), n_threads=os.cpu_count(), verbose=True
            )
    except (ValueError, RuntimeError) as error:
        raise BackendError(f"could not load model '{spec.name}' from {path}: {error}") from None
    llm.verbose = False
    try:
        llama_batch.enable_sequences(llm, MAX_SEQUENCES)
    except ValueError as error:  # no memory for the context: load fails as before
        llm.close()
        raise BackendError(f"could not load model '{spec.name}' from {path}: {error}") from None
    logger.debug("loaded %s in %.2fs", path, time.perf_counter() - started)
    chat = spec.chat if local is None or "chat" in spec.model_fields_set else local.chat
    if chat:
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            llm.close()
            raise BackendError(
                f"model '{spec.name}' has no chat template in {path.name}; "
                "declare it as a completion model (chat = false)"
            )
        model.formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=_token_text(llm, llm.token_eos()),
            bos_token=_token_text(llm, llm.token_bos()),
            add_generation_prompt=True,
        )
    model.llm = llm
    return llm


def _token_text(llm: Llama, token: int) -> str:
    if token < 0:
        return ""
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace")


def _unload(model: _Model) -> None:
    with model.busy:
        if model.llm is not None:
            model.llm.close()
            model.llm = None
            model.formatter = None
