"""Lowering: the shape of the IR graph for each construct, and the Plan around it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from llmflow.compiler import ast, compile_file
from llmflow.compiler.check import Checked
from llmflow.compiler.ir import (
    BuiltinNode,
    Carried,
    Generate,
    Graph,
    IRNode,
    Item,
    LoopNode,
    OutputSpec,
    Plan,
    Port,
    Read,
    Ref,
    Text,
)
from llmflow.compiler.types import BOOL, FLOAT, INT, STR, EnumT, ListT, RecordT
from llmflow.errors import CompileError

MakePlan = Callable[..., Plan]
Write = Callable[[str, str], Path]

FNS = '''
fn summarize(text: str, prefix: str) -> summary: str
"""
{{prefix}} {{text}}
{{summary}}
"""

fn improve(text: str, hint: str) -> better: str
"""
{{hint}} {{text}} {{better}}
"""
'''


def by_kind(graph: Graph, kind: str) -> list[IRNode]:
    return [n for n in graph.nodes if n.kind == kind]


def only(graph: Graph, kind: str) -> IRNode:
    nodes = by_kind(graph, kind)
    assert len(nodes) == 1, [n.label for n in nodes]
    return nodes[0]


def op(node: IRNode) -> str | None:
    """A builtin's operator (None for other kinds, which have none)."""
    return node.op if isinstance(node, BuiltinNode) else None


def producer(graph: Graph, node: IRNode, port: int = 0) -> IRNode:
    return graph.node(node.args[port])


def output_producer(plan: Plan, name: str) -> IRNode:
    out = plan.graph.node(plan.graph.outputs[name])
    assert out.kind == "output" and out.name == name
    return producer(plan.graph, out)


def assert_well_formed(graph: Graph) -> None:
    """Args refer to earlier nodes of the same graph, and edges say the same as args."""
    seen: set[str] = set()
    for node in graph.nodes:
        for arg in node.args:
            assert arg in seen, f"{node.id} reads {arg} before it exists"
        seen.add(node.id)
        expected: dict[str, list[int]] = {}
        for port, arg in enumerate(node.args):
            expected.setdefault(arg, []).append(port)
        actual = {u: d["ports"] for u, _, d in graph.g.in_edges(node.id, data=True)}
        assert actual == expected
        for body in node.bodies.values():
            assert_well_formed(body)
    for node_id in graph.outputs.values():
        assert node_id in seen


# ---- map ----------------------------------------------------------------------------------


def test_map_is_a_subgraph_with_the_item_and_captured_inputs(plan: MakePlan) -> None:
    p = plan(
        FNS
        + """
        flow main(docs: list[str], prefix: str) -> sums: list[str] {
            sums = map d in docs: summarize(d, prefix)
        }
        """
    )
    assert_well_formed(p.graph)
    assert [n.kind for n in p.graph.nodes] == ["input", "input", "map", "output"]
    docs, prefix, node, _ = p.graph.nodes
    assert node.label == "map d in docs"
    assert node.type == ListT(item=STR)
    assert node.var == "sums"
    assert node.args == [docs.id, prefix.id]
    assert list(node.bodies) == ["body"]
    body = node.bodies["body"]
    assert_well_formed(body)
    item, captured, call = body.nodes
    assert (item.kind, item.binding, item.var, item.type) == ("input", Item(), "d", STR)
    assert (captured.kind, captured.binding, captured.var) == ("input", Port(index=1), "prefix")
    assert body.inputs == [item.id, captured.id]
    assert call.kind == "llm" and call.args == [item.id, captured.id]
    assert body.outputs == {"value": call.id}
    assert output_producer(p, "sums") is node
    # A flow input read in the map is not copied into the subgraph twice.
    assert sum(1 for n in body.nodes if n.kind == "input") == 2


