"""How a call's template becomes a conversation: the system section as the system turn
(chat) or the leading text (completion), and `sample n:` drawing n distinct samples that
a rerun with the same seed draws again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from local_models import needs_smollm2

import llmflow
from llmflow.cli import main
from llmflow.compiler.catalog import resolve
from llmflow.compiler.ir import Plan
from llmflow.runtime.backends.base import GenerationRequest, Turn
from llmflow.runtime.backends.openai import _params
from llmflow.runtime.backends.scripted import ScriptedBackend
from llmflow.runtime.cache import ResponseCache

SYSTEM = '''
model small = local("smollm2-135m")
model base = local("gemma3-270m")

const RULES = """Answer in one word."""

@model(small)
fn chat_ask(q: str) -> a: str
"""
{% system %}
{{RULES}} Topic: {{q}}.
{% end %}
Question: {{q}}
{{a}}
"""

@model(base)
fn base_ask(q: str) -> a: str
"""
{% system %}
{{RULES}}
{% end %}
Q: {{q}}
A: {{a}}
"""

flow main(q: str) -> a: str, b: str {
    a = chat_ask(q)
    b = base_ask(q)
}
'''


def turns_by_function(plan: Plan, inputs: dict) -> dict[str, list[Turn]]:
    backend = ScriptedBackend(lambda r: "Paris")
    result = asyncio.run(llmflow.run_async(plan, inputs, backend=backend))
    assert result.ok, result.failures
    return {
        ("base" if r.request.model == "base" else "chat"): r.request.turns for r in backend.served
    }


def test_the_system_section_is_the_system_turn_or_the_leading_text(
    compile_source: Callable[..., Plan],
) -> None:
    turns = turns_by_function(compile_source(SYSTEM), {"q": "France"})
    assert [(t.role, t.text) for t in turns["chat"]] == [
        ("system", "Answer in one word. Topic: France."),
        ("user", "Question: France"),
    ]
    # A completion model reads the turns concatenated: the system text, a blank line, on.
    assert "".join(t.text for t in turns["base"]) == "Answer in one word.\n\nQ: France\nA:"


def test_an_openai_chat_model_gets_it_as_messages_0(compile_source: Callable[..., Plan]) -> None:
    turns = turns_by_function(compile_source(SYSTEM), {"q": "France"})["chat"]
    spec = resolve("gpt", "openai", "gpt-4o-mini")
    params = _params(spec, GenerationRequest(model="gpt", turns=turns), None, legacy_schema=False)
    assert params["messages"][0] == {
        "role": "system",
        "content": "Answer in one word. Topic: France.",
    }
    assert params["messages"][1]["role"] == "user"


@pytest.mark.model
@needs_smollm2
def test_smollm2_chat_template_puts_it_in_its_system_turn(
    compile_source: Callable[..., Plan],
) -> None:
    """Formatting only (no decoding): our system text replaces the template's default."""
    pytest.importorskip("llama_cpp")
    from llmflow.runtime.backends.local import LocalBackend

    turns = turns_by_function(compile_source(SYSTEM), {"q": "France"})["chat"]
    backend = LocalBackend({"chat": resolve("chat", "local", "smollm2-135m")})
    try:
        tokens = backend.prompt_tokens(GenerationRequest(model="chat", turns=turns))
        llm = backend._models["chat"].llm
        assert llm is not None
        text = llm.detokenize(tokens, special=True).decode()
    finally:
        asyncio.run(backend.aclose())
    assert "<|im_start|>system\nAnswer in one word. Topic: France.<|im_end|>" in text
    assert "SmolLM" not in text  # the template's own default system prompt is gone
    assert text.index("<|im_start|>system") < text.index("<|im_start|>user\nQuestion: France")


SAMPLES = """
fn guess(q: str) -> a: str
\"\"\"Guess {{q}}: {{a | max_tokens=4}}\"\"\"

flow main(q: str) -> answers: list[str], top: str {
    answers = sample 5: guess(q)
    top = vote(answers)
}
"""


def by_seed(request: GenerationRequest) -> str:
    assert request.seed is not None and request.temperature > 0
    return "yes" if request.seed % 3 else "no"


def test_samples_get_distinct_seeds_that_a_rerun_with_the_seed_repeats(
    compile_source: Callable[..., Plan],
) -> None:
    plan = compile_source(SAMPLES)
    runs = []
    for seed in (11, 11, 12):
        backend = ScriptedBackend(by_seed)
        result = asyncio.run(llmflow.run_async(plan, {"q": "x"}, backend=backend, seed=seed))
        assert result.ok, result.failures
        runs.append((result, sorted(s.request.seed for s in backend.served)))
    (first, seeds), (again, seeds_again), (_, other) = runs
    assert len(set(seeds)) == 5
    assert seeds_again == seeds and first.outputs == again.outputs
    assert set(other).isdisjoint(seeds)
    assert first.outputs["answers"] == [by_seed_value(s) for s in first_seeds(first)]
    answers = first.outputs["answers"]
    assert first.outputs["top"] == max(answers, key=lambda a: (answers.count(a), -answers.index(a)))


