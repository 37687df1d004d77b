"""`sample n: f(x)`: n samples of one call, lowered to a map over range(n) whose call is
sampled, so the optimizer counts n instances that share one prefix group."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from llmflow.compiler import compile_file
from llmflow.compiler.check import SAMPLE_TEMPERATURE
from llmflow.compiler.diagnostics import Diagnostic
from llmflow.compiler.draw import draw
from llmflow.compiler.ir import ConstNode, LLMNode, MapNode, Plan
from llmflow.compiler.optimizer import optimize
from llmflow.compiler.types import STR, ListT

DOC = " ".join(f"Fact {i}: the value of item {i} is {i * 7}." for i in range(20))

SOLVE = f'''
const N = 4

fn solve(q: str) -> a: str
"""
{DOC}
Question: {{{{q}}}}
Answer: {{{{a | max_tokens=8}}}}
"""

fn hot(q: str) -> a: str
"""{{{{q}}}} {{{{a | temperature=1.3}}}}"""
'''

RATE = '''
fn rate(q: str, a: str) -> score: int
"""{{q}} {{a}} Score it from 1 to 9: {{score | max_tokens=2}}"""
'''


def test_a_sample_is_a_map_over_range_n_with_a_sampled_call(plan: Callable[..., Plan]) -> None:
    p = plan(
        SOLVE
        + """
flow main(q: str) -> xs: list[str], ys: list[str] {
    xs = sample N: solve(q)
    ys = sample 3: hot(q)
}
"""
    )
    maps = {n.label: n for n in p.graph.nodes if isinstance(n, MapNode)}
    assert set(maps) == {"sample 4: solve", "sample 3: hot"}
    xs = maps["sample 4: solve"]
    indices = p.graph.node(xs.args[0])
    assert isinstance(indices, ConstNode) and indices.value == [0, 1, 2, 3]
    assert xs.type == ListT(item=STR)
    (call,) = [n for n in xs.body.nodes if isinstance(n, LLMNode)]
    assert call.call.outputs[0].temperature == SAMPLE_TEMPERATURE
    (hot,) = [n for n in maps["sample 3: hot"].body.nodes if isinstance(n, LLMNode)]
    assert hot.call.outputs[0].temperature == 1.3  # an output's own temperature is kept


def test_an_output_that_says_temperature_0_stays_greedy_in_a_sample(
    plan: Callable[..., Plan],
) -> None:
    """Only outputs that set no temperature draw at SAMPLE_TEMPERATURE: a greedy follow-up
    of a sampled answer stays greedy (it differs anyway: its prompt holds the sample)."""
    p = plan(
        """
fn explain(q: str) -> a: str, why: str
\"\"\"
{{q}} {{a}} Why? {{why | temperature=0}}
\"\"\"

flow main(q: str) -> n: int {
    xs = sample 3: explain(q)
    n = len(xs)
}
"""
    )
    (call,) = [n for n in p.calls()]
    assert [o.temperature for o in call.call.outputs] == [SAMPLE_TEMPERATURE, 0]


def test_samples_count_in_estimates_and_share_one_prefix_group(
    plan: Callable[..., Plan],
) -> None:
    p = optimize(
        plan(
            SOLVE
            + """
flow main(q: str) -> xs: list[str] {
    xs = sample N: solve(q)
}
"""
        )
    )
    (node,) = p.calls()
    assert p.estimates[node.id].instances == 4
    (group,) = p.groups
    assert group.calls == [node.id] and group.instances == 4
    assert any("sample 4: solve runs 4 items" in d.message for d in p.decisions)


def test_a_map_over_samples_runs_once_per_sample_in_estimates_and_pictures(
    plan: Callable[..., Plan],
) -> None:
    p = optimize(
        plan(
            SOLVE
            + RATE
            + """
flow main(q: str) -> scores: list[int] {
    answers = sample 5: solve(q)
    scores = [rate(q, a) for a in answers]
}
"""
        )
    )
    rate = next(n for n in p.calls() if n.label == "rate")
    assert p.estimates[rate.id].instances == 5  # not the 4 of a list not known
    said = [d.message for d in p.decisions]
    assert any("runs 5 items, one per result of sample 5: solve" in m for m in said)
    assert not any("estimates assume" in m for m in said)
    scores = next(n for n in p.graph.nodes if isinstance(n, MapNode) and "sample" not in n.label)
    assert p.known_length(scores.id) == 5 and p.known_length(scores.args[0]) == 5


def test_inside_a_loop_a_map_over_samples_runs_once_per_sample_but_a_filter_may_drop(
    plan: Callable[..., Plan],
) -> None:
    """In a loop's body too; the results of a filtered comprehension are not counted as
    many as its list (how many pass is not known)."""
    p = optimize(
        plan(
            SOLVE
            + RATE
            + """