def test_comprehension_with_filter_has_a_where_output(plan: MakePlan) -> None:
    p = plan(
        """
        flow main(xs: list[str], n: int) -> picked: list[str] {
            picked = [upper(x) for x in xs if len(x) > n]
        }
        """
    )
    node = only(p.graph, "map")
    body = node.bodies["body"]
    assert set(body.outputs) == {"where", "value"}
    where = body.node(body.outputs["where"])
    assert (where.kind, where.op, where.type) == ("builtin", ">", BOOL)
    value = body.node(body.outputs["value"])
    assert (value.kind, value.op) == ("builtin", "upper")
    n_input = producer(body, where, 1)
    assert (n_input.kind, n_input.binding, n_input.var) == ("input", Port(index=1), "n")
    assert node.args == [p.graph.inputs[0], p.graph.inputs[1]]


def test_nested_map_captures_through_both_levels(plan: MakePlan) -> None:
    p = plan(
        """
        flow main(xs: list[str], tail: str) -> out: list[list[str]] {
            out = map x in xs: map y in split(x): y + tail
        }
        """
    )
    outer = only(p.graph, "map")
    assert outer.args == [p.graph.inputs[0], p.graph.inputs[1]]
    inner = only(outer.bodies["body"], "map")
    outer_body = outer.bodies["body"]
    captured = outer_body.node(inner.args[1])
    assert (captured.kind, captured.binding, captured.var) == ("input", Port(index=1), "tail")
    inner_inputs = [n for n in inner.bodies["body"].nodes if n.kind == "input"]
    assert [(n.binding, n.var) for n in inner_inputs] == [(Item(), "y"), (Port(index=1), "tail")]
    assert_well_formed(p.graph)


# ---- branch -------------------------------------------------------------------------------


def test_branch_node_with_subgraphs_and_exported_names(plan: MakePlan) -> None:
    p = plan(
        FNS
        + """
        flow main(text: str, n: int) -> final: str {
            if n > 3 {
                final = summarize(text, "long:")
            } else {
                final = text
            }
        }
        """
    )
    assert_well_formed(p.graph)
    branch = only(p.graph, "branch")
    assert branch.label == "if"
    assert branch.type == RecordT(name="if", fields=(("final", STR),))
    assert list(branch.bodies) == ["then", "else"]
    cond = producer(p.graph, branch, 0)
    assert (cond.kind, cond.op, cond.type) == ("builtin", ">", BOOL)
    text_input = p.graph.inputs[0]
    # Each branch reads `text` through its own port.
    assert branch.args == [cond.id, text_input, text_input]
    then, orelse = branch.bodies["then"], branch.bodies["else"]
    then_call = only(then, "llm")
    assert then.node(then_call.args[0]).binding == Port(index=1)
    assert then.outputs == {"final": then_call.id}
    (else_input,) = orelse.nodes
    assert (else_input.kind, else_input.binding, else_input.var) == ("input", Port(index=2), "text")
    assert orelse.outputs == {"final": else_input.id}
    final = output_producer(p, "final")
    assert (final.kind, final.op, final.field, final.var) == ("builtin", "field", "final", "final")
    assert final.args == [branch.id]
    # Nothing of the branches leaks into the flow's own graph.
    assert by_kind(p.graph, "llm") == []


def test_else_if_nests_a_branch_in_the_else_graph(plan: MakePlan) -> None:
    p = plan(
        """
        flow main(n: int) -> size: str {
            if n > 10 {
                size = "big"
            } else if n > 5 {
                size = "medium"
            } else {
                size = "small"
            }
        }
        """
    )
    outer = only(p.graph, "branch")
    inner = only(outer.bodies["else"], "branch")
    consts = [n.value for n in inner.bodies["then"].nodes + inner.bodies["else"].nodes]
    assert consts == ["medium", "small"]
    assert outer.bodies["else"].outputs["size"] != inner.id  # read through a field node
    field = outer.bodies["else"].node(outer.bodies["else"].outputs["size"])
    assert (field.op, field.args) == ("field", [inner.id])


