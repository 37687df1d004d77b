"""The multiple-choice knapsack behind model assignment under a budget."""

from __future__ import annotations

import itertools
import random

from llmflow.compiler.optimizer.assign_models import Option, solve_budget


def brute_force(choices, values, budget):
    best, best_value = None, float("-inf")
    for picks in itertools.product(*(range(len(c)) for c in choices)):
        cost = sum(choices[c][i].dollars for c, i in enumerate(picks))
        value = sum(values[c][i] for c, i in enumerate(picks))
        if cost <= budget + 1e-12 and value > best_value:
            best, best_value = picks, value
    return best, best_value


def random_instance(rng: random.Random, calls: int, models: int):
    choices, values = [], []
    for _ in range(calls):
        opts = [
            Option(f"m{j}", rng.uniform(0, 1), 1.0, rng.uniform(0, 1), True) for j in range(models)
        ]
        choices.append(opts)
        values.append([o.quality for o in opts])
    return choices, values


def test_exact_solver_matches_brute_force() -> None:
    rng = random.Random(7)
    for _ in range(30):
        choices, values = random_instance(rng, calls=5, models=4)
        budget = rng.uniform(0.5, 3.0)
        cheapest = sum(min(o.dollars for o in c) for c in choices)
        if cheapest > budget:
            continue
        picks, how = solve_budget(choices, values, budget)
        assert how == "exact"
        _, best = brute_force(choices, values, budget)
        got = sum(values[c][i] for c, i in enumerate(picks))
        assert got == best
        assert sum(choices[c][i].dollars for c, i in enumerate(picks)) <= budget + 1e-9


def test_greedy_solver_respects_the_budget_and_its_bound() -> None:
    rng = random.Random(3)
    choices, values = random_instance(rng, calls=8, models=5)
    budget = 3.0
    picks, how = solve_budget(choices, values, budget, exact_limit=1)
    assert how.startswith("greedy")
    spent = sum(choices[c][i].dollars for c, i in enumerate(picks))
    assert spent <= budget + 1e-9
    _, best = brute_force(choices, values, budget)
    got = sum(values[c][i] for c, i in enumerate(picks))
    gap = float(how.rsplit("at most ", 1)[1].split(" ")[0])
    assert got <= best <= got + gap + 1e-9


# ---- the pass, on programs -------------------------------------------------------------

import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import llmflow  # noqa: E402
from llmflow.compiler.ir import Plan  # noqa: E402
from llmflow.compiler.optimizer import optimize  # noqa: E402

MODELS = """
model cheap = openai_compatible("cheap", base_url="http://127.0.0.1:1/v1", price_in=0.1,
                                price_out=0.4, context=4096, skills={reasoning: 0.3, writing: 0.5})
model mid = openai_compatible("mid", base_url="http://127.0.0.1:1/v1", price_in=1.0,
                              price_out=4.0, context=32000, skills={reasoning: 0.7, writing: 0.6})
model best = openai_compatible("best", base_url="http://127.0.0.1:1/v1", price_in=10.0,
                               price_out=30.0, context=128000,
                               skills={reasoning: 0.9, writing: 0.9})
"""


def plan_of(tmp_path: Path, source: str, **options) -> Plan:
    path = tmp_path / "p.llmflow"
    path.write_text(textwrap.dedent(MODELS + source))
    return optimize(llmflow.compile(path, optimize=False), **options)


def models_of(plan: Plan) -> dict[str, str]:
    return {n.label: n.call.model for n in plan.calls()}


FNS = '''
fn plain(x: str) -> y: str
"""{{x}} {{y | max_tokens=100}}"""

@needs(reasoning >= 0.6)
fn think(x: str) -> y: str
"""{{x}} {{y | max_tokens=100}}"""

@needs(reasoning >= 0.95)
fn genius(x: str) -> y: str
"""{{x}} {{y | max_tokens=100}}"""

@model(best)
fn pinned(x: str) -> y: str
"""{{x}} {{y | max_tokens=100}}"""
'''


