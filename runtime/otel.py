"""Export a run's calls as real OpenTelemetry spans (`llmflow run --otel`), for users
who collect traces in Jaeger, Honeycomb, Grafana Tempo or any OTLP endpoint.

Optional: it needs the `otel` extra (`pip install 'llmflow[otel]'`, the OpenTelemetry
SDK and its OTLP/HTTP exporter), configured the standard way, by environment
(`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`). A
span carries the same attributes as the JSONL trace record, named after the GenAI
semantic conventions, and its retries and fallbacks as span events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmflow.compiler.models import ModelSpec
from llmflow.errors import LLMFlowError
from llmflow.runtime.calls import CallStats
from llmflow.runtime.trace import call_record

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

NS = 1_000_000_000


def otlp_provider() -> TracerProvider:
    """A tracer provider exporting to the OTLP endpoint the environment names."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise LLMFlowError(
            "--otel needs the OpenTelemetry SDK: pip install 'llmflow[otel]'"
        ) from None
    provider = TracerProvider(resource=Resource.create({"service.name": "llmflow"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


class SpanWriter:
    """Turns each finished call into a span with its real start and end times."""

    def __init__(self, provider: TracerProvider, models: dict[str, ModelSpec]) -> None:
        self.provider = provider
        self.models = models
        self.tracer = provider.get_tracer("llmflow")

    def write(self, stats: CallStats) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        record = call_record(stats, self.models[stats.model])
        attributes: dict[str, Any] = {
            key: value
            for key, value in record.items()
            if value is not None and key not in ("start", "end", "events", "llmflow.seeds")
        }
        for output, seed in (record["llmflow.seeds"] or {}).items():  # no dicts in OTel
            attributes[f"llmflow.seed.{output}"] = seed
        name = f"{record['gen_ai.operation.name']} {record['gen_ai.request.model']}"
        span = self.tracer.start_span(
            name, kind=SpanKind.CLIENT, attributes=attributes, start_time=int(stats.start * NS)
        )
        for event in record["events"]:
            details = {k: v for k, v in event.items() if k not in ("name", "time")}
            span.add_event(event["name"], details, timestamp=int(event["time"] * NS))
        if stats.error:
            span.set_status(Status(StatusCode.ERROR, record["error.type"]))
        span.end(end_time=int(stats.end * NS))

    def close(self) -> None:
        self.provider.shutdown()
