"""The run summary: per model, what the calls consumed and what they cost."""

from __future__ import annotations

from pydantic import BaseModel

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
    """Failed tries retried by the transport."""
    cache_hits: int = 0
    """Answers served from the response cache (free, instant)."""


def model_stats(calls: list[CallStats]) -> dict[str, ModelStats]:
    out: dict[str, ModelStats] = {}
    for call in calls:
        s = out.setdefault(call.model, ModelStats())
        s.calls += 1
        s.prompt_tokens += call.input_tokens
        s.reused_prompt_tokens += call.cached_tokens
        s.output_tokens += call.output_tokens
        s.seconds += call.seconds
        s.retries += call.retries
        s.cache_hits += call.cache_hits
        s.dollars += call.dollars
    return out