def test_branch_exports_several_names_from_one_node(plan: MakePlan) -> None:
    p = plan(
        """
        flow main(n: int) -> a: str, b: int {
            if n > 0 {
                a = "pos"
                b = 1
            } else {
                a = "neg"
                b = -1
            }
        }
        """
    )
    branch = only(p.graph, "branch")
    assert branch.type == RecordT(name="if", fields=(("a", STR), ("b", INT)))
    fields = [n for n in p.graph.nodes if op(n) == "field"]
    assert [(f.field, f.args) for f in fields] == [("a", [branch.id]), ("b", [branch.id])]


# ---- loops --------------------------------------------------------------------------------


def test_repeat_loop_node(plan: MakePlan) -> None:
    p = plan(
        FNS
        + """
        flow main(start: str, hint: str) -> draft: str {
            repeat at most 3 with draft = start {
                draft = improve(draft, hint)
            } until len(draft) > 100
        }
        """
    )
    assert_well_formed(p.graph)
    loop = only(p.graph, "loop")
    start, hint = p.graph.inputs
    assert loop.label == "repeat ≤3"
    assert (loop.loop_max, loop.carried) == (3, ["draft"])
    assert loop.args == [start, hint]
    assert loop.type == RecordT(name="loop", fields=(("draft", STR),))
    body = loop.bodies["body"]
    carried, captured, call, *until_nodes = body.nodes
    assert (carried.kind, carried.binding, carried.var) == ("input", Carried(name="draft"), "draft")
    assert (captured.kind, captured.binding, captured.var) == ("input", Port(index=1), "hint")
    assert call.kind == "llm" and call.args == [carried.id, captured.id]
    assert call.var == "draft"
    assert set(body.outputs) == {"draft", "until"}
    assert body.outputs["draft"] == call.id
    until = body.node(body.outputs["until"])
    assert (until.op, until.type) == (">", BOOL)
    length = producer(body, until, 0)
    assert length.op == "len" and length.args == [call.id]  # until reads the next value
    assert len(until_nodes) == 3
    draft = output_producer(p, "draft")
    assert (draft.op, draft.field, draft.args) == ("field", "draft", [loop.id])


def test_repeat_bounds_from_a_const_and_from_an_int_value(plan: MakePlan) -> None:
    """A const bound is fixed like a number; an int value is the loop's first argument,
    read when the loop starts."""
    p = plan(
        FNS
        + """
        const ROUNDS = 2

        flow main(start: str, hint: str, rounds: int) -> a: str, b: str {
            repeat at most ROUNDS with a = start {
                a = improve(a, hint)
            }
            repeat at most rounds with b = start {
                b = improve(b, hint)
            }
        }
        """
    )
    assert_well_formed(p.graph)
    fixed, counted = by_kind(p.graph, "loop")
    start, hint, rounds = p.graph.inputs
    assert isinstance(fixed, LoopNode) and isinstance(counted, LoopNode)
    assert (fixed.label, fixed.loop_max, fixed.count_arg) == ("repeat ≤ROUNDS", 2, False)
    assert fixed.args == [start, hint] and fixed.first_carried == 0
    assert (counted.label, counted.loop_max, counted.count_arg) == ("repeat ≤rounds", None, True)
    assert counted.args == [rounds, start, hint] and counted.first_carried == 1
    assert not counted.over_list
    carried, captured = (counted.body.node(i) for i in counted.body.inputs[:2])
    assert (carried.binding, captured.binding) == (Carried(name="b"), Port(index=2))


