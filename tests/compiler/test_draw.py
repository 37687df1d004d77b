"""Drawing plans: what the DOT source says (no model runs; one test calls Graphviz's dot)."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import llmflow
from llmflow.compiler.draw import draw, render_plan
from llmflow.compiler.ir import BuiltinNode, Plan
from llmflow.compiler.optimizer import optimize
from llmflow.compiler.picture import CRITICAL, DrawError

Make = Callable[..., Plan]

needs_dot = pytest.mark.graphviz("dot")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def make(tmp_path: Path) -> Make:
    """make(source, inputs=None, optimized=True, **options): an optimized plan."""

    def make_(
        source: str, inputs: dict[str, Any] | None = None, optimized: bool = True, **options: Any
    ) -> Plan:
        path = tmp_path / "prog.llmflow"
        path.write_text(textwrap.dedent(source).lstrip("\n"), encoding="utf-8")
        plan = llmflow.compile(path, optimize=False)
        return optimize(plan, inputs=inputs, **options) if optimized else plan

    return make_


# ---- reading DOT source ------------------------------------------------------------------


def node_lines(source: str) -> dict[str, list[str]]:
    """Node id → its declaration lines (one statement per line in graphviz's output)."""
    out: dict[str, list[str]] = {}
    for line in source.splitlines():
        m = re.match(r"\s*(\w+) \[", line)
        if m and m.group(1) not in ("graph", "node", "edge"):
            out.setdefault(m.group(1), []).append(line)
    return out


def edge_line(source: str, src: str, dst: str) -> str:
    found = [line for line in source.splitlines() if re.match(rf"\s*{src} -> {dst}\b", line)]
    assert len(found) == 1, f"{src} -> {dst}: {found}"
    return found[0]


def cluster(source: str, name: str) -> str:
    """The text of `subgraph NAME { … }`, nested clusters included."""
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"subgraph {name} {{")
    indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
    end = next(i for i in range(start + 1, len(lines)) if lines[i] == indent + "}")
    return "\n".join(lines[start : end + 1])


def declares(block: str, node_id: str) -> bool:
    return re.search(rf"^\s*{node_id} \[", block, re.M) is not None


def call_id(plan: Plan, function: str) -> str:
    (node,) = [n for n in plan.calls() if n.call is not None and n.call.function == function]
    return node.id


def title(plan: Plan) -> str:
    """The graph's own label: the title block and the legend."""
    return draw(plan).graph_attr["label"]


# ---- programs ----------------------------------------------------------------------------

QA = '''
fn answer(doc: str, question: str) -> answer: str
"""
Read the document and answer the question in one sentence.

Document:
{{doc}}

Question: {{question}}
{{answer | max_tokens=48}}
"""

fn digest(answers: list[str]) -> digest: str
"""
Answers:
{{answers}}
Summarize them in one sentence. {{digest | max_tokens=40}}
"""

flow main(doc: str, questions: list[str]) -> answers: list[str], digest: str {
    answers = map q in questions: answer(doc, q)
    digest = digest(answers)
}
'''

DOC = "The lighthouse was built in 1871 by the harbour board. " * 30
QUESTIONS = [f"Question {i}?" for i in range(8)]

PIPELINE = '''
model small = local("smollm2-135m")
model base = local("gemma3-270m")
model mini = openai("gpt-4o-mini", price_in=0.15, price_out=0.6)

fn outline(topic: str) -> plan: str
"""
Plan a report on {{topic}}. {{plan | max_tokens=80}}
"""

@model(base)
fn draft(plan: str) -> text: str
"""
{{plan}}

{{text | max_tokens=200}}
"""

fn polish(text: str) -> final: str
"""
Polish this text: {{text}} {{final | max_tokens=200}}
"""

flow main(topic: str) -> final: str, plan: str {
    plan = outline(topic)
    final = polish(draft(plan))
}
'''

