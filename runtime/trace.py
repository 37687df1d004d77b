"""The run trace: one JSON line per call, written as each call ends.

Attribute names follow OpenTelemetry's GenAI semantic conventions where one exists
(`gen_ai.request.model`, `gen_ai.usage.input_tokens`, …) so the records can be loaded
into tools that speak them; what is llmflow's own is under `llmflow.`. No prompt or
answer text is written; error messages and event details are redacted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmflow.compiler.models import ModelSpec
from llmflow.runtime.calls import CallStats
from llmflow.runtime.secrets import redact

PROVIDERS = {"local": "llama.cpp", "openai": "openai", "openai_compatible": "openai"}


def call_record(stats: CallStats, spec: ModelSpec) -> dict[str, Any]:
    return {
        "llmflow.node": stats.node,
        "llmflow.function": stats.function,
        "llmflow.model": stats.model,
        "gen_ai.operation.name": "chat" if spec.chat else "text_completion",
        "gen_ai.provider.name": PROVIDERS[spec.backend],
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
        self._file = path.open("a", encoding="utf-8")
        path.chmod(0o600)

    def write(self, stats: CallStats) -> None:
        record = call_record(stats, self.models[stats.model])
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