def test_for_loop_node(plan: MakePlan) -> None:
    p = plan(
        """
        flow main(xs: list[str], sep: str) -> joined: str, n: int {
            for x in xs with joined = "", n = 0 {
                joined = joined + x + sep
                n = n + 1
            }
        }
        """
    )
    assert_well_formed(p.graph)
    loop = only(p.graph, "loop")
    xs, sep = p.graph.inputs
    assert loop.label == "for x"
    assert (loop.loop_max, loop.carried) == (None, ["joined", "n"])
    init_joined, init_n = (p.graph.node(a) for a in loop.args[1:3])
    assert loop.args == [xs, init_joined.id, init_n.id, sep]
    assert (init_joined.kind, init_joined.value, init_joined.var) == ("const", "", "joined")
    assert (init_n.kind, init_n.value, init_n.var) == ("const", 0, "n")
    body = loop.bodies["body"]
    inputs = [(n.binding, n.var) for n in body.nodes if n.kind == "input"]
    assert inputs == [
        (Item(), "x"),
        (Carried(name="joined"), "joined"),
        (Carried(name="n"), "n"),
        (Port(index=3), "sep"),
    ]
    assert set(body.outputs) == {"joined", "n"}
    assert body.node(body.outputs["n"]).var == "n"
    assert loop.type == RecordT(name="loop", fields=(("joined", STR), ("n", INT)))


def test_carried_value_not_reassigned_flows_through(plan: MakePlan) -> None:
    p = plan(
        """
        flow main(xs: list[str]) -> kept: str {
            for x in xs with kept = "k" {
                other = x
            }
        }
        """
    )
    body = only(p.graph, "loop").bodies["body"]
    kept = next(n for n in body.nodes if getattr(n, "binding", None) == Carried(name="kept"))
    assert body.outputs == {"kept": kept.id}
    assert len(body.nodes) == 2  # item and kept: `other` is dead


# ---- flows --------------------------------------------------------------------------------


def test_flow_calls_are_inlined(plan: MakePlan) -> None:
    p = plan(
        FNS
        + """
        flow shout(t: str) -> u: str {
            u = upper(t) + "!"
        }

        flow twice(t: str, prefix: str) -> a: str, b: str {
            a = summarize(t, prefix)
            b = shout(a)
        }

        flow main(text: str) -> out: str, loud: str {
            out, loud = twice(shout(text), "p")
        }
        """
    )
    assert_well_formed(p.graph)
    labels = [n.label for n in p.graph.walk()]
    assert "shout" not in labels
    assert [n.kind for n in p.graph.walk()].count("llm") == 1
    assert {n.kind for n in p.graph.walk()} <= {"input", "const", "llm", "builtin", "output"}
    ops = [n.op for n in p.graph.nodes if n.kind == "builtin"]
    assert ops.count("upper") == 2  # shout inlined once per call
    # Unpacking an inlined flow reads its outputs directly: no record is built.
    assert not [n for n in p.graph.nodes if op(n) == "record"]
    out, loud = output_producer(p, "out"), output_producer(p, "loud")
    assert (out.kind, out.label) == ("llm", "summarize")
    assert loud.op == "+" and p.graph.node(loud.args[0]).op == "upper"
    call = only(p.graph, "llm")
    first_upper = next(n for n in p.graph.nodes if op(n) == "upper")
    assert producer(p.graph, first_upper).id == p.graph.inputs[0]
    assert producer(p.graph, call, 0).op == "+"  # the first shout's result


def test_plan_of_a_flow_picked_by_name(plan: MakePlan) -> None:
    source = """
        flow a(x: str) -> y: str {
            y = upper(x)
        }

        flow b(x: str) -> y: str {
            y = lower(x)
        }
        """
    p = plan(source, flow="b")
    assert p.flow == "b"
    assert [n.op for n in p.graph.nodes if n.kind == "builtin"] == ["lower"]


def test_only_flow_is_the_default(plan: MakePlan) -> None:
    p = plan("flow solo(x: str) -> y: str {\n    y = x\n}\n")
    assert p.flow == "solo"


def test_main_is_the_default_among_several(plan: MakePlan) -> None:
    p = plan(
        "flow other(x: str) -> y: str {\n    y = x\n}\n"
        "flow main(x: str) -> z: str {\n    z = x\n}\n"
    )
    assert p.flow == "main"


