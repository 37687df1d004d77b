"""Each optimizer pass decides what it must, and says so."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import llmflow
from llmflow.compiler.ir import BuiltinNode, Plan
from llmflow.compiler.optimizer import optimize
from llmflow.compiler.optimizer.prompts import DEFAULT_MAP_ITEMS, DEFAULT_REPEATS
from llmflow.errors import CompileError

Make = Callable[..., Plan]


@pytest.fixture
def make(tmp_path: Path) -> Make:
    def make_(source: str, inputs: dict | None = None, **options) -> Plan:
        path = tmp_path / "prog.llmflow"
        path.write_text(textwrap.dedent(source))
        plan = llmflow.compile(path, optimize=False)
        return optimize(plan, inputs=inputs, **options)

    return make_


def calls(plan: Plan) -> list[str]:
    return sorted(n.label for n in plan.calls())


def said(plan: Plan, rule: str) -> list[str]:
    return [d.message for d in plan.decisions if d.rule == rule]


DOC_FNS = '''
fn summary(doc: str) -> s: str
"""
Document:
{{doc}}

Summarize the document. {{s | max_tokens=40}}
"""

fn ask(doc: str, question: str) -> a: str
"""
Document:
{{doc}}

Question: {{question}} {{a | max_tokens=20}}
"""

fn creative(doc: str) -> s: str
"""{{doc}} A poem: {{s | max_tokens=40, temperature=0.9}}"""
'''

DOC = "The lighthouse was built in 1871 on a granite ledge. " * 30


def test_the_same_call_on_the_same_inputs_runs_once(make: Make) -> None:
    plan = make(
        DOC_FNS
        + """
    flow main(doc: str) -> a: str, b: str {
        a = summary(doc)
        b = summary(doc)
    }
    """
    )
    assert calls(plan) == ["summary"]
    out_a, out_b = (plan.graph.node(plan.graph.outputs[k]) for k in ("a", "b"))
    assert out_a.args == out_b.args
    assert any("runs once" in m for m in said(plan, "common-call elimination"))


def test_sampled_calls_are_not_merged(make: Make) -> None:
    plan = make(
        DOC_FNS
        + """
    flow main(doc: str) -> a: str, b: str {
        a = creative(doc)
        b = creative(doc)
    }
    """
    )
    assert calls(plan) == ["creative", "creative"]


def test_calls_on_different_inputs_are_not_merged(make: Make) -> None:
    plan = make(
        DOC_FNS
        + """
    flow main(doc: str, other: str) -> a: str, b: str {
        a = summary(doc)
        b = summary(other)
    }
    """
    )
    assert calls(plan) == ["summary", "summary"]


def test_merging_leaves_no_dead_nodes(make: Make) -> None:
    plan = make(
        DOC_FNS
        + """
    flow main(doc: str) -> a: str, b: str {
        a = summary(upper(doc))
        b = summary(upper(doc))
    }
    """
    )
    ops = [n.op for n in plan.graph.nodes if n.kind == "builtin"]
    assert ops == ["upper"]
    assert calls(plan) == ["summary"]


def test_known_inputs_fix_map_sizes_and_fold_builtins(make: Make) -> None:
    plan = make(
        DOC_FNS
        + """
    flow main(doc: str, qs: list[str]) -> answers: list[str], parts: list[str] {
        answers = map q in qs: ask(doc, q)
        parts = map c in chunk(doc, 400): summary(c)
    }
    """,
        inputs={"doc": DOC, "qs": ["Who?", "When?", "Where?"]},
    )
    sizes = {n.label: len(plan.known[n.args[0]]) for n in plan.graph.nodes if n.kind == "map"}
    assert sizes == {
        "map q in qs": 3,
        "map c in chunk()": len(llmflow.stdlib.builtins.chunk(DOC, 400)),
    }
    ask = next(n for n in plan.calls() if n.label == "ask")
    assert plan.estimates[ask.id].instances == 3


def test_unknown_list_assumes_a_size_and_says_so(make: Make) -> None:
    plan = make(
        DOC_FNS
        + """
    flow main(doc: str, qs: list[str]) -> answers: list[str] {
        answers = map q in qs: ask(doc, q)
    }
    """
    )
    ask = plan.calls()[0]
    assert plan.estimates[ask.id].instances == 4
    assert any("assume 4 items" in m for m in said(plan, "known values"))


def test_map_items_form_one_prefix_group(make: Make) -> None:
    plan = make(
        DOC_FNS
        + """
    flow main(doc: str, qs: list[str]) -> answers: list[str] {
        answers = map q in qs: ask(doc, q)
    }
    """,
        inputs={"doc": DOC, "qs": ["a?", "b?", "c?"]},
    )
    (group,) = plan.groups
    assert group.instances == 3
    # The document is known: the shared prefix is the template head plus the document.
    assert group.prefix_tokens == pytest.approx(
        len("Document:\n" + DOC + "\n\nQuestion: ") / 4, abs=2
    )


def test_different_functions_with_the_same_leading_text_group(make: Make) -> None:
    plan = make(
        DOC_FNS
        + """
    flow main(doc: str, q: str) -> s: str, a: str {
        s = summary(doc)
        a = ask(doc, q)
    }
    """
    )
    (group,) = plan.groups
    assert sorted(plan.graph.node(c).label for c in group.calls) == ["ask", "summary"]


def test_short_common_prefixes_do_not_group(make: Make) -> None:
    plan = make(
        DOC_FNS
        + """
    flow main(doc: str, q: str) -> s: str, a: str {
        s = summary("short")
        a = ask("other", q)
    }
    """
    )
    assert plan.groups == []


def test_group_members_are_estimated_to_reuse_the_prefix(make: Make) -> None:
    plan = make(
        DOC_FNS
        + """
    flow main(doc: str, qs: list[str]) -> answers: list[str] {
        answers = map q in qs: ask(doc, q)
    }
    """,
        inputs={"doc": DOC, "qs": ["a?", "b?", "c?", "d?"]},
    )
    (group,) = plan.groups
    assert plan.total is not None
    assert plan.total.cached_tokens == pytest.approx(group.prefix_tokens * 3, rel=0.01)


def test_critical_path_runs_first(make: Make) -> None:
    plan = make(
        DOC_FNS
        + """
    flow main(doc: str, q: str) -> short: str, chain: str {
        short = ask("tiny", q)
        first = summary(doc)
        chain = summary(first)
    }
    """
    )
    by_label = {}
    for node in plan.calls():
        by_label.setdefault(node.label, []).append(plan.priorities[node.id])
    # The chain's head waits on nothing and leads the longest path: it outranks `ask`.
    assert max(by_label["summary"]) > by_label["ask"][0]
    path_labels = [plan.graph.node(n).label for n in plan.critical_path]
    assert path_labels.count("summary") == 2 and "ask" not in path_labels


def test_latency_outputs_outrank_the_critical_path(make: Make) -> None:
    plan = make(
        DOC_FNS
        + """
    flow main(doc: str, q: str) -> @latency short: str, @throughput chain: str {
        short = ask("tiny", q)
        first = summary(doc)
        chain = summary(first)
    }
    """
    )
    ask = next(n for n in plan.calls() if n.label == "ask")
    assert all(
        plan.priorities[ask.id] > plan.priorities[n.id] for n in plan.calls() if n is not ask
    )


def test_O0_decides_nothing(tmp_path: Path) -> None:
    path = tmp_path / "p.llmflow"
    path.write_text(
        textwrap.dedent(
            DOC_FNS
            + """
    flow main(doc: str) -> a: str, b: str {
        a = summary(doc)
        b = summary(doc)
    }
    """
        )
    )
    plan = llmflow.compile(path, optimize=False)
    assert calls(plan) == ["summary", "summary"]
    assert plan.groups == [] and plan.priorities == {} and plan.decisions == []


def test_constant_work_past_the_limits_is_an_error_at_its_position(make: Make) -> None:
    source = """
    flow main(n: int = 3) -> a: int, b: list[int] {
        a = len(range(10000000000))
        b = [x * 2 for x in range(n)]
    }
    """
    with pytest.raises(CompileError) as info:
        make(source)
    [diag] = info.value.diagnostics
    assert diag.kind == "limit"
    assert diag.message == (
        "range(10000000000) would have 10,000,000,000 items; the limit is 1,000,000"
    )
    assert (diag.span.line, diag.span.col) == (3, 13)
    assert "3 |     a = len(range(10000000000))" in info.value.render()
    with pytest.raises(CompileError, match="1 error") as info:  # an input given to plan
        make(source.replace("10000000000", "5"), inputs={"n": 10**12})
    assert info.value.diagnostics[0].message.startswith("range(1000000000000) would have")


def test_work_a_run_may_skip_is_not_a_plan_time_error(make: Make) -> None:
    plan = make(
        """
        flow main(n: int = 10000000000) -> ok: bool {
            ok = n < 100 and len(range(n)) > 5
        }
        """
    )
    known = [n for n in plan.graph.nodes if n.id in plan.known]
    # `n < 100` is false, so the `and` is too: known without its right side.
    assert [n.op for n in known if isinstance(n, BuiltinNode)] == ["<", "and"]
    assert [plan.known[n.id] for n in known if isinstance(n, BuiltinNode)] == [False, False]


def test_a_default_is_known_when_the_optional_is_given_or_known_none(make: Make) -> None:
    source = """
        flow main(xs: list[int], n: int? = none) -> a: int, b: int {
            a = n ?? len(xs)
            b = n ?? 7
        }
        """

    def values(plan: Plan) -> list[str]:
        return [plan.graph.node(plan.graph.outputs[name]).args[0] for name in ("a", "b")]

    plan = make(source, inputs={"n": 3})
    assert [plan.known.get(v) for v in values(plan)] == [3, 3]
    plan = make(source)  # n is none, its default: b is 7, a waits for xs
    a, b = values(plan)
    assert a not in plan.known and plan.known[b] == 7
    [work] = [n for n in plan.graph.nodes if isinstance(n, BuiltinNode) and n.op == "len"]
    assert work.id not in plan.known


LABEL_FN = '''
fn label(x: str) -> tag: str
"""
Tag {{x}}: {{tag | max_tokens=4}}
"""
'''


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ([["a", "b", "c", "d", "e"], ["f", "g", "h", "i", "j"]], 10),
        ([["a", "b", "c"], ["d"], []], 4),
        ([[]], 0),
    ],
)
def test_a_nested_map_over_a_known_list_counts_its_calls_exactly(
    make: Make, groups: list[list[str]], expected: int
) -> None:
    plan = make(
        LABEL_FN
        + """
    flow main(groups: list[list[str]]) -> out: list[list[str]] {
        out = map g in groups: map x in g: label(x)
    }
    """,
        inputs={"groups": groups},
    )
    assert plan.total.instances == expected


def test_three_nested_maps_over_known_lists_count_exactly(make: Make) -> None:
    plan = make(
        LABEL_FN
        + """
    flow main(xs: list[list[list[str]]], hs: list[str]) -> out: list[list[list[list[str]]]] {
        out = map g in xs: map h in hs: map p in g: map x in p: label(x)
    }
    """,
        inputs={"xs": [[["a", "b"], ["c"]], [["d", "e", "f"]]], "hs": ["1", "2"]},
    )
    assert plan.total.instances == (3 + 3) * 2


def test_a_nested_map_over_an_unknown_list_assumes_a_size_per_level(make: Make) -> None:
    plan = make(
        LABEL_FN
        + """
    flow main(groups: list[list[str]]) -> out: list[list[str]] {
        out = map g in groups: map x in g: label(x)
    }
    """
    )
    assert plan.total.instances == 16


REPEATS = """
flow polish(x: str, n: int) -> out: str {
    repeat at most n with out = x {
        out = label(out)
    }
}