fn again(q: str, a: str) -> score: int
\"\"\"{{q}} {{a}} Again, from 1 to 9: {{score | max_tokens=2}}\"\"\"

flow main(q: str) -> best: int {
    repeat at most 2 with best = 0 {
        answers = sample 3: solve(q)
        scores = [rate(q, a) for a in answers]
        kept = [a for a in answers if len(a) > 2]
        rescored = [again(q, a) for a in kept]
        best = max(best, len(scores) + len(rescored))
    }
}
"""
        )
    )
    counts = {n.label: p.estimates[n.id].instances for n in p.calls()}
    assert counts == {"solve": 6, "rate": 6, "again": 8}  # again: 4 assumed per iteration
    (loop,) = [n for n in p.graph.nodes if n.kind == "loop"]
    source = draw(p).source
    (judged,) = [
        n
        for n in loop.body.nodes
        if isinstance(n, MapNode) and any(c.label == "rate" for c in n.body.nodes)
    ]
    assert "×3" in source.split(f"{judged.id} [")[1].split("\n")[0]


def test_a_filtered_list_of_samples_has_no_known_length(plan: Callable[..., Plan]) -> None:
    p = optimize(
        plan(
            SOLVE
            + """
flow main(q: str) -> kept: list[str] {
    answers = sample 5: solve(q)
    kept = [a for a in answers if len(a) > 2]
}
"""
        )
    )
    kept = next(n for n in p.graph.nodes if isinstance(n, MapNode) and "sample" not in n.label)
    assert p.known_length(kept.args[0]) == 5 and p.known_length(kept.id) is None


def test_samples_of_a_greedy_call_are_not_merged_with_it(plan: Callable[..., Plan]) -> None:
    p = optimize(
        plan(
            SOLVE
            + """
flow main(q: str) -> xs: list[str], x: str {
    xs = sample 2: solve(q)
    x = solve(q)
}
"""
        )
    )
    temperatures = sorted(n.call.outputs[0].temperature or 0 for n in p.calls())
    assert temperatures == [0, SAMPLE_TEMPERATURE]


def test_the_count_is_a_positive_constant_at_most_max_samples(
    diagnostics: Callable[..., list[Diagnostic]],
) -> None:
    diags = diagnostics(
        SOLVE
        + """
flow main(q: str, n: int) -> a: list[str], b: list[str], c: list[str], d: list[int] {
    a = sample -1: solve(q)
    b = sample 101: solve(q)
    c = sample n: solve(q)
    d = sample 2: len(q)
}
"""
    )
    assert [(d.kind, d.message.split(":")[0]) for d in diags] == [
        ("type", "the number of samples must be a positive integer constant"),
        ("limit", "too many samples"),
        ("type", "the number of samples must be a positive integer constant"),
        ("type", "sample draws from a call of a semantic function (fn)"),
    ]


def test_the_stdlib_consistency_module_compiles_to_one_group_of_samples(
    write: Callable[[str, str], Path],
) -> None:
    path = write(
        "prog.llmflow",
        """
import consistency

flow main(q: str) -> a: str {
    a = consistent_answer(q).answer
}
""",
    )
    p = optimize(compile_file(path))
    (node,) = p.calls()
    assert node.label == "reason" and p.estimates[node.id].instances == 5
    (group,) = p.groups
    assert group.instances == 5


def test_a_plan_with_samples_and_a_system_section_reads_back_from_json(
    plan: Callable[..., Plan],
) -> None:
    p = optimize(
        plan(
            SOLVE
            + '''
fn framed(q: str) -> a: str
"""{% system %}Be brief.{% end %}{{q}} {{a}}"""

flow main(q: str) -> xs: list[str], f: str {
    xs = sample N: solve(q)
    f = framed(q)
}
'''
        )
    )
    data = p.to_json()
    assert '"kind": "system"' in json.dumps(data)
    assert Plan.from_json(json.dumps(data)).to_json() == data


def test_a_sample_and_a_map_over_it_inside_a_loop_count_exactly(
    plan: Callable[..., Plan],
) -> None:
    p = optimize(
        plan(
            SOLVE
            + RATE
            + """
flow main(q: str) -> path: str {
    repeat at most 2 with path = "" {
        ideas = sample 3: solve(q + path)
        scores = map i in ideas: rate(q, i)
        path = path + best_of(ideas, scores)
    }
}
"""
        )
    )
    assert p.total is not None and p.total.instances == 12  # 2 × (3 samples + 3 ratings)
    said = [d.message for d in p.decisions]
    assert "map i in ideas runs 3 items, one per result of sample 3: solve" in said