def test_no_main_among_several_flows_is_an_error(write: Write) -> None:
    path = write(
        "prog.llmflow",
        "flow a(x: str) -> y: str {\n    y = x\n}\nflow b(x: str) -> y: str {\n    y = x\n}\n",
    )
    with pytest.raises(CompileError) as info:
        compile_file(path)
    (diag,) = info.value.diagnostics
    assert (diag.file, diag.message) == (str(path), "no flow 'main' in this program")
    assert diag.hint == "flows in this program: a, b"
    with pytest.raises(CompileError):
        compile_file(path, "c")


def test_program_without_flows_cannot_be_compiled(write: Write) -> None:
    path = write("prog.llmflow", 'fn f(x: str) -> y: str """{{x}} {{y}}"""\n')
    with pytest.raises(CompileError) as info:
        compile_file(path)
    assert info.value.diagnostics[0].hint == "declare one: flow main(...) -> ... { }"


# ---- dead values and variables -------------------------------------------------------------


def test_dead_values_are_not_lowered(plan: MakePlan) -> None:
    p = plan(
        FNS
        + """
        flow main(text: str, prefix: str) -> out: str {
            unused = summarize("x", prefix)
            also_unused = [t for t in split(text)]
            repeat at most 2 with draft = text {
                draft = improve(draft, prefix)
            }
            if len(text) > 3 {
                dead = summarize(text, prefix)
            } else {
                dead = text
            }
            out = upper(text)
        }
        """
    )
    assert [n.kind for n in p.graph.walk()] == ["input", "input", "builtin", "output"]
    assert p.calls() == []


def test_edge_var_names_the_semantic_variable(plan: MakePlan) -> None:
    p = plan(
        FNS
        + """
        flow main(text: str, prefix: str) -> out: str {
            cleaned = strip(text)
            s = summarize(cleaned, prefix)
            out = s + "!"
        }
        """
    )
    g = p.graph
    strip = next(n for n in g.nodes if op(n) == "strip")
    call = only(g, "llm")
    plus = next(n for n in g.nodes if op(n) == "+")
    assert (strip.var, call.var, plus.var) == ("cleaned", "s", "out")
    assert g.g.edges[strip.id, call.id]["var"] == "cleaned"
    assert g.g.edges[call.id, plus.id]["var"] == "s"
    assert g.g.edges[g.inputs[0], strip.id]["var"] == "text"
    assert g.g.edges[g.inputs[1], call.id]["var"] == "prefix"
    assert g.g.edges[plus.id, g.outputs["out"]]["var"] == "out"


def test_repeated_argument_is_one_edge_with_two_ports(plan: MakePlan) -> None:
    p = plan("flow main(t: str) -> out: str {\n    out = t + t\n}\n")
    plus = next(n for n in p.graph.nodes if op(n) == "+")
    assert plus.args == [p.graph.inputs[0]] * 2
    assert p.graph.g.edges[p.graph.inputs[0], plus.id]["ports"] == [0, 1]


def test_shared_value_is_lowered_once(plan: MakePlan) -> None:
    p = plan(
        FNS
        + """
        flow main(text: str) -> a: str, b: str {
            s = summarize(text, "p")
            a = s + "1"
            b = s + "2"
        }
        """
    )
    call = only(p.graph, "llm")
    assert sorted(v for _, v in p.graph.g.out_edges(call.id)) == sorted(
        n.id for n in p.graph.nodes if op(n) == "+"
    )


# ---- expressions ----------------------------------------------------------------------------


@pytest.fixture
def lower_tools(write: Write) -> None:
    write(
        "llmflow_test_lower_tools.py",
        "def count(text):\n    return len(text)\n\n\n"
        "def stats(text):\n    return {'n': 1, 'm': 2}\n",
    )