TRIAGE = '''
enum Sentiment { positive, negative }

fn classify(review: str) -> sentiment: Sentiment
"""
Review: {{review}}

Is this review positive or negative? {{sentiment}}
"""

fn thank(review: str) -> reply: str
"""
Review: {{review}}

Write a one-sentence thank-you reply. {{reply | max_tokens=40}}
"""

fn apologize(review: str) -> reply: str
"""
Review: {{review}}

Write a one-sentence apology. {{reply | max_tokens=40}}
"""

flow main(review: str) -> action: str {
    if classify(review) == Sentiment.positive {
        action = thank(review)
    } else {
        action = apologize(review)
    }
}
'''

LOOP = '''
fn refine(previous: str, piece: str) -> summary: str
"""
Summary so far: {{previous}}
Next part: {{piece}}
New summary: {{summary | max_tokens=60}}
"""

flow main(pieces: list[str]) -> summary: str, shorter: str {
    for piece in pieces with summary = "" {
        summary = refine(summary, piece)
    }
    repeat at most 3 with shorter = summary {
        shorter = refine(shorter, "Make it shorter.")
    } until len(shorter) < 100
}
'''


# ---- the picture -------------------------------------------------------------------------


def test_one_node_per_call_and_a_map_is_one_node_with_its_count(make: Make) -> None:
    plan = make(QA, inputs={"doc": DOC, "questions": QUESTIONS})
    source = draw(plan).source
    nodes = node_lines(source)
    for call in plan.calls():
        assert len(nodes[call.id]) == 1, call.label  # drawn once, not once per item
    (map_node,) = [n for n in plan.graph.nodes if n.kind == "map"]
    assert len(nodes[map_node.id]) == 1
    label = nodes[map_node.id][0]
    assert "map q in questions" in label and "×8" in label
    # The body is a cluster around the map node and its call.
    body = cluster(source, f"cluster_{map_node.id}")
    assert declares(body, map_node.id) and declares(body, call_id(plan, "answer"))


def test_top_level_calls_each_drawn_once(make: Make) -> None:
    plan = make(PIPELINE, inputs={"topic": "lighthouses"})
    nodes = node_lines(draw(plan).source)
    top = [n.id for n in plan.graph.nodes if n.kind == "llm"]
    assert len(top) == 3
    assert all(len(nodes[i]) == 1 for i in top)


def test_unknown_map_size_is_marked_as_assumed(make: Make) -> None:
    plan = make(QA, inputs={"doc": DOC})
    (map_node,) = [n for n in plan.graph.nodes if n.kind == "map"]
    label = node_lines(draw(plan).source)[map_node.id][0]
    assert "×4 (assumed)" in label


def test_call_label_has_function_model_tokens_cost_and_instances(make: Make) -> None:
    plan = make(QA, inputs={"doc": DOC, "questions": QUESTIONS})
    answer = call_id(plan, "answer")
    label = node_lines(draw(plan).source)[answer][0]
    est = plan.estimates[answer]
    assert "<B>answer</B>" in label and "default · ×8" in label
    assert f"out {est.output_tokens:.0f}" in label and "in " in label and "cached" in label
    assert "free" in label  # the embedded model costs nothing


def test_legend_lists_every_assigned_model_in_its_colour(make: Make) -> None:
    plan = make(PIPELINE, inputs={"topic": "lighthouses"})
    source = draw(plan).source
    legend = title(plan)
    nodes = node_lines(source)
    assigned = {n.call.model for n in plan.calls() if n.call is not None}
    assert assigned == {"small", "base"}
    for call in plan.calls():
        assert call.call is not None
        fill = re.search(r'fillcolor="(#[0-9A-Fa-f]{6})"', nodes[call.id][0])
        assert fill, nodes[call.id][0]
        # The legend row of the call's model starts with a swatch of the same colour.
        row = re.search(
            rf'BGCOLOR="{fill.group(1)}"[^>]*></TD><TD[^>]*><FONT[^>]*><B>(\w+)', legend
        )
        assert row and row.group(1) == call.call.model
    assert "local gemma3-270m" in legend and "free" in legend
    # A declared model nothing runs on is listed, with its price, as not assigned.
    assert "mini" in legend and "$0.15 in · $0.60 out" in legend and "not assigned" in legend


