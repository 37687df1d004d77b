"""Keys are masked wherever text leaves the process: whatever their length, before any
text is cut, in the forms a message may carry them (JSON, URLs), in the trace, the
journal, the cache, OTel attributes and --debug tracebacks."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from pathlib import Path

import pytest

import llmflow
from llmflow import cli
from llmflow.runtime import secrets
from llmflow.runtime.backends.base import BackendError, Generation, GenerationRequest
from llmflow.runtime.backends.scripted import ScriptedBackend
from llmflow.runtime.cache import ResponseCache
from llmflow.runtime.calls import CallStats
from llmflow.runtime.retry import RetryPolicy
from llmflow.runtime.runs import RunDir
from llmflow.runtime.trace import call_record

SIX = "Zq8xK2"
"""A six-character key: too short for the old rule (eight), still a key."""


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test registers its own keys; none stays registered for the tests after it."""
    monkeypatch.setattr(secrets, "_known", set())
    monkeypatch.setattr(secrets, "_sent", set())
    monkeypatch.setattr(secrets, "_keys", None)
    monkeypatch.setattr(secrets, "_pattern", re.compile(secrets._KEY_LIKE))


def test_a_key_of_six_characters_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", SIX)
    assert secrets.api_key("MY_KEY") == SIX
    assert secrets.redact(f"Bearer {SIX} rejected; key={SIX}x") == (
        "Bearer [redacted] rejected; key=[redacted]x"
    )


@pytest.mark.parametrize("key", ["a", "ab", "1", "x7z"])
def test_a_key_of_one_to_three_characters_is_masked_only_where_it_stands_alone(key: str) -> None:
    secrets.register(key)
    assert secrets.redact(f"Bearer {key}") == "Bearer [redacted]"
    assert (
        secrets.redact(f"key={key}&x=1")
        == f"key=[redacted]&x={'[redacted]' if key == '1' else '1'}"
    )
    ordinary = f"tab{key}le 1{key}2 word"
    assert secrets.redact(ordinary) == ordinary  # inside words and numbers: left alone


def test_the_longest_key_wins_where_keys_overlap() -> None:
    secrets.register("abcd")
    secrets.register("abcdefgh")
    assert secrets.redact("x abcdefgh y abcd") == "x [redacted] y [redacted]"


def test_escaped_and_encoded_forms_are_masked() -> None:
    key = 'k3y"with\\odd/chars+='
    secrets.register(key)
    for text in (json.dumps({"auth": key}), urllib.parse.quote(key, safe=""), f" {key}\n"):
        assert "[redacted]" in secrets.redact(text)
        assert "k3y" not in secrets.redact(text)


def test_text_is_masked_before_it_is_cut() -> None:
    key = "plainsecretvalue"  # no `sk-` shape: only the registry knows it
    secrets.register(key)
    for at in range(0, 40):
        text = "x" * at + key + " tail"
        for limit in range(1, 50):
            clipped = secrets.clip(text, limit)
            assert len(clipped) <= limit
            assert not any(key[:n] in clipped for n in range(4, len(key) + 1)), (at, limit)


def test_an_openai_shaped_key_is_masked_unregistered_and_cut() -> None:
    text = "Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwxyz. See docs."
    for limit in range(30, len(text) + 2):
        assert "sk-proj" not in secrets.clip(text, limit)


def test_answers_lose_the_keys_sent_but_keep_other_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "plainsecretvalue")
    monkeypatch.setenv("HF_TOKEN", "placeholder")  # some variable's value: an ordinary word
    secrets.api_key("MY_KEY")
    secrets.register_environment()
    answer = "use sk-learn-pipelines as a placeholder; your key is plainsecretvalue"
    assert secrets.mask_keys(answer) == (
        "use sk-learn-pipelines as a placeholder; your key is [redacted]"
    )
    assert secrets.redact(answer) == "use [redacted] as a [redacted]; your key is [redacted]"


def test_secret_named_variables_are_masked_from_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SIX)  # the key llmflow reads: any length
    monkeypatch.setenv("SERVICE_TOKEN", "tok-0123456789")
    monkeypatch.setenv("DB_PASSWORD", "hunter2hunter2")
    monkeypatch.setenv("FEATURE_TOKEN", "1")  # a flag, not a secret: "1" stays readable
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-honeycomb-team=hc0123456789,x=y")
    secrets.register_environment()
    text = f"{SIX} tok-0123456789 hunter2hunter2 hc0123456789 1 call"
    assert secrets.redact(text) == "[redacted] " * 4 + "1 call"


def test_trace_records_and_spans_carry_no_key() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from llmflow.compiler.catalog import resolve
    from llmflow.runtime.otel import SpanWriter

    secrets.register(SIX)
    spec = resolve("m", "openai_compatible", "served", [])
    stats = CallStats(function="ask", model="m", node="n1", start=1.0, end=2.0)
    stats.error = f"model 'm': 401 bad key {SIX}"
    stats.events = [{"name": "retry", "time": 1.5, "reason": f"timeout {SIX}"}]
    assert SIX not in json.dumps(call_record(stats, spec))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    SpanWriter(provider, {"m": spec}).write(stats)
    (span,) = exporter.get_finished_spans()
    assert SIX not in span.to_json()


PROGRAM = """
model remote = openai_compatible("served", base_url="http://127.0.0.1:9/v1")

fn ask(q: str) -> a: str
\"\"\"Ask {{q}}: {{a}}\"\"\"

flow main(qs: list[str]) -> answers: list[str] {
    answers = map q in qs: ask(q)
}
"""


def test_a_key_echoed_in_answers_and_errors_lands_in_no_file(
    compile_source, llmflow_home: Path
) -> None:
    """A backend that echoes the key, in an answer or in an error, leaves it in no file
    of the run: journal, trace, cache, run.json."""
    secrets.register(SIX, sent=True)
    plan = compile_source(PROGRAM)

    def script(request: GenerationRequest) -> str | Generation:
        text = request.turns[-1].text
        if text == "Ask echo:":
            return f"the header was Bearer {SIX}"
        raise BackendError(f"400 bad key: Bearer {SIX}", status=400)  # an unmasked message

    cache = ResponseCache(llmflow_home / "cache")
    result = asyncio.run(
        llmflow.run_async(
            plan,
            {"qs": ["echo", "fail"]},
            backend=ScriptedBackend(script),
            cache=cache,
            run_dir=RunDir.create(),
            retry=RetryPolicy(base=0.0),
        )
    )
    cache.close()
    assert len(result.failures) == 1
    files = [p for p in llmflow_home.rglob("*") if p.is_file()]
    assert any(p.name == "journal.jsonl" for p in files)
    for path in files:
        assert SIX.encode() not in path.read_bytes(), path


def test_debug_tracebacks_are_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SIX)

    def broken(args: object) -> int:
        raise RuntimeError(f"boom with {SIX} inside")

    monkeypatch.setattr(cli, "_check", broken)
    assert cli.main(["--debug", "check", "x.llmflow"]) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: boom with [redacted] inside" in err and SIX not in err
    assert cli.main(["check", "x.llmflow"]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: boom with [redacted]" in err and SIX not in err


def test_a_key_shaped_string_is_masked_after_a_digit_not_inside_a_word() -> None:
    text = secrets.redact("x=8sk-abcdefghijkl task-abcdefghijkl (sk-abcdefghijkl)")
    assert text == "x=8[redacted] task-abcdefghijkl ([redacted])"