@pytest.mark.usefixtures("lower_tools")
def test_expression_nodes(plan: MakePlan) -> None:
    p = plan(
        """
        enum Verdict { yes, no }
        record Review { summary: str, score: int }

        extern fn count(text: str) -> int = "llmflow_test_lower_tools:count"
        extern fn stats(text: str) -> n: int, m: int = "llmflow_test_lower_tools:stats"

        flow main(xs: list[str], t: str) -> r: Review, v: Verdict, k: int, f: str, j: int {
            r = Review(summary=xs[0], score=-count(t))
            v = Verdict.no
            k = stats(t).m
            f = format("{a}-{b}", a=t, b="x")
            j = count(t)
        }
        """,
        name="prog.llmflow",
    )
    g = p.graph
    record = output_producer(p, "r")
    assert (record.kind, record.op, record.label, record.names) == (
        "builtin",
        "record",
        "Review",
        ["summary", "score"],
    )
    index, neg = producer(g, record, 0), producer(g, record, 1)
    assert (index.op, index.type) == ("index", STR)
    assert neg.op == "neg" and neg.label == "-"
    extern = producer(g, neg)
    assert (extern.kind, extern.extern, extern.extern_single) == (
        "extern",
        "llmflow_test_lower_tools:count",
        True,
    )
    verdict = output_producer(p, "v")
    assert (verdict.kind, verdict.value) == ("const", "no")
    assert verdict.type == EnumT(name="Verdict", members=("yes", "no"))
    m = output_producer(p, "k")
    stats = producer(g, m)
    assert (m.op, m.field) == ("field", "m")
    assert (stats.kind, stats.extern_single) == ("extern", False)
    fmt = output_producer(p, "f")
    assert (fmt.op, fmt.names) == ("format", ["a", "b"])
    assert [producer(g, fmt, i).kind for i in range(3)] == ["const", "input", "const"]
    count_j = output_producer(p, "j")
    assert (count_j.kind, count_j.label, count_j.var) == ("extern", "count", "j")


def test_omitted_arguments_become_default_constants(plan: MakePlan) -> None:
    p = plan(
        """
        enum Tone { warm, cold }

        fn greet(name: str, tone: Tone = Tone.cold, n: int = -2, tags: list[str] = ["a"])
            -> greeting: str
        \"\"\"
        {{name}} {{tone}} {{n}} {{tags}} {{greeting}}
        \"\"\"

        flow main(name: str, sep: str = ",") -> out: str, parts: list[str] {
            out = greet(name)
            parts = split(name)
        }
        """
    )
    call = only(p.graph, "llm")
    consts = [producer(p.graph, call, i) for i in (1, 2, 3)]
    assert [(c.kind, c.value) for c in consts] == [
        ("const", "cold"),
        ("const", -2),
        ("const", ["a"]),
    ]
    split = next(n for n in p.graph.nodes if op(n) == "split")
    assert producer(p.graph, split, 1).value == "\n"
    assert [(i.name, i.required, i.default) for i in p.inputs] == [
        ("name", True, None),
        ("sep", False, ","),
    ]


# ---- LLM calls ---------------------------------------------------------------------------------


def test_llm_call_segments_outputs_options_and_model(plan: MakePlan) -> None:
    p = plan(
        '''
        model small = local("smollm2-135m")
        model big = openai("gpt-4o-mini", api_key_env="OPENAI_API_KEY")

        enum Verdict { yes, no }
        record Review { summary: str, score: int }

        @model(big)
        @needs(reasoning >= 0.5)
        fn judge(r: Review, style: str = "plain") -> verdict: Verdict, reason: str
        """
        Judge {{r.summary}} in a {{style}} way.
        Verdict: {{verdict | max_tokens=5, stop="\\n", temperature=0}}
        Reason: {{reason | stop=["\\n\\n", "END"]}}
        Again: {{verdict}}
        """

        fn plain(x: str) -> y: str
        """
        {{x}} {{y}}
        """

        flow main(r: Review) -> v: Verdict, y: str {
            v = judge(r).verdict
            y = plain(r.summary)
        }
        '''
    )
    judge = next(n for n in p.calls() if n.label == "judge")
    call = judge.call
    assert call is not None
    assert call.function == "judge"
    assert call.params == ["r", "style"]
    assert call.model == "big" and call.pinned is True
    assert call.needs == {"reasoning": 0.5}
    assert call.segments == [
        Text(text="Judge "),
        Read(input="r", path=["summary"]),
        Text(text=" in a "),
        Read(input="style"),
        Text(text=" way.\nVerdict: "),
        Generate(output="verdict"),
        Text(text="\nReason: "),
        Generate(output="reason"),
        Text(text="\nAgain: "),
        Ref(output="verdict"),
        Text(text="\n"),
    ]
    verdict_type = EnumT(name="Verdict", members=("yes", "no"))
    assert call.outputs == [
        OutputSpec(name="verdict", type=verdict_type, max_tokens=5, stop=["\n"], temperature=0.0),
        OutputSpec(name="reason", type=STR, stop=["\n\n", "END"]),
    ]
    assert judge.type == RecordT(
        name="judge outputs", fields=(("verdict", verdict_type), ("reason", STR))
    )
    plain = next(n for n in p.calls() if n.label == "plain")
    assert plain.call is not None
    assert (plain.call.model, plain.call.pinned, plain.call.needs) == ("small", False, {})
    assert p.default_model == "small"
    assert set(p.models) == {"small", "big"}


