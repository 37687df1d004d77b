"""The run trace: one JSON line per call, written as each call ends.

Attribute names follow OpenTelemetry's GenAI semantic conventions where one exists
(`gen_ai.request.model`, `gen_ai.usage.input_tokens`, …) so the records can be loaded
into tools that speak them; what is llmflow's own is under `llmflow.`. No prompt or
answer text is written; error messages and event details are redacted.

A run killed while writing leaves its last line cut short, and a run folder may come
from elsewhere: reading skips (and counts) every line that is not a whole call record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmflow.compiler.models import ModelSpec
from llmflow.runtime.backends import registry
from llmflow.runtime.calls import CallStats
from llmflow.runtime.secrets import redact
from llmflow.runtime.store import JsonLines, read_json_lines


def call_record(stats: CallStats, spec: ModelSpec) -> dict[str, Any]:
    return {
        "llmflow.node": stats.node,
        "llmflow.function": stats.function,
        "llmflow.model": stats.model,
        "gen_ai.operation.name": "chat" if spec.chat else "text_completion",
        "gen_ai.provider.name": registry.kind_of(spec).provider,
        "gen_ai.request.model": spec.id,
        "start": stats.start,
        "end": stats.end,
        "gen_ai.usage.input_tokens": stats.input_tokens,
        "gen_ai.usage.output_tokens": stats.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": stats.cached_tokens,
        "llmflow.cost_usd": round(stats.dollars, 10),
        "llmflow.generations": stats.generations,
        "llmflow.retries": stats.retries,
        "llmflow.validation_retries": stats.validation_retries,
        "llmflow.fallback_from": stats.fallback_from,
        "llmflow.cache_hit": stats.cache_hits > 0,
        "llmflow.journal_hit": stats.journal_hits > 0,
        "llmflow.group": stats.group,
        "llmflow.row": stats.row,
        "llmflow.seeds": dict(stats.seeds) or None,
        "llmflow.status": "error" if stats.error else "ok",
        "error.type": redact(stats.error) if stats.error else None,
        "events": [_redacted(event) for event in stats.events],
    }


def _redacted(event: dict[str, Any]) -> dict[str, Any]:
    return {k: redact(v) if isinstance(v, str) else v for k, v in event.items()}


class TraceWriter:
    """Appends records to the run's trace; each line is flushed as it is written."""

    def __init__(self, path: Path, models: dict[str, ModelSpec]) -> None:
        self.models = models
        self._out = JsonLines(path)

    def write(self, stats: CallStats) -> None:
        self._out.write(call_record(stats, self.models[stats.model]))

    def close(self) -> None:
        self._out.close()


_NUMBER = (int, float)
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "llmflow.node": str,
    "llmflow.function": str,
    "llmflow.model": str,
    "start": _NUMBER,
    "end": _NUMBER,
    "gen_ai.usage.input_tokens": int,
    "gen_ai.usage.output_tokens": int,
    "llmflow.cost_usd": _NUMBER,
    "llmflow.retries": int,
}
"""What `llmflow trace` prints of each record, with its type."""


def read_trace(path: Path) -> tuple[list[dict[str, Any]], int]:
    """A run's call records, and how many lines were not one (cut short, not JSON, not a
    record with the fields above). A missing trace has no records; a directory in its
    place is an error naming it."""
    values, unreadable = read_json_lines(path)
    records = [v for v in values if _is_record(v)]
    return records, unreadable + len(values) - len(records)


def _is_record(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(value.get(key), kind) and not isinstance(value.get(key), bool)
        for key, kind in _REQUIRED.items()
    )
