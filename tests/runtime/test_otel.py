"""Calls exported as OpenTelemetry spans: GenAI attribute names, real times, retries as
span events, failures as error status. Uses the real SDK with its in-memory exporter."""

from __future__ import annotations

import asyncio

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import llmflow
from llmflow.runtime.backends.base import BackendError, GenerationRequest
from llmflow.runtime.backends.scripted import ScriptedBackend
from llmflow.runtime.retry import RetryPolicy

PROGRAM = """
model remote = openai_compatible("served", base_url="http://127.0.0.1:9/v1")

fn ask(q: str) -> a: str
\"\"\"Ask {{q}}: {{a}}\"\"\"

flow main(qs: list[str]) -> answers: list[str] {
    answers = map q in qs: ask(q)
}
"""


def test_each_call_is_a_span_with_genai_attributes_and_retry_events(compile_source):
    plan = compile_source(PROGRAM)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tried: set[str] = set()

    def script(request: GenerationRequest) -> str:
        text = request.turns[-1].text
        if text == "Ask flaky:" and text not in tried:
            tried.add(text)
            raise BackendError("remote: 503", status=503, retryable=True)
        if text == "Ask broken:":
            raise BackendError("remote: 400 bad request", status=400)
        return "fine"

    result = asyncio.run(
        llmflow.run_async(
            plan,
            {"qs": ["ok", "flaky", "broken"]},
            backend=ScriptedBackend(script),
            retry=RetryPolicy(base=0.0),
            otel=provider,
        )
    )
    assert len(result.failures) == 1
    spans = exporter.get_finished_spans()
    assert len(spans) == 3
    by_retries = sorted(spans, key=lambda span: span.attributes["llmflow.retries"])
    retried = by_retries[-1]
    assert retried.name == "chat served"
    assert retried.attributes["gen_ai.request.model"] == "served"
    assert retried.attributes["gen_ai.usage.input_tokens"] > 0
    assert [e.name for e in retried.events] == ["retry"]
    assert retried.events[0].attributes["reason"] == "503"
    assert retried.start_time < retried.end_time
    failed = [span for span in spans if span.status.status_code == StatusCode.ERROR]
    assert len(failed) == 1 and "400 bad request" in failed[0].status.description


def test_a_sampled_call_carries_its_seed(compile_source):
    plan = compile_source(PROGRAM.replace("{{a}}", "{{a | temperature=0.7}}"))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    backend = ScriptedBackend(lambda request: "fine")
    asyncio.run(llmflow.run_async(plan, {"qs": ["x", "y"]}, backend=backend, otel=provider, seed=9))
    sent = sorted(served.request.seed for served in backend.served)
    assert sorted(span.attributes["llmflow.seed.a"] for span in exporter.get_finished_spans()) == (
        sent
    )
