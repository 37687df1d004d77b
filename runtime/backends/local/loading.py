"""A model's slot, loading its GGUF file, and turning a conversation into its tokens."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import llama_cpp
import numpy as np
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from llmflow.compiler import prefix_reuse
from llmflow.compiler.models import LOCAL_MODELS, ModelSpec, local_context
from llmflow.runtime.backends.base import BackendError, GenerationRequest
from llmflow.runtime.backends.kinds import local_settings
from llmflow.runtime.backends.local import batch
from llmflow.runtime.backends.local.files import find_model_file
from llmflow.runtime.backends.local.queue import _Call

logger = logging.getLogger(__name__)

MAX_SEQUENCES = 16
"""Calls one model decodes together (llama.cpp sequences of its context)."""


@llama_cpp.llama_log_callback
def _log_to_python(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """Send llama.cpp's C logging to Python logging (debug) instead of stderr."""
    logger.debug("%s", (text or b"").decode("utf-8", errors="replace").rstrip())


# Replaces llama-cpp-python's own callback, which prints errors to stderr.
llama_cpp.llama_log_set(_log_to_python, ctypes.c_void_p(0))

_LOAD_LOCK = threading.Lock()
"""Loading swaps `sys.stderr` process-wide, so two loads must not overlap."""


@contextlib.contextmanager
def no_weight_repacking() -> Iterator[None]:
    """Load without llama.cpp's extra buffer types (weights repacked for AMX and other
    CPU kernels): on Xeons with AMX in this sandbox, decoding a batch of more than one
    token with repacked weights segfaults. `Llama` takes no such option, so its default
    model parameters are patched for the load (under `_LOAD_LOCK`)."""
    module = llama_cpp.llama_cpp  # what `Llama.__init__` calls
    default = module.llama_model_default_params

    def params() -> llama_cpp.llama_model_params:
        chosen = default()
        chosen.use_extra_bufts = False
        return chosen

    module.llama_model_default_params = params
    try:
        yield
    finally:
        module.llama_model_default_params = default


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

    @property
    def reuse_min_tokens(self) -> float:
        """The fewest shared tokens worth reordering calls, restoring or saving a state,
        or batching calls for: what the model's kind declares (`prefix_reuse.min_tokens`,
        64 for the embedded engine), the figure plans count cached tokens from. A spec
        that declares none reuses no saved state (only what llama.cpp keeps itself)."""
        least = prefix_reuse.min_tokens(self.spec)
        return math.inf if least is None else least


def _load(model: _Model) -> Llama:
    """Load a model's GGUF file and, for a chat model, its chat template."""
    spec = model.spec
    local = LOCAL_MODELS.get(spec.id)
    path = find_model_file(spec.id)
    # The window the plan was made for (catalog.resolve sets it); a spec built by hand
    # without one gets what resolve would have given it.
    n_ctx = spec.context or local_context(
        local.context if local else None, local_settings(spec).n_ctx
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
            no_weight_repacking(),
        ):
            llm = Llama(
                model_path=str(path), n_ctx=int(n_ctx), n_threads=os.cpu_count(), verbose=True
            )
    except (ValueError, RuntimeError) as error:
        raise BackendError(f"could not load model '{spec.name}' from {path}: {error}") from None
    llm.verbose = False
    try:
        batch.enable_sequences(llm, MAX_SEQUENCES)
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