def test_default_model_when_none_is_declared(plan: MakePlan) -> None:
    p = plan(
        'fn f(x: str) -> y: float """{{x}} {{y}}"""\n'
        "flow main(x: str) -> y: float {\n    y = f(x)\n}\n"
    )
    (call,) = p.calls()
    assert call.call is not None and call.call.model == "default"
    assert p.default_model == "default"
    assert p.models["default"].id == "smollm2-135m"
    assert p.outputs == {"y": FLOAT}


# ---- the plan as data ------------------------------------------------------------------------


def test_plan_to_json_is_json_serializable(plan: MakePlan) -> None:
    p = plan(
        FNS
        + """
        enum V { a, b }

        flow main(docs: list[str], n: int = 2, v: V = V.a) -> sums: list[str], best: str {
            sums = map d in docs: summarize(d, "p")
            repeat at most 2 with best = "" {
                best = improve(best, first(sums))
            } until len(best) > n
        }
        """
    )
    data = p.to_json()
    text = json.dumps(data)
    back = json.loads(text)
    assert back == data
    assert back["flow"] == "main"
    assert back["file"] == p.file
    assert [i["name"] for i in back["inputs"]] == ["docs", "n", "v"]
    assert back["inputs"][1] == {
        "name": "n",
        "type": {"kind": "prim", "name": "int"},
        "default": 2,
        "required": False,
    }
    assert back["inputs"][2]["default"] == "a"
    assert back["outputs"]["sums"] == {"kind": "list", "item": {"kind": "prim", "name": "str"}}
    assert back["default_model"] == "default"
    graph = back["graph"]
    kinds = [n["kind"] for n in graph["nodes"]]
    assert kinds.count("map") == 1 and kinds.count("loop") == 1
    loop = next(n for n in graph["nodes"] if n["kind"] == "loop")
    assert loop["bodies"] == {"body": f"{loop['id']}/body"}
    assert set(graph["subgraphs"][loop["bodies"]["body"]]["outputs"]) == {"best", "until"}
    assert loop["loop_max"] == 2 and loop["carried"] == ["best"]
    edge = graph["edges"][0]
    assert set(edge) == {"source", "target", "var", "ports"}
    assert set(graph) == {"nodes", "edges", "inputs", "outputs", "subgraphs"}


def test_plan_json_keeps_the_kind_of_every_type(plan: MakePlan) -> None:
    p = plan(
        """
        enum V { a, b }
        fn f(x: str) -> v: V, s: str
        \"\"\"
        {{x}} {{v}} {{s}}
        \"\"\"
        flow main(x: str) -> v: V {
            v = f(x).v
        }
        """
    )
    node = next(n for n in p.to_json()["graph"]["nodes"] if n["kind"] == "llm")
    types = [o["type"] for o in node["call"]["outputs"]]
    assert [t.get("kind") for t in types] == ["enum", "prim"]


