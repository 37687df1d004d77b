"""The run summary counts calls: not requests (one per output), not generations asked
again, not the models a call fell back through, not calls the budget never sent."""

from __future__ import annotations

from llmflow.runtime.backends.base import Generation
from llmflow.runtime.calls import CallStats
from llmflow.runtime.stats import call_count, model_stats


def call(model: str, *sources: str, **fields: object) -> CallStats:
    stats = CallStats(function="f", model=model, **fields)  # type: ignore[arg-type]
    for source in sources:
        stats.add(Generation(text="x", source=source, input_tokens=3))  # type: ignore[arg-type]
    return stats


def test_calls_are_counted_as_calls():
    calls = [
        call("a", "cache", "cache"),  # two outputs, both from the cache: one cache hit
        call("a", "cache", "model"),  # partly from the cache: a model call
        call("a", "journal", "journal", "journal"),  # a validation retry, replayed
        call("a", "model", error="a: 503", retries=5),  # gave up ...
        call("b", "model", fallback_from="a"),  # ... and b took it over: still one call
        call("b", error="not run: it could cost up to $0.0100 ..."),  # never sent
        call("b", "model", error="not run: it could cost up to $0.0100 ..."),  # sent once
    ]
    stats = model_stats(calls)
    assert (stats["a"].calls, stats["a"].cache_hits, stats["a"].journal_hits) == (4, 1, 1)
    assert (stats["b"].calls, stats["b"].cache_hits) == (2, 0)
    assert stats["a"].prompt_tokens == 3 * 8 and stats["a"].retries == 5
    assert call_count(calls) == 5