def test_cheapest_model_that_meets_the_needs(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        FNS
        + """
    flow main(x: str) -> a: str, b: str, c: str {
        a = plain(x)
        b = think(x)
        c = pinned(x)
    }
    """,
    )
    assert models_of(plan) == {"plain": "cheap", "think": "mid", "pinned": "best"}


def test_no_qualifying_model_takes_the_closest_and_says_how_short(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        FNS
        + """
    flow main(x: str) -> a: str { a = genius(x) }
    """,
    )
    assert models_of(plan) == {"genius": "best"}
    messages = [d.message for d in plan.decisions]
    assert any("no model meets reasoning >= 0.95" in m and "short by 0.05" in m for m in messages)


def test_context_length_rules_out_small_models(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        FNS
        + """
    flow main(x: str) -> a: str { a = plain(x) }
    """,
        inputs={"x": "word " * 20000},
    )  # ~25k tokens: beyond cheap's 4096
    assert models_of(plan) == {"plain": "mid"}


def test_quality_objective_buys_the_best(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        FNS
        + """
    flow main(x: str) -> a: str { a = plain(x) }
    """,
        objective="quality",
    )
    assert models_of(plan) == {"plain": "best"}


def test_quality_under_a_budget_spends_it_where_it_matters(tmp_path: Path) -> None:
    source = (
        FNS
        + """
    flow main(x: str) -> a: str, b: str {
        first = plain(x)
        a = plain(first)
        b = plain(first + "!")
    }
    """
    )
    unlimited = plan_of(tmp_path, source, objective="quality")
    assert unlimited.total is not None
    cheapest = plan_of(tmp_path, source)
    assert cheapest.total is not None
    budget = cheapest.total.dollars + (unlimited.total.dollars - cheapest.total.dollars) * 0.4
    plan = plan_of(tmp_path, source, objective="quality", budget=budget)
    assert plan.total is not None and plan.total.dollars <= budget
    # `first` feeds both others: it gets the strongest model the budget allows.
    first = next(n for n in plan.calls() if n.args and plan.graph.node(n.args[0]).kind == "input")
    others = [n for n in plan.calls() if n is not first]
    rank = {"cheap": 0, "mid": 1, "best": 2}
    assert all(rank[first.call.model] >= rank[o.call.model] for o in others)
    assert rank[first.call.model] > 0
    assert any("within the budget" in d.message and "exact" in d.message for d in plan.decisions)


def test_a_budget_that_cannot_buy_the_needs_is_reported_not_downgraded(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        FNS
        + """
    flow main(x: str) -> a: str { a = think(x) }
    """,
        budget=0.0000001,
    )
    assert models_of(plan) == {"think": "mid"}
    messages = [d.message for d in plan.decisions]
    assert any("cannot buy every need" in m and "short by $" in m for m in messages)


def test_latency_objective_takes_the_fastest(tmp_path: Path) -> None:
    source = (
        """
    model small = local("smollm2-135m")
    """
        + FNS
        + """
    flow main(x: str) -> a: str { a = plain(x) }
    """
    )
    for text, fastest in (("short", "small"), ("word " * 3000, "cheap")):
        # Locally, a long prompt takes seconds to prefill; a hosted model does not care.
        plan = plan_of(tmp_path, source, objective="latency", inputs={"x": text})
        assert models_of(plan) == {"plain": fastest}


@pytest.mark.parametrize("objective", ["cost", "quality", "latency"])
def test_every_call_is_explained(tmp_path: Path, objective: str) -> None:
    plan = plan_of(
        tmp_path,
        FNS
        + """
    flow main(x: str) -> a: str { a = think(x) }
    """,
        objective=objective,
    )
    (call,) = plan.calls()
    assert any(d.node == call.id and d.message.startswith("think → ") for d in plan.decisions)
