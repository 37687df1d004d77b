"""The run summary: per model, what the calls consumed and what they cost.

A call is one call however many outputs it generates (one request per output) and
however often an answer was asked again; a call that fell back to another model counts
once in the run's total and once for each model that tried it; a call the budget did
not let send anything is not counted (the run reports it as "not run")."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel

from llmflow.runtime.budget import NOT_RUN
from llmflow.runtime.calls import CallStats


class ModelStats(BaseModel):
    calls: int = 0
    prompt_tokens: int = 0
    reused_prompt_tokens: int = 0
    """Prompt tokens served from a reused prefix (KV state or provider cache), as the
    backend reported them: the run's side of a plan's `cached_tokens`, billed at the
    cached price (`prices.prompt_dollars`) and already in `dollars`."""
    output_tokens: int = 0
    dollars: float = 0.0
    seconds: float = 0.0
    """Model time (generation), summed over calls."""
    retries: int = 0
    """Failed tries retried by the transport."""
    cache_hits: int = 0
    """Calls whose every answer came from the response cache (free, instant)."""
    journal_hits: int = 0
    """Calls whose every answer came from the run's journal (a resumed run: free)."""


def ran(call: CallStats) -> bool:
    """Whether a call got as far as asking (a model, the cache or the journal)."""
    return call.generations > 0 or not (call.error or "").startswith(NOT_RUN)


def model_stats(calls: list[CallStats]) -> dict[str, ModelStats]:
    out: dict[str, ModelStats] = {}
    for call in filter(ran, calls):
        s = out.setdefault(call.model, ModelStats())
        s.calls += 1
        s.prompt_tokens += call.input_tokens
        s.reused_prompt_tokens += call.cached_tokens
        s.output_tokens += call.output_tokens
        s.seconds += call.seconds
        s.retries += call.retries
        answered = call.generations > 0
        s.cache_hits += answered and call.cache_hits == call.generations
        s.journal_hits += answered and call.journal_hits == call.generations
        s.dollars += call.dollars
    return out


def call_count(calls: Iterable[CallStats]) -> int:
    """Calls the run made: a call taken over by a fallback model is still one call."""
    return sum(1 for call in calls if call.fallback_from is None and ran(call))
