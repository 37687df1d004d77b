"""LocalBackend: the embedded backend's face to the gateway.

It keeps a slot per model (loaded on first use), queues each request on its model, and
starts that model's worker (`worker`) when none is running.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from llama_cpp import LlamaGrammar

from llmflow.compiler.models import ModelSpec
from llmflow.runtime.backends.base import (
    BackendError,
    Constraint,
    Generation,
    GenerationRequest,
)
from llmflow.runtime.backends.local.grammars import _grammar_source
from llmflow.runtime.backends.local.loading import _load, _Model, _prompt_tokens, _unload
from llmflow.runtime.backends.local.queue import _Call
from llmflow.runtime.backends.local.states import (
    DEFAULT_STATE_CACHE_MB,
    _state_limit,
    _StateCache,
)
from llmflow.runtime.backends.local.worker import _Worker


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
        self._worker = _Worker(self._states)
        self._arrivals = itertools.count()
        self._threads: set[asyncio.Future[None]] = set()

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
            worker = loop.run_in_executor(None, self._worker.serve, model)
            self._threads.add(worker)  # keeps a reference; the worker reports through calls
            worker.add_done_callback(self._threads.discard)
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