def test_title_has_flow_totals_and_objective(make: Make) -> None:
    plan = make(QA, inputs={"doc": DOC, "questions": QUESTIONS}, objective="latency")
    head = title(plan)
    assert "<B>main</B>" in head and "prog.llmflow" in head
    assert "9 calls" in head and "$0" in head and "estimated makespan" in head
    assert "objective: <B>latency</B>" in head


def test_prefix_groups_are_clusters_around_their_calls(make: Make) -> None:
    plan = make(QA, inputs={"doc": DOC, "questions": QUESTIONS})
    assert plan.groups, "the answers share the document"
    source = draw(plan).source
    for group in plan.groups:
        block = cluster(source, f"cluster_{group.id}")
        assert f"prefix group {group.id}" in block and "style=" in block and "dashed" in block
        for call in group.calls:
            assert declares(block, call)


def test_a_group_that_fills_a_branch_holds_the_branch_cluster(make: Make) -> None:
    plan = make(TRIAGE, inputs={"review": "Lovely. " * 80})
    (group,) = [g for g in plan.groups if len(g.calls) == 3]
    (branch,) = [n for n in plan.graph.nodes if n.kind == "branch"]
    source = draw(plan).source
    block = cluster(source, f"cluster_{group.id}")
    assert declares(block, call_id(plan, "classify"))
    assert f"subgraph cluster_{branch.id} {{" in block
    for key, function in (("then", "thank"), ("else", "apologize")):
        assert declares(cluster(block, f"cluster_{branch.id}_{key}"), call_id(plan, function))
    # The condition is folded into the branch node; the call feeding it draws the edge.
    assert "<B>if</B> classify == positive" in node_lines(source)[branch.id][0]
    assert 'label="  classify"' in edge_line(source, call_id(plan, "classify"), branch.id)


SHARED_DOC = '''
fn answer(doc: str, question: str) -> answer: str
"""
Document:
{{doc}}
Question: {{question}} {{answer | max_tokens=20}}
"""

fn count(doc: str, word: str) -> n: int
"""
Document:
{{doc}}
How often does {{word}} appear? {{n}}
"""

fn shorten(text: str) -> short: str
"""
Shorten: {{text}} {{short | max_tokens=5}}
"""
'''


def test_a_group_across_subgraphs_holds_their_clusters(make: Make) -> None:
    source = (
        SHARED_DOC
        + """
    flow main(doc: str, qs: list[str], words: list[str]) -> a: list[str], b: list[int] {
        a = map q in qs: answer(doc, q)
        b = map w in words: count(doc, w)
    }
    """
    )
    plan = make(source, inputs={"doc": DOC, "qs": ["x?", "y?"], "words": ["lighthouse"]})
    group = plan.group_of(call_id(plan, "answer"))
    assert group is not None and call_id(plan, "count") in group.calls
    dot = draw(plan).source
    block = cluster(dot, f"cluster_{group.id}")
    for node in plan.graph.nodes:
        if node.kind == "map":  # each map holds only calls of the group
            assert f"subgraph cluster_{node.id} {{" in block


def test_a_group_across_subgraphs_with_other_calls_tags_its_calls(make: Make) -> None:
    source = (
        SHARED_DOC
        + """
    flow main(doc: str, qs: list[str], words: list[str]) -> a: list[str], b: list[int] {
        a = map q in qs: shorten(answer(doc, q))
        b = map w in words: count(doc, w)
    }
    """
    )
    plan = make(source, inputs={"doc": DOC, "qs": ["x?", "y?"], "words": ["lighthouse"]})
    answer, count = call_id(plan, "answer"), call_id(plan, "count")
    group = plan.group_of(answer)
    assert group is not None and count in group.calls
    assert call_id(plan, "shorten") not in group.calls
    dot = draw(plan).source
    nodes = node_lines(dot)
    # A cluster cannot hold part of a map's body and part of another's: the calls say it.
    assert f"cluster_{group.id}" not in dot
    assert f"prefix group {group.id}" in nodes[answer][0]
    assert f"prefix group {group.id}" in nodes[count][0]


