"""Model assignment from a profile: measured scores where they exist, declared skills
where they do not, a quality floor, a budget, and stale entries reported (issue 11)."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import pytest

import llmflow
from llmflow.compiler import profile as profiles
from llmflow.compiler.ir import Plan
from llmflow.compiler.optimizer import optimize
from llmflow.compiler.optimizer.assign_models import solve_floor

MODELS = """
model cheap = openai_compatible("cheap", base_url="http://127.0.0.1:1/v1", price_in=0.1,
                                price_out=0.4, skills={reasoning: 0.3, writing: 0.5})
model mid = openai_compatible("mid", base_url="http://127.0.0.1:1/v1", price_in=1.0,
                              price_out=4.0, skills={reasoning: 0.7, writing: 0.6})
model best = openai_compatible("best", base_url="http://127.0.0.1:1/v1", price_in=10.0,
                               price_out=30.0, skills={reasoning: 0.9, writing: 0.9})
"""

PROGRAM = '''
fn a(x: str) -> y: str
"""{{x}} A: {{y | max_tokens=100}}"""

fn b(x: str) -> y: str
"""{{x}} B: {{y | max_tokens=100}}"""

fn c(x: str) -> y: str
"""{{x}} C: {{y | max_tokens=100}}"""

flow main(x: str) -> out: str {
    out = c(b(a(x)))
}
'''


def compiled(tmp_path: Path, source: str = PROGRAM, models: str = MODELS) -> Plan:
    path = tmp_path / "p.llmflow"
    path.write_text(textwrap.dedent(models + source))
    return llmflow.compile(path, optimize=False)


def score(mean: float, half: float = 0.02, n: int = 200) -> profiles.Score:
    return profiles.Score(mean=mean, low=mean - half, high=mean + half, n=n)


def profile_of(
    plan: Plan, baseline: float, scores: dict[tuple[str, str], float], base_model: str = "cheap"
) -> profiles.Profile:
    hashes = profiles.templates(plan)
    functions: dict[str, dict[str, profiles.Measurement]] = {}
    for (fn, model), mean in scores.items():
        functions.setdefault(fn, {})[model] = profiles.Measurement(
            template=hashes[fn], score=score(mean)
        )
    return profiles.Profile(
        program=profiles.ProgramRef(
            file="p.llmflow", flow=plan.flow, hash=profiles.program_hash(plan)
        ),
        models={name: profiles.model_ref(spec) for name, spec in plan.models.items()},
        baseline=profiles.Baseline(
            assignment={fn: base_model for fn in hashes}, score=score(baseline)
        ),
        functions=functions,
    )


def assigned(plan: Plan) -> dict[str, str]:
    return {n.call.function: n.call.model for n in plan.calls()}


def messages(plan: Plan) -> list[str]:
    return [d.message for d in plan.decisions]


# Baseline: everything on cheap, 0.60. Upgrading a: +0.10 on mid, +0.12 on best;
# b: +0.02 on mid, +0.25 on best; c is measured only on cheap.
SCORES = {
    ("a", "cheap"): 0.60,
    ("a", "mid"): 0.70,
    ("a", "best"): 0.72,
    ("b", "cheap"): 0.60,
    ("b", "mid"): 0.62,
    ("b", "best"): 0.85,
}


def test_explain_says_measured_or_declared(tmp_path: Path) -> None:
    plan = compiled(tmp_path)
    out = optimize(plan, profile=profile_of(plan, 0.60, SCORES))
    assert assigned(out) == {"a": "cheap", "b": "cheap", "c": "cheap"}
    lines = {d.node: d.message for d in out.decisions if d.node}
    a_line = next(m for m in lines.values() if m.startswith("a → "))
    c_line = next(m for m in lines.values() if m.startswith("c → "))
    assert "of 3 measured models (score 0.60 ± 0.02 on 200 rows)" in a_line
    assert c_line.endswith("(not measured); falls back to mid, best") or "(not measured)" in c_line
    assert any(m.startswith("estimated score 0.600") for m in messages(out))


def test_quality_objective_takes_the_best_measured_model(tmp_path: Path) -> None:
    plan = compiled(tmp_path)
    # Declared skills would put both on best; the measurements say mid is better for a.
    scores = {**SCORES, ("a", "mid"): 0.75, ("a", "best"): 0.70}
    out = optimize(plan, objective="quality", profile=profile_of(plan, 0.60, scores))
    assert assigned(out)["a"] == "mid"
    assert assigned(out)["b"] == "best"
    assert assigned(out)["c"] == "best"  # declared: the best skills


@pytest.mark.parametrize("floor", [0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 0.97])
def test_cheapest_assignment_at_a_floor_is_the_brute_force_optimum(
    tmp_path: Path, floor: float
) -> None:
    plan = compiled(tmp_path)
    out = optimize(plan, profile=profile_of(plan, 0.60, SCORES), min_quality=floor)
    evidence = profiles.match(profile_of(plan, 0.60, SCORES), plan)
    dollars: dict[str, dict[str, float]] = {n.call.function: {} for n in out.calls()}
    # The cost of each function on each model, from the plans' own estimates.
    for model in ("cheap", "mid", "best"):
        forced = plan.copy()
        for node in forced.calls():
            node.call.model, node.call.pinned = model, True
        est = optimize(forced)
        for node in est.calls():
            dollars[node.call.function][model] = est.estimates[node.id].dollars
    feasible = []
    for a, b in itertools.product(("cheap", "mid", "best"), repeat=2):
        value = evidence.estimate({"a": a, "b": b, "c": "cheap"})
        assert value is not None
        if value >= floor - 1e-9:
            feasible.append((dollars["a"][a] + dollars["b"][b], a, b))
    got = assigned(out)
    if not feasible:
        assert any("no assignment reaches min_quality" in m for m in messages(out))
        assert (got["a"], got["b"]) == ("best", "best")
        return
    cost, a, b = min(feasible)
    assert dollars["a"][got["a"]] + dollars["b"][got["b"]] == pytest.approx(cost)
    assert got["c"] == "cheap"
    assert any("at or above" in m and "(exact)" in m for m in messages(out))


def test_a_budget_buys_the_best_estimated_score(tmp_path: Path) -> None:
    plan = compiled(tmp_path)
    prof = profile_of(plan, 0.60, SCORES)
    everything = optimize(plan, objective="quality", profile=prof)
    cheapest = optimize(plan, profile=prof)
    assert everything.total and cheapest.total
    budget = cheapest.total.dollars + (everything.total.dollars - cheapest.total.dollars) * 0.5
    out = optimize(plan, objective="quality", profile=prof, budget=budget)
    assert out.total is not None and out.total.dollars <= budget + 1e-12
    # b gains 0.25 on best; a gains most of its 0.12 already on mid.
    assert assigned(out)["b"] == "best"
    assert any("best estimated score within the budget" in m for m in messages(out))


def test_min_quality_without_a_profile_says_it_cannot_apply(tmp_path: Path) -> None:
    out = optimize(compiled(tmp_path), min_quality=0.9)
    assert assigned(out) == {"a": "cheap", "b": "cheap", "c": "cheap"}
    assert any("min_quality 0.9 needs measurements" in m for m in messages(out))


def test_a_changed_template_makes_exactly_its_entries_stale(tmp_path: Path) -> None:
    plan = compiled(tmp_path)
    prof = profile_of(plan, 0.60, {**SCORES, ("a", "best"): 0.99})
    changed = compiled(tmp_path, PROGRAM.replace("A: {{y", "Answer A: {{y"))
    out = optimize(changed, objective="quality", profile=prof)
    stale = [m for m in messages(out) if m.startswith("profile: ")]
    assert any(
        "a on best, a on cheap, a on mid: measured on an earlier template" in m for m in stale
    )
    assert any("templates changed since it was measured" in m for m in stale)
    line = next(m for m in messages(out) if m.startswith("a → "))
    assert "(not measured)" in line  # a's entries are not used
    line = next(m for m in messages(out) if m.startswith("b → "))
    assert "score 0.85" in line  # b's still are


def test_a_changed_model_makes_exactly_its_entries_stale(tmp_path: Path) -> None:
    plan = compiled(tmp_path)
    prof = profile_of(plan, 0.60, SCORES)
    moved = compiled(
        tmp_path,
        models=MODELS.replace(
            '"best", base_url="http://127.0.0.1:1/v1"', '"best", base_url="http://127.0.0.1:2/v1"'
        ),
    )
    out = optimize(moved, objective="quality", profile=prof)
    assert any(
        "model best (openai_compatible:best)" in m and "not used" in m for m in messages(out)
    )
    assert assigned(out)["a"] == "mid"  # best is no longer measured for a
    # a price change is not a model change: it keeps its measurements
    repriced = compiled(tmp_path, models=MODELS.replace("price_in=10.0", "price_in=12.0"))
    out = optimize(repriced, objective="quality", profile=prof)
    assert not [m for m in messages(out) if m.startswith("profile: ")]
    assert assigned(out)["b"] == "best"


def test_a_renamed_model_keeps_its_measurements(tmp_path: Path) -> None:
    plan = compiled(tmp_path)
    prof = profile_of(plan, 0.60, SCORES)
    renamed = compiled(tmp_path, PROGRAM, MODELS.replace("model best", "model top"))
    out = optimize(renamed, objective="quality", profile=prof)
    assert assigned(out)["b"] == "top"
    assert "score 0.85" in next(m for m in messages(out) if m.startswith("b → "))


def test_a_measured_model_meets_a_need_it_is_measured_as_good_as(tmp_path: Path) -> None:
    source = PROGRAM.replace("fn a(", "@needs(reasoning >= 0.6)\nfn a(")
    plan = compiled(tmp_path, source)
    declared = optimize(plan)
    assert assigned(declared)["a"] == "mid"
    # cheap scores as well as mid (within mid's interval): the need is met by measurement.
    prof = profile_of(plan, 0.70, {("a", "cheap"): 0.70, ("a", "mid"): 0.71}, base_model="mid")
    out = optimize(plan, profile=prof)
    assert assigned(out)["a"] == "cheap"
    # measured clearly worse: the need keeps mid
    prof = profile_of(plan, 0.70, {("a", "cheap"): 0.50, ("a", "mid"): 0.71}, base_model="mid")
    assert assigned(optimize(plan, profile=prof))["a"] == "mid"


CHAT_MODELS = """
model small = local("smollm2-135m", skills={reasoning: 0.3, writing: 0.3, extraction: 0.3})
model base = local("gemma3-270m", skills={reasoning: 0.3, writing: 0.3, extraction: 0.3})
"""
CHAT = '''
fn go(x: str) -> y: str
"""
{{x}}
Say what is wrong with it.
{{y | max_tokens=20}}
"""
flow main(x: str) -> y: str { y = go(x) }
'''


def test_a_measurement_lifts_the_chat_turn_rule(tmp_path: Path) -> None:
    plan = compiled(tmp_path, CHAT, CHAT_MODELS)
    assert assigned(optimize(plan, objective="quality")) == {"go": "small"}
    prof = profile_of(plan, 0.40, {("go", "small"): 0.40, ("go", "base"): 0.55}, base_model="small")
    out = optimize(plan, objective="quality", profile=prof)
    assert assigned(out) == {"go": "base"}
    assert "score 0.55 ± 0.02 on 200 rows" in next(
        m for m in messages(out) if m.startswith("go → ")
    )
    # measured equal: the declared model keeps the tie
    prof = profile_of(plan, 0.40, {("go", "small"): 0.40, ("go", "base"): 0.40}, base_model="small")
    assert assigned(optimize(plan, profile=prof)) == {"go": "small"}


def test_latency_with_a_floor_takes_the_fastest_that_reaches_it(tmp_path: Path) -> None:
    plan = compiled(tmp_path, CHAT, CHAT_MODELS)
    prof = profile_of(plan, 0.40, {("go", "small"): 0.40, ("go", "base"): 0.55}, base_model="small")
    out = optimize(plan, objective="latency", profile=prof, min_quality=0.5)
    assert assigned(out) == {"go": "base"}
    out = optimize(plan, objective="latency", profile=prof, min_quality=0.3, inputs={"x": "hi"})
    fastest = optimize(plan, objective="latency", inputs={"x": "hi"})
    assert assigned(out) == assigned(fastest)


def test_the_pass_leaves_its_input_alone(tmp_path: Path) -> None:
    plan = compiled(tmp_path)
    before = plan.to_json()
    prof = profile_of(plan, 0.60, SCORES)
    optimize(plan, profile=prof, min_quality=0.8)
    assert plan.to_json() == before


def test_solve_floor_matches_brute_force() -> None:
    import random

    rng = random.Random(5)
    for _ in range(40):
        items = rng.randint(1, 4)
        weights = [[rng.uniform(0, 3) for _ in range(3)] for _ in range(items)]
        values = [[rng.uniform(-0.2, 0.3) for _ in range(3)] for _ in range(items)]
        need = rng.uniform(-0.2, 0.6)
        found = solve_floor(weights, values, need)
        best = None
        for picks in itertools.product(range(3), repeat=items):
            if sum(values[c][i] for c, i in enumerate(picks)) >= need - 1e-9:
                w = sum(weights[c][i] for c, i in enumerate(picks))
                best = w if best is None else min(best, w)
        if best is None:
            assert found is None
            continue
        assert found is not None
        picks, how = found
        assert how == "exact"
        assert sum(weights[c][i] for c, i in enumerate(picks)) == pytest.approx(best)
        greedy, how = solve_floor(weights, values, need, limit=0) or ([], "")
        assert how == "greedy"
        assert sum(values[c][i] for c, i in enumerate(greedy)) >= need - 1e-9


def test_scores_per_category_say_where_another_model_is_better(tmp_path: Path) -> None:
    plan = compiled(tmp_path)
    prof = profile_of(plan, 0.60, SCORES)
    a = prof.functions["a"]
    by_value = {
        "cheap": {"math": 0.9, "art": 0.3},
        "mid": {"math": 0.5, "art": 0.95},
        "best": {"math": 0.6, "art": 0.7},
    }
    functions = dict(prof.functions)
    functions["a"] = {
        m: e.model_copy(
            update={
                "categories": profiles.Categories(
                    input="x", scores={v: score(s) for v, s in by_value[m].items()}
                )
            }
        )
        for m, e in a.items()
    }
    prof = prof.model_copy(update={"functions": functions})
    out = optimize(plan, profile=prof)
    assert assigned(out)["a"] == "cheap"
    assert any(
        m.startswith("a: by x, measured better elsewhere for art → mid (the rest on cheap)")
        for m in messages(out)
    )


def test_a_floor_over_the_budget_gives_way_to_the_budget(tmp_path: Path) -> None:
    plan = compiled(tmp_path)
    prof = profile_of(plan, 0.60, SCORES)
    floor = optimize(plan, profile=prof, min_quality=0.95)
    assert floor.total is not None
    budget = optimize(plan, profile=prof).total.dollars * 1.5  # type: ignore[union-attr]
    out = optimize(plan, profile=prof, min_quality=0.95, budget=budget)
    assert out.total is not None and out.total.dollars <= budget + 1e-12
    assert any("over the budget of" in m and "the budget wins" in m for m in messages(out))
    assert any("best estimated score within the budget" in m for m in messages(out))


def test_every_call_of_a_measured_function_gets_the_same_model(tmp_path: Path) -> None:
    plan = compiled(tmp_path, PROGRAM.replace("out = c(b(a(x)))", "out = c(b(a(a(x))))"))
    out = optimize(plan, profile=profile_of(plan, 0.60, SCORES), min_quality=0.7)
    models = [n.call.model for n in out.calls() if n.call.function == "a"]
    assert len(models) == 2 and len(set(models)) == 1
    assert any("estimated score" in m for m in messages(out))