# ---- known bugs -----------------------------------------------------------------------------


def test_inlined_flow_lowers_only_the_outputs_used(plan: MakePlan) -> None:
    p = plan(
        FNS
        + """
        flow sub(x: str) -> a: str, b: str {
            a = summarize(x, "a")
            b = improve(x, "b")
        }

        flow main(x: str) -> out: str {
            out = sub(x).a
        }
        """
    )
    assert [n.label for n in p.calls()] == ["summarize"]


def test_default_not_true_is_rejected_or_compiles(write: Write) -> None:
    path = write("prog.llmflow", "flow main(b: bool = not true) -> out: bool {\n    out = b\n}\n")
    try:
        p = compile_file(path)
    except CompileError as err:
        assert err.diagnostics[0].message == "a default value must be a constant"
        return
    assert p.inputs[0].default is False


def test_default_list_with_a_call_is_rejected_or_compiles(write: Write) -> None:
    path = write(
        "prog.llmflow",
        'flow main(xs: list[str] = [upper("a")]) -> out: list[str] {\n    out = xs\n}\n',
    )
    try:
        compile_file(path)
    except CompileError as err:  # reporting it as not a constant is the expected fix
        assert err.diagnostics[0].message == "a default value must be a constant"


# ---- what the checker hands lowering ------------------------------------------------------


def test_the_checker_hands_lowering_its_scope_facts(checked: Callable[..., Checked]) -> None:
    c = checked(
        """
        flow main(n: int, xs: list[str]) -> a: str, b: int, total: int {
            if n > 1 {
                b = 2
                a = "x"
                only_here = 1
            } else {
                a = "y"
                b = 3
            }
            for x in xs with total = 0, seen = "" {
                total = total + len(x)
            }
        }
        """
    )
    flow = c.flow("main")
    assert flow is not None
    if_stmt, loop = flow.decl.body
    assert isinstance(if_stmt, ast.If) and isinstance(loop, ast.Loop)
    assert c.exports(if_stmt) == ["b", "a"]  # the then branch's order; not `only_here`
    nexts = c.next_values(loop)
    assert list(nexts) == ["total"]  # `seen` keeps its value
    assert c.type_of(nexts["total"].value) == INT
    facts = c.call(nexts["total"].value.right)  # type: ignore[attr-defined]
    assert facts.callee.name == "len" and facts.args == [loop.body[0].value.right.args[0]]  # type: ignore[attr-defined]
    with pytest.raises(AssertionError, match="the checker did not type"):
        c.type_of(ast.Name(id="stray", span=if_stmt.span))


def test_a_branch_that_tests_an_optional_reads_it_with_its_present_type(plan: MakePlan) -> None:
    p = plan(
        FNS
        + """
        flow main(text: str, hint: str? = none) -> final: str, again: str? {
            if hint != none {
                final = improve(text, hint)
            } else {
                final = text
            }
            again = hint
        }
        """
    )
    assert_well_formed(p.graph)
    branch = only(p.graph, "branch")
    assert branch.type == RecordT(name="if", fields=(("final", STR),))
    then, orelse = branch.bodies["then"], branch.bodies["else"]
    read = {n.var: n.type for n in then.nodes if n.kind == "input"}
    assert read == {"text": STR, "hint": STR}  # in the graph outside, hint is a str?
    assert [str(n.type) for n in p.graph.nodes if n.var == "hint" and n.kind == "input"] == ["str?"]
    assert [n.type for n in orelse.nodes] == [STR]


def test_a_branch_after_an_and_of_tests_reads_each_tested_name_present(plan: MakePlan) -> None:
    p = plan(
        FNS
        + """
        flow main(text: str?, hint: str?) -> final: str {
            if text != none and hint != none {
                final = improve(text, hint)
            } else {
                final = "nothing"
            }
        }
        """
    )
    then = only(p.graph, "branch").bodies["then"]
    assert {n.var: n.type for n in then.nodes if n.kind == "input"} == {"text": STR, "hint": STR}
