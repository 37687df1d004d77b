"""Optimizer passes are pure and the optimizer is idempotent; its options are checked."""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

import llmflow
from llmflow.compiler.ir import Plan
from llmflow.compiler.optimizer import RULES, UnknownOption, optimize
from llmflow.errors import LLMFlowError

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.llmflow"))
NOTES = (ROOT / "examples/data/lighthouse.txt").read_text(encoding="utf-8")
INPUTS: dict[str, dict[str, Any]] = {
    "qa_over_doc": {"doc": NOTES, "questions": ["Who built it?", "When?", "Why?"]},
    "research_report": {
        "notes": NOTES,
        "sections": ["History", "The lens", "Today"],
        "questions": ["Who?", "When?"],
    },
    "chain_summary": {"text": NOTES},
    "map_reduce_summary": {"text": NOTES},
}
"""Inputs for the examples whose plans they change (map sizes, prompt text)."""

# Something for every pass to do: a call made twice (common calls, then the dead copy of
# its argument), known inputs, a map of calls sharing a long prefix, a branch.
BUSY = '''
model small = local("smollm2-135m")
model mini = openai("gpt-4o-mini", price_in=0.15, price_out=0.6)

fn ask(doc: str, question: str) -> answer: str
"""
Document:
{{doc}}

Question: {{question}} {{answer | max_tokens=20}}
"""

fn summary(doc: str) -> s: str
"""
Document:
{{doc}}

Summarize the document. {{s | max_tokens=40}}
"""

flow main(doc: str, questions: list[str]) -> answers: list[str], a: str, b: str, c: str,
        parts: list[str] {
    answers = map q in questions: ask(doc, q)
    parts = map piece in chunk_tokens(doc, 50): summary(piece)
    a = summary(upper(doc))
    b = summary(upper(doc))
    if len(doc) > 10 {
        c = summary(doc)
    } else {
        c = "short"
    }
}
'''
BUSY_INPUTS = {"doc": "The lighthouse stands on a granite ledge. " * 40, "questions": ["a", "b"]}


def snapshot(plan: Plan) -> str:
    return json.dumps(plan.to_json(), sort_keys=True, default=repr)


def unoptimized(path: Path) -> Plan:
    return llmflow.compile(path, optimize=False)


def options_for(rule: Any, options: dict[str, Any]) -> dict[str, Any]:
    accepted = inspect.signature(rule).parameters
    return {k: v for k, v in options.items() if k in accepted}


@pytest.fixture
def busy(tmp_path: Path) -> Path:
    path = tmp_path / "busy.llmflow"
    path.write_text(textwrap.dedent(BUSY).lstrip("\n"), encoding="utf-8")
    return path


@pytest.mark.parametrize("index", range(len(RULES)), ids=[rule.__name__ for rule in RULES])
def test_every_pass_leaves_its_input_unchanged(busy: Path, index: int) -> None:
    """Each pass, called on its own on the plan the passes before it made, returns a new
    plan and leaves that one as it was (and changes something, so the test can fail)."""
    rule = RULES[index]
    options = {"inputs": BUSY_INPUTS, "objective": "cost"}
    before = optimize(unoptimized(busy), rules=RULES[:index], **options)
    frozen = snapshot(before)
    after = rule(before, **options_for(rule, options))
    assert after is not before
    assert snapshot(before) == frozen
    assert snapshot(after) != frozen, f"{rule.__name__} had nothing to do here"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_optimize_leaves_its_input_unchanged(path: Path) -> None:
    plan = unoptimized(path)
    frozen = snapshot(plan)
    optimized = optimize(plan, inputs=INPUTS.get(path.stem))
    assert snapshot(plan) == frozen
    assert snapshot(optimized) != frozen


@pytest.mark.parametrize("objective", ["cost", "quality", "latency"])
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_optimizing_an_optimized_plan_changes_nothing(path: Path, objective: str) -> None:
    """No decision said twice, no fallback added again, every model assigned as before."""
    options = {"inputs": INPUTS.get(path.stem), "objective": objective}
    once = optimize(unoptimized(path), **options)
    twice = optimize(once, **options)
    assert snapshot(twice) == snapshot(once)


def test_idempotent_where_every_pass_acts(busy: Path) -> None:
    options = {"inputs": BUSY_INPUTS, "budget": 1.0}
    once = optimize(unoptimized(busy), **options)
    assert once.fallbacks and once.groups and once.decisions
    assert snapshot(optimize(once, **options)) == snapshot(once)


def test_an_unknown_option_is_an_error_naming_it_and_the_known_ones(busy: Path) -> None:
    plan = unoptimized(busy)
    with pytest.raises(UnknownOption) as raised:
        optimize(plan, objectve="quality")
    assert isinstance(raised.value, LLMFlowError)
    message = str(raised.value)
    assert "'objectve'" in message
    for known in ("inputs", "objective", "budget", "min_tokens", "exact_limit"):
        assert known in message
    assert "plan" not in message.split(":")[-1].split(", ")  # the plan is not an option