def test_critical_path_edges_and_nodes_are_styled(make: Make) -> None:
    plan = make(PIPELINE, inputs={"topic": "lighthouses"})
    source = draw(plan).source
    outline, draft, polish = (call_id(plan, f) for f in ("outline", "draft", "polish"))
    assert [n for n in plan.critical_path if n in (outline, draft, polish)] == [
        outline,
        draft,
        polish,
    ]
    for src, dst in ((outline, draft), (draft, polish)):
        line = edge_line(source, src, dst)
        assert f'color="{CRITICAL}"' in line and "penwidth=2.5" in line
    for node in (outline, draft, polish):
        assert f'color="{CRITICAL}"' in node_lines(source)[node][0]
    # `plan` also goes to an output, off the critical path.
    plan_out = plan.graph.outputs["plan"]
    assert CRITICAL not in edge_line(source, outline, plan_out)


def test_edges_carry_the_variable_names(make: Make) -> None:
    plan = make(PIPELINE, inputs={"topic": "lighthouses"})
    source = draw(plan).source
    outline, draft, polish = (call_id(plan, f) for f in ("outline", "draft", "polish"))
    assert 'label="  plan"' in edge_line(source, outline, draft)
    assert 'label="  draft"' in edge_line(source, draft, polish)  # no variable: the call's name
    topic = plan.graph.inputs[0]
    assert 'label="  topic"' in edge_line(source, topic, outline)
    assert "fontsize=8" in source  # edge labels are small (the edge default)


def test_values_from_outside_a_map_go_straight_to_the_calls_that_read_them(make: Make) -> None:
    plan = make(QA, inputs={"doc": DOC, "questions": QUESTIONS})
    source = draw(plan).source
    doc, questions = plan.graph.inputs
    (map_node,) = [n for n in plan.graph.nodes if n.kind == "map"]
    answer, digest = call_id(plan, "answer"), call_id(plan, "digest")
    assert 'label="  doc"' in edge_line(source, doc, answer)
    assert 'label="  questions"' in edge_line(source, questions, map_node.id)
    assert 'label="  q"' in edge_line(source, map_node.id, answer)
    assert 'label="  answers"' in edge_line(source, answer, digest)  # out of the map


def test_loops_are_clusters_with_their_bounds_and_next_values(make: Make) -> None:
    plan = make(LOOP, inputs={"pieces": ["a", "b", "c"]})
    source = draw(plan).source
    nodes = node_lines(source)
    loops = [n for n in plan.graph.nodes if n.kind == "loop"]
    assert len(loops) == 2
    for_loop, repeat = loops
    assert "for piece in pieces" in nodes[for_loop.id][0] and "×3" in nodes[for_loop.id][0]
    assert (
        "≤ 3 times" in nodes[repeat.id][0]
        and "until len(shorter) &lt; 100" in (nodes[repeat.id][0])
    )
    for loop in loops:
        (call,) = [n for n in loop.bodies["body"].nodes if n.kind == "llm"]
        block = cluster(source, f"cluster_{loop.id}")
        assert declares(block, loop.id) and declares(block, call.id)
        back = edge_line(source, call.id, loop.id)
        assert "(next)" in back and "dashed" in back and "constraint=false" in back


def test_a_repeat_over_an_int_value_shows_its_bound(make: Make) -> None:
    """The count's value when the plan knows it, else its name and what was assumed; the
    count comes in as an edge from the value it reads."""
    program = LOOP.replace("repeat at most 3", "repeat at most rounds").replace(
        "flow main(pieces: list[str])", "flow main(pieces: list[str], rounds: int)"
    )
    for inputs, shown in (
        ({"rounds": 2}, "≤ 2 times (rounds)"),
        ({}, "≤ rounds times (4 assumed)"),
    ):
        plan = make(program, inputs=inputs)
        source = draw(plan).source
        repeat = [n for n in plan.graph.nodes if n.kind == "loop"][1]
        assert shown in node_lines(source)[repeat.id][0]
        assert "↻ repeat<" in node_lines(source)[repeat.id][0]
        rounds = plan.graph.inputs[1]
        assert 'label="  rounds"' in edge_line(source, rounds, repeat.id)