def first_seeds(result: llmflow.RunResult) -> list[int]:
    """Each sample's seed, in sample order (the call stats keep the seed per output)."""
    calls = sorted((c for c in result.calls if c.function == "guess"), key=lambda c: c.start)
    return [c.seeds["a"] for c in calls]


def by_seed_value(seed: int) -> str:
    return "yes" if seed % 3 else "no"


def test_the_cache_keeps_each_sample_and_a_rerun_reads_all_of_them(
    compile_source: Callable[..., Plan], tmp_path: Path
) -> None:
    plan = compile_source(SAMPLES)
    cache = ResponseCache(tmp_path / "cache")
    try:
        first = asyncio.run(
            llmflow.run_async(plan, {"q": "x"}, ScriptedBackend(by_seed), cache=cache, seed=5)
        )

        def never(request: GenerationRequest) -> str:
            raise AssertionError("a cached sample was asked again")

        again = asyncio.run(
            llmflow.run_async(plan, {"q": "x"}, ScriptedBackend(never), cache=cache, seed=5)
        )
    finally:
        cache.close()
    assert again.outputs == first.outputs
    assert sum(c.cache_hits for c in again.calls) == 5


LONG = " ".join(f"Rule {i}: reply with one plain word and nothing else." for i in range(12))


@pytest.mark.model
@needs_smollm2
def test_two_functions_sharing_a_const_system_text_reuse_its_kv_prefix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """End to end on the embedded model: the second call reads the shared system turn
    from the first one's KV state."""
    path = tmp_path / "prog.llmflow"
    path.write_text(
        f'const RULES = """{LONG}"""\n'
        + '''
fn colour(thing: str) -> c: str
"""
{% system %}{{RULES}}{% end %}
What colour is {{thing}}?
{{c | max_tokens=2}}
"""

fn size(thing: str) -> s: str
"""
{% system %}{{RULES}}{% end %}
How big is {{thing}}?
{{s | max_tokens=2}}
"""

flow main(thing: str) -> c: str, s: str {
    c = colour(thing)
    s = size(thing)
}
'''
    )
    code = main(["run", str(path), "-i", "thing=grass", "--json", "--stats", "--no-cache"])
    out, err = capsys.readouterr()
    assert code == 0, err
    stats = json.loads(out)["stats"]["default"]
    assert stats["calls"] == 2
    assert stats["reused_prompt_tokens"] >= 100  # the rules: ~150 tokens, read once


def test_a_resumed_run_finds_each_sample_in_its_journal(
    compile_source: Callable[..., Plan], tmp_path: Path
) -> None:
    from llmflow.runtime.runs import RunDir

    plan = compile_source(SAMPLES)
    run_dir = RunDir.create(tmp_path / "home")
    first = asyncio.run(
        llmflow.run_async(plan, {"q": "x"}, ScriptedBackend(by_seed), run_dir=run_dir, seed=9)
    )
    replay = ScriptedBackend(by_seed)
    again = asyncio.run(llmflow.run_async(plan, {"q": "x"}, replay, run_dir=run_dir, seed=9))
    assert again.outputs == first.outputs
    assert replay.served == [] and sum(c.journal_hits for c in again.calls) == 5


FORMAT_CHOICES = '''
enum Kind { bug "a defect in the product", feature, question "asks how to do something" }

fn classify(ticket: str) -> kind: Kind
"""
Ticket: {{ticket}}
{{kind | format}}
"""

fn pick(ticket: str, teams: list[str]) -> team: str
"""
Ticket: {{ticket}}
Which team? {{team | choices=teams, format}}
"""

flow main(ticket: str, teams: list[str]) -> kind: Kind, team: str {
    kind = classify(ticket)
    team = pick(ticket, teams)
}
'''


def test_format_lists_the_members_of_an_enum_and_the_choices_without_json(
    compile_source: Callable[..., Plan],
) -> None:
    backend = ScriptedBackend(lambda r: "billing" if "team" in r.turns[-1].text else "bug")
    inputs = {"ticket": "It crashes", "teams": ["billing", "search"]}
    result = asyncio.run(llmflow.run_async(compile_source(FORMAT_CHOICES), inputs, backend=backend))
    assert result.ok, result.failures
    prompts = [r.request.turns[-1].text for r in backend.served]
    intro = "Answer with one of these, exactly as written, and nothing else (no quotes, no JSON):"
    assert f"Ticket: It crashes\n{intro}\n" in prompts[0]
    assert prompts[0].endswith(
        "- bug: a defect in the product\n- feature\n- question: asks how to do something"
    )
    assert "JSON in this format" not in prompts[0]
    assert prompts[1].endswith(f"Which team? {intro}\n- billing\n- search")
    assert result.outputs["team"] == "billing"
