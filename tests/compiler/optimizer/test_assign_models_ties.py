"""Ties in model assignment: the declared model keeps a tie, and a template written as a
chat turn is not moved to a completion-only model on a tie (issue 11)."""

from __future__ import annotations

import collections
import textwrap
from pathlib import Path

import pytest

import llmflow
from llmflow.compiler.ir import Generate, LLMCall, Plan, Read, Text
from llmflow.compiler.optimizer import optimize
from llmflow.compiler.optimizer.costs import written_as_chat_turn
from llmflow.compiler.types import Prim

ROOT = Path(__file__).resolve().parents[3]


def call_of(*segments: Text | Read | Generate) -> LLMCall:
    outputs = {s.output for s in segments if isinstance(s, Generate)}
    return LLMCall(
        function="f",
        params=["x"],
        outputs=[{"name": o, "type": Prim(name="str")} for o in sorted(outputs)],
        segments=list(segments),
        model="m",
    )


@pytest.mark.parametrize(
    ("segments", "chat_turn"),
    [
        ((Text(text="Name two problems.\n"), Generate(output="a")), True),
        ((Text(text="\n\nDraft:\n  "), Generate(output="a")), True),
        ((Generate(output="a"),), True),
        ((Text(text="Introduction. "), Generate(output="a")), False),
        ((Text(text="Answer:"), Generate(output="a")), False),
        ((Read(input="x"), Text(text=" "), Generate(output="a")), False),
        ((Text(text="Q:\n"), Read(input="x"), Generate(output="a")), False),
        # The second output begins a line: the template asks it as a message.
        (
            (Text(text="Q: "), Generate(output="a"), Text(text="\n"), Generate(output="b")),
            True,
        ),
        ((Text(text="A: "), Generate(output="a"), Text(text=" B: "), Generate(output="b")), False),
    ],
)
def test_a_chat_turn_is_an_output_that_begins_its_line(
    segments: tuple[Text | Read | Generate, ...], chat_turn: bool
) -> None:
    assert written_as_chat_turn(call_of(*segments)) is chat_turn


TWO_LOCAL = """
model small = local("smollm2-135m", skills={reasoning: 0.3, writing: 0.3, extraction: 0.3})
model base = local("gemma3-270m", skills={reasoning: 0.3, writing: 0.3, extraction: 0.3})
"""


def plan_of(tmp_path: Path, source: str, **options: object) -> Plan:
    path = tmp_path / "p.llmflow"
    path.write_text(textwrap.dedent(source))
    return optimize(llmflow.compile(path, optimize=False), **options)


def model_of(plan: Plan, function: str) -> str:
    return next(n.call.model for n in plan.calls() if n.call.function == function)


def messages(plan: Plan) -> list[str]:
    return [d.message for d in plan.decisions]


BETTER_BASE = TWO_LOCAL.replace(
    'gemma3-270m", skills={reasoning: 0.3, writing: 0.3, extraction: 0.3}',
    'gemma3-270m", skills={reasoning: 0.3, writing: 0.6, extraction: 0.3}',
)

CONTINUE = '''
fn go(x: str) -> y: str
"""
Some text: {{x}}. Next: {{y | max_tokens=20}}
"""
flow main(x: str) -> y: str { y = go(x) }
'''

CHAT = '''
fn go(x: str) -> y: str
"""
Some text: {{x}}
Say what is wrong with it.
{{y | max_tokens=20}}
"""
flow main(x: str) -> y: str { y = go(x) }
'''


def test_an_equally_cheap_equally_good_model_does_not_displace_the_default(
    tmp_path: Path,
) -> None:
    # base prefills a long prompt faster, but speed is no reason to move under cost.
    plan = plan_of(tmp_path, TWO_LOCAL + CONTINUE, inputs={"x": "word " * 400})
    assert model_of(plan, "go") == "small"
    assert any("base is as good a choice: the declared model stays" in m for m in messages(plan))
    # Under the latency objective speed is the point: the faster model wins.
    fast = plan_of(tmp_path, TWO_LOCAL + CONTINUE, objective="latency", inputs={"x": "word " * 400})
    assert model_of(fast, "go") == "base"