def test_a_map_over_a_constant_inside_a_loop_shows_its_count(make: Make) -> None:
    """`sample 3` in a loop's body runs 3 items each iteration: drawn as ×3, as estimated,
    not as an assumed count."""
    program = LOOP.replace(
        'shorter = refine(shorter, "Make it shorter.")',
        'tries = sample 3: refine(shorter, "Make it shorter.")\n        shorter = first(tries)',
    )
    plan = make(program, inputs={"pieces": ["a", "b"]})
    (sample,) = [n for n in plan.graph.walk() if n.label == "sample 3: refine"]
    label = node_lines(draw(plan).source)[sample.id][0]
    assert "×3" in label and "assumed" not in label


def test_inputs_outputs_and_builtins_look_different(make: Make) -> None:
    source = '''
    fn shout(text: str) -> loud: str
    """
    Shout: {{text}} {{loud | max_tokens=10}}
    """

    flow main(words: list[str]) -> out: str, n: int {
        out = shout(join(words, " "))
        n = len(words)
    }
    '''
    plan = make(source, inputs={"words": ["a", "b"]})
    nodes = node_lines(draw(plan).source)
    by_kind = {n.kind: n.id for n in plan.graph.nodes if n.kind in ("input", "output")}
    assert "shape=cds" in nodes[by_kind["input"]][0] and "2 items" in nodes[by_kind["input"]][0]
    assert "peripheries=2" in nodes[by_kind["output"]][0]
    (join,) = [n for n in plan.graph.nodes if isinstance(n, BuiltinNode) and n.op == "join"]
    assert "fontsize=9" in nodes[join.id][0] and "#EEEEEE" in nodes[join.id][0]
    assert not [n for n in plan.graph.nodes if n.kind == "const" and n.id in nodes]


def test_labels_are_escaped(make: Make) -> None:
    source = '''
    fn answer(doc: str, q: str) -> a: str
    """
    <doc> & "quotes" {{doc}}
    Q: {{q}} {{a | max_tokens=5}}
    """

    flow main(doc: str, qs: list[str]) -> a: list[str] {
        a = map q in qs: answer(doc, q)
    }
    '''
    plan = make(source, inputs={"doc": "x < y && y > z " * 40, "qs": ["1", "2"]})
    dot = draw(plan).source
    assert plan.groups
    assert "&lt;doc&gt; &amp; &quot;quotes&quot;" in dot
    assert "<doc>" not in dot


def test_an_unoptimized_plan_draws_without_estimates(make: Make) -> None:
    plan = make(PIPELINE, optimized=False)
    source = draw(plan).source
    assert "not optimized (-O0)" in title(plan)
    assert all(len(node_lines(source)[c.id]) == 1 for c in plan.calls())
    assert not plan.critical_path and CRITICAL not in source
    # The legend counts the program's calls and says it estimated nothing.
    legend = title(plan)
    assert "estimated use" not in legend and "not estimated" in legend
    assert "2 calls in the program" in legend and "1 call in the program" in legend


# ---- files -------------------------------------------------------------------------------


@needs_dot
def test_svg_renders_through_dot(make: Make, tmp_path: Path) -> None:
    plan = make(TRIAGE, inputs={"review": "Lovely & <cheap>."})
    path = render_plan(plan, tmp_path / "plan.svg")
    assert path == tmp_path / "plan.svg"
    head = path.read_text(encoding="utf-8")[:200].lstrip()
    assert head.startswith("<?xml") or head.startswith("<svg")
    assert "<svg" in path.read_text(encoding="utf-8")


@needs_dot
def test_png_renders_through_dot(make: Make, tmp_path: Path) -> None:
    plan = make(LOOP, inputs={"pieces": ["a"]})
    path = render_plan(plan, tmp_path / "plan.PNG")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dot_suffix_writes_the_source(make: Make, tmp_path: Path) -> None:
    plan = make(QA, inputs={"doc": DOC, "questions": QUESTIONS})
    path = render_plan(plan, tmp_path / "plan.dot")
    assert path.read_text(encoding="utf-8") == draw(plan).source
    assert path.read_text(encoding="utf-8").startswith("digraph main {")


