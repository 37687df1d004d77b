"""The run summary: per model, what the calls consumed and what they cost."""

from __future__ import annotations

from pydantic import BaseModel

from llmflow.compiler.models import ModelSpec
from llmflow.compiler.optimizer.costs import token_dollars
from llmflow.runtime.calls import CallStats


class ModelStats(BaseModel):
    calls: int = 0
    prompt_tokens: int = 0
    reused_prompt_tokens: int = 0
    """Prompt tokens served from a reused prefix (KV state or provider cache)."""
    output_tokens: int = 0
    dollars: float = 0.0
    seconds: float = 0.0
    """Model time (generation), summed over calls."""
    retries: int = 0


def model_stats(calls: list[CallStats], models: dict[str, ModelSpec]) -> dict[str, ModelStats]:
    out: dict[str, ModelStats] = {}
    for call in calls:
        model = models[call.model]
        s = out.setdefault(call.model, ModelStats())
        s.calls += 1
        s.prompt_tokens += call.input_tokens
        s.reused_prompt_tokens += call.cached_tokens
        s.output_tokens += call.output_tokens
        s.seconds += call.seconds
        s.retries += call.retries
        fresh = call.input_tokens - call.cached_tokens
        s.dollars += token_dollars(model, fresh, call.cached_tokens, call.output_tokens)
    return out
