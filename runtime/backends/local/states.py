"""Saved KV states: a model's context after a shared prefix, kept to restore later.

A call of a prefix group arriving after other prompts restores its group's prefix
instead of evaluating it again; the states of all models stay under one memory budget.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import llama_cpp
import numpy as np
from llama_cpp import Llama

from llmflow.compiler.models import ModelSpec
from llmflow.runtime.backends.base import BackendError
from llmflow.runtime.backends.kinds import local_settings

logger = logging.getLogger(__name__)

DEFAULT_STATE_CACHE_MB = 1024
"""Saved KV states a backend keeps, all models together; a model's `state_cache_mb` caps
its own (and raises the backend's total if it is larger)."""

_SEQ = 0
"""The llama.cpp sequence llama-cpp-python evaluates everything in; batched calls get
the prefix from it."""


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


def _state_limit(spec: ModelSpec, default: int) -> int:
    """The bytes of saved states a model may keep: its `state_cache_mb`, or the default."""
    limit = local_settings(spec).state_cache_mb  # a number of megabytes >= 0
    if limit is None:
        return default
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