@pytest.mark.parametrize("name", ["plan.jpeg", "plan", "plan.svg.txt"])
def test_unknown_suffix_is_an_error(make: Make, tmp_path: Path, name: str) -> None:
    plan = make(PIPELINE)
    with pytest.raises(ValueError, match=r"\.svg, \.png, \.pdf, \.dot"):
        render_plan(plan, tmp_path / name)
    with pytest.raises(DrawError):
        render_plan(plan, tmp_path / name)
    assert not (tmp_path / name).exists()


def test_the_big_example_draws_every_call_once() -> None:
    notes = (ROOT / "examples/data/lighthouse.txt").read_text(encoding="utf-8")
    sections = ["History", "Construction", "The lens", "Keepers", "Storms", "Automation", "Today"]
    plan = llmflow.compile(
        ROOT / "examples/research_report.llmflow",
        inputs={"notes": notes, "sections": sections, "questions": ["Who?", "When?", "Why?"]},
    )
    assert plan.total is not None and 40 <= plan.total.instances <= 60
    source = draw(plan).source
    nodes = node_lines(source)
    assert all(len(nodes[c.id]) == 1 for c in plan.calls())
    legend = title(plan)
    assert all(m in legend for m in ("small", "base", "mini"))
    for group in plan.groups:
        assert f"cluster_{group.id}" in source or any(
            f"prefix group {group.id}" in nodes[c][0] for c in group.calls
        )


@needs_dot
def test_plan_command_draws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmflow.cli import main

    monkeypatch.chdir(ROOT)
    out = tmp_path / "qa.svg"
    questions = '["Who built it?", "When?"]'
    args = ["plan", "examples/qa_over_doc.llmflow", "-i", "doc=@examples/data/lighthouse.txt"]
    assert main([*args, "-i", f"questions={questions}", "-o", str(out)]) == 0
    assert "<svg" in out.read_text(encoding="utf-8")


def test_a_hosted_model_without_a_price_is_not_called_free(make: Make) -> None:
    source = '''
    model hosted = openai_compatible("some-model", base_url="http://localhost:8000/v1")

    fn hi(name: str) -> greeting: str
    """
    Greet {{name}}. {{greeting | max_tokens=10}}
    """

    flow main(name: str) -> greeting: str {
        greeting = hi(name)
    }
    '''
    plan = make(source, inputs={"name": "Ada"})
    assert "unknown" in title(plan)
    assert "$ unknown" in node_lines(draw(plan).source)[call_id(plan, "hi")][0]


HOSTED = '''
model hosted = openai_compatible("some-model", base_url="http://localhost:8000/v1"{options})

fn hi(name: str) -> greeting: str
"""
Greet {{{{name}}}}. {{{{greeting | max_tokens=10}}}}
"""

flow main(name: str) -> greeting: str {{
    greeting = hi(name)
}}
'''


def test_a_model_with_half_its_price_is_not_priced(make: Make) -> None:
    """The optimizer counts a price that is missing as free and a budget refuses the
    model: the picture says which side is unknown, and no dollars for its calls."""
    plan = make(HOSTED.format(options=", price_in=0.5"), inputs={"name": "Ada"})
    assert "$0.50 in · out unknown (counted as free)" in title(plan)
    assert "$ unknown" in node_lines(draw(plan).source)[call_id(plan, "hi")][0]


def test_what_is_free_comes_from_the_backend_capabilities(make: Make) -> None:
    """A backend kind that declares its calls free is drawn free, whatever its name."""
    plan = make(HOSTED.format(options=""), inputs={"name": "Ada"})
    spec = plan.models["hosted"]
    free = spec.capabilities.model_copy(update={"free": True})
    plan.models["hosted"] = spec.model_copy(update={"capabilities": free})
    label = node_lines(draw(plan).source)[call_id(plan, "hi")][0]
    assert "free" in label and "unknown" not in label
    assert "unknown" not in title(plan)


def test_an_input_known_to_be_none_says_none(make: Make) -> None:
    source = """
    flow main(nick: str? = none) -> out: str {
        out = nick ?? "anon"
    }
    """
    plan = make(source)
    (nick,) = [n for n in plan.graph.nodes if n.kind == "input"]
    label = node_lines(draw(plan).source)[nick.id][0]
    assert ">none<" in label and "None" not in label