def test_the_default_keeps_a_tie_whichever_model_it_is(tmp_path: Path) -> None:
    source = (
        """
model base = local("gemma3-270m", skills={reasoning: 0.3, writing: 0.3, extraction: 0.3})
model small = local("smollm2-135m", skills={reasoning: 0.3, writing: 0.3, extraction: 0.3})
"""
        + CONTINUE
    )
    plan = plan_of(tmp_path, source, inputs={"x": "short"})
    assert plan.default_model == "base"
    assert model_of(plan, "go") == "base"


def test_a_better_model_still_wins_on_equal_cost(tmp_path: Path) -> None:
    source = BETTER_BASE
    plan = plan_of(tmp_path, source + CONTINUE)
    assert model_of(plan, "go") == "base"


def test_a_chat_turn_is_not_moved_to_a_completion_model_on_a_tie(tmp_path: Path) -> None:
    source = BETTER_BASE
    plan = plan_of(tmp_path, source + CHAT)
    assert model_of(plan, "go") == "small"
    assert any(
        "written as a chat turn: not moved to completion-only base without measurements" in m
        for m in messages(plan)
    )


def test_a_chat_turn_stays_on_a_completion_default(tmp_path: Path) -> None:
    source = (
        """
model base = local("gemma3-270m", skills={reasoning: 0.3, writing: 0.3, extraction: 0.3})
model small = local("smollm2-135m", skills={reasoning: 0.3, writing: 0.3, extraction: 0.3})
"""
        + CHAT
    )
    plan = plan_of(tmp_path, source)
    assert model_of(plan, "go") == "base"  # declared: not a move


def test_a_need_only_a_completion_model_meets_moves_there_and_says_so(tmp_path: Path) -> None:
    source = BETTER_BASE
    plan = plan_of(tmp_path, source + CHAT.replace("fn go", "@needs(writing >= 0.5)\nfn go"))
    assert model_of(plan, "go") == "base"
    assert any(
        "written as a chat turn, on a completion-only model: measure it" in m
        for m in messages(plan)
    )


def test_quality_objective_may_move_a_chat_turn_to_a_better_completion_model(
    tmp_path: Path,
) -> None:
    source = BETTER_BASE
    plan = plan_of(tmp_path, source + CHAT, objective="quality")
    assert model_of(plan, "go") == "base"
    assert any("on a completion-only model: measure it" in m for m in messages(plan))


RESEARCH_INPUTS = {
    "sections": ["History", "Construction", "The lens", "Keepers", "Storms", "Automation", "Today"],
    "questions": [
        "Who built it?",
        "When was it lit?",
        "How tall is it?",
        "What is its range?",
        "Who kept it last?",
        "Can it be visited?",
    ],
}


def test_research_report_keeps_small_where_nothing_says_otherwise() -> None:
    notes = (ROOT / "examples/data/lighthouse.txt").read_text(encoding="utf-8")
    plan = llmflow.compile(
        ROOT / "examples/research_report.llmflow", inputs={"notes": notes, **RESEARCH_INPUTS}
    )
    by_model: dict[str, set[str]] = collections.defaultdict(set)
    calls: collections.Counter[str] = collections.Counter()
    for node in plan.calls():
        by_model[node.call.model].add(node.call.function)
        calls[node.call.model] += plan.estimates[node.id].instances
    # @needs(writing >= 0.4) moves draft, revise and fix; @model(base) pins introduce.
    assert by_model["base"] == {"draft", "revise", "fix", "introduce"}
    assert "mini" not in by_model  # local models are free
    assert by_model["small"] == {
        "outline",
        "gather_facts",
        "critique",
        "review",
        "condense",
        "title",
        "conclude",
        "answer",
        "define_terms",
        "keywords",
    }
    # the glossary loop runs over the 7 section texts (a map of the 7 sections)
    assert calls == {"small": 35.0, "base": 15.5}
