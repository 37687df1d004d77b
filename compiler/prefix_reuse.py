"""Prefix reuse: how many of a prompt's leading tokens a backend reads from a prefix it
has already evaluated (the embedded engine's saved KV states, a provider's prompt cache)
instead of evaluating them again. The one place these numbers are decided: the
optimizer's estimates, the embedded engine and the OpenAI backend's warm-up all ask here.

What a backend reuses is its kind's declaration (`Capabilities.prefix_reuse_min_tokens`
and `prefix_reuse_step_tokens` on the model's spec): the embedded engine reuses a shared
prefix from 64 tokens on; OpenAI caches prompts from 1,024 tokens on, in increments of
128 tokens, and nothing below that. Grouping calls is a separate, planner-side choice
(`GROUP_MIN_TOKENS`): calls that share a prefix are scheduled together whether or not
their backend will reuse it, but only what the backend reuses is counted as cached.
"""

from __future__ import annotations

import math

from llmflow.compiler.models import ModelSpec

GROUP_MIN_TOKENS = 64
"""The shortest common prefix that makes calls on one model a prefix group (the
optimizer's `min_tokens`): below it keeping the calls together buys nothing on any
backend (llama.cpp evaluates 64 tokens in a fraction of a second)."""

WARM_MIN_TOKENS = 1024
"""A prefix group's first request to a hosted server is sent alone (so that the rest
find its prefix cached) only if the calls share at least this many tokens and the
server reuses them: waiting for the first answer costs a round trip, which a shorter
cached prefix does not pay back."""


def min_tokens(model: ModelSpec) -> int | None:
    """The shortest shared prefix the model's backend reuses (None: it never does)."""
    return model.capabilities.prefix_reuse_min_tokens


def reuses(model: ModelSpec, shared_tokens: float) -> bool:
    """Whether the backend reuses a prefix of `shared_tokens` already evaluated."""
    least = min_tokens(model)
    return least is not None and shared_tokens >= least


def cached_tokens_expected(model: ModelSpec, shared_prefix_tokens: float) -> float:
    """Prompt tokens a call reads from a reused prefix when its prompt starts with
    `shared_prefix_tokens` tokens its backend has already evaluated: none below the
    backend's minimum, else the prefix counted down to the backend's reuse step."""
    if not reuses(model, shared_prefix_tokens):
        return 0.0
    step = model.capabilities.prefix_reuse_step_tokens
    if step <= 1:
        return float(shared_prefix_tokens)
    return float(math.floor(shared_prefix_tokens / step) * step)


def worth_warming(model: ModelSpec, shared_tokens: float) -> bool:
    """Whether a prefix group's first request should go alone, ahead of the others: the
    backend reuses the prefix, and it is long enough to repay the wait."""
    return shared_tokens >= WARM_MIN_TOKENS and reuses(model, shared_tokens)