flow main(x: str, n: int, ns: list[int]) -> once: str, each: list[str] {
    once = polish(x, n)
    each = map k in ns: polish(x, k)
}
"""


def test_a_repeat_count_from_an_input_is_used_when_known(make: Make) -> None:
    """`repeat at most n`: n calls when n is given to the plan (in a map over known
    counts, their sum), else DEFAULT_REPEATS, and the decisions say which."""
    plan = make(LABEL_FN + REPEATS, inputs={"n": 3, "ns": [0, 1, 5]})
    assert plan.total.instances == 3 + (0 + 1 + 5)
    assert any("repeat ≤n runs at most 3 times" in m for m in said(plan, "known values"))
    unknown = make(LABEL_FN + REPEATS)
    assert unknown.total.instances == DEFAULT_REPEATS + DEFAULT_MAP_ITEMS * DEFAULT_REPEATS
    assert any(
        f"repeat ≤n: count not known before running; estimates assume {DEFAULT_REPEATS} "
        "iterations" in m
        for m in said(unknown, "known values")
    )


def test_a_map_over_a_constant_inside_a_loop_counts_exactly(make: Make) -> None:
    """A constant in a loop's body is the same every iteration: `sample 3` and a map
    over `range(2)` there run exactly that often per iteration."""
    plan = make(
        LABEL_FN.replace("{{tag | max_tokens=4}}", "{{tag | max_tokens=4, temperature=0.8}}")
        + """
    flow main(x: str) -> out: str {
        repeat at most 2 with out = x {
            tags = sample 3: label(out)
            more = map i in range(2): label(str(i))
            out = join(tags + more)
        }
    }
    """
    )
    assert plan.total.instances == 2 * (3 + 2)


SIZED_FN = '''
fn ask(q: str, n: int) -> a: str
"""
{{q}} {{a | max_tokens=n}}
"""
'''


def test_max_tokens_from_a_known_input_is_the_estimated_output_length(make: Make) -> None:
    source = (
        SIZED_FN
        + """
    flow main(q: str, n: int) -> a: str {
        a = ask(q, n)
    }
    """
    )
    assert make(source, inputs={"n": 7}).total.output_tokens == 7
    from llmflow.compiler.optimizer.prompts import DEFAULT_INPUT_MAX_TOKENS

    unknown = make(source)
    assert unknown.total.output_tokens == DEFAULT_INPUT_MAX_TOKENS
    assert any(
        f"max_tokens=n not known before running; estimates assume {DEFAULT_INPUT_MAX_TOKENS}" in m
        for m in said(unknown, "estimates")
    )


def test_max_tokens_from_a_map_item_uses_each_known_value(make: Make) -> None:
    plan = make(
        SIZED_FN
        + """
    flow main(ns: list[int]) -> a: list[str] {
        a = map n in ns: ask("Hi", n)
    }
    """,
        inputs={"ns": [5, 9, 1]},
    )
    assert plan.total.instances == 3
    assert plan.total.output_tokens == 5 + 9 + 1


def test_calls_whose_temperature_an_input_gives_are_not_merged(make: Make) -> None:
    plan = make(
        '''
    fn poem(topic: str, t: float) -> p: str
    """
    A poem on {{topic}}: {{p | max_tokens=20, temperature=t}}
    """

    flow main(topic: str, t: float) -> a: str, b: str {
        a = poem(topic, t)
        b = poem(topic, t)
    }
    '''
    )
    assert calls(plan) == ["poem", "poem"]
