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
        opts = [Option(f"m{j}", rng.uniform(0, 1), 1.0, rng.uniform(0, 1), True) for j in range(models)]
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
