"""The assignment search, against a synthetic `measure` whose optimum is known: tables
of per-row outcomes, so every expected answer is a brute force over the same tables."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Sequence

import pytest

from llmflow.runtime.tune import (
    Measurements,
    Objective,
    Outcome,
    Point,
    TuneError,
    interval,
    pareto_front,
    split_rows,
    tune,
)

PRICE = {"cheap": 0.001, "mid": 0.01, "best": 0.1}


class Table:
    """Per function, per model, per row: whether that function gets the row right on
    that model. A row scores 1 if every function gets it right (a pipeline), or the mean
    of them (`additive`). Each function's call costs its model's price."""

    def __init__(self, success: dict[str, dict[str, list[int]]], additive: bool = False) -> None:
        self.success = success
        self.additive = additive
        self.asked: list[tuple[tuple[tuple[str, str], ...], tuple[int, ...]]] = []

    def outcome(self, assignment: dict[str, str], row: int) -> Outcome:
        hits = [self.success[fn][m][row] for fn, m in assignment.items()]
        score = sum(hits) / len(hits) if self.additive else float(all(hits))
        return Outcome(score, sum(PRICE[m] for m in assignment.values()), 0.1 * len(hits))

    async def measure(self, assignment: dict[str, str], rows: Sequence[int]) -> list[Outcome]:
        self.asked.append((tuple(sorted(assignment.items())), tuple(rows)))
        await asyncio.sleep(0)
        return [self.outcome(assignment, r) for r in rows]

    def point(self, assignment: dict[str, str], rows: Sequence[int]) -> Point:
        outs = [self.outcome(assignment, r) for r in rows]
        n = len(outs)
        return Point(
            dict(assignment),
            sum(o.score for o in outs) / n,
            sum(o.dollars for o in outs) / n,
            sum(o.seconds for o in outs) / n,
            n,
        )


def random_table(rng: random.Random, functions: int, rows: int, additive: bool = False) -> Table:
    accuracy = {"cheap": 0.5, "mid": 0.75, "best": 0.95}
    return Table(
        {
            f"f{i}": {
                m: [int(rng.random() < accuracy[m] + rng.uniform(-0.2, 0.05)) for _ in range(rows)]
                for m in PRICE
            }
            for i in range(functions)
        },
        additive,
    )


def brute_force(
    table: Table, candidates: dict[str, list[str]], rows: Sequence[int], goal: Objective
) -> Point:
    """The best point by the goal, ties to the fewest changes from the first candidates."""
    functions = sorted(candidates)
    start = {fn: candidates[fn][0] for fn in functions}
    best = None
    for models in itertools.product(*(candidates[fn] for fn in functions)):
        assignment = dict(zip(functions, models, strict=True))
        point = table.point(assignment, rows)
        tie = (
            sum(assignment[fn] != start[fn] for fn in functions),
            *(candidates[fn].index(assignment[fn]) for fn in functions),
        )
        key = goal.rank(point, tie)
        if best is None or key < best[0]:
            best = (key, point)
    assert best is not None
    return best[1]


def run(coro):  # noqa: ANN001, ANN201 - a test helper
    return asyncio.run(coro)


CANDIDATES = {"f0": ["cheap", "mid", "best"], "f1": ["cheap", "mid", "best"]}


# ---- splitting ----------------------------------------------------------------------------


def test_split_is_seeded_disjoint_and_stratified() -> None:
    cats = {r: ("math" if r < 30 else "history") for r in range(100)}
    a = split_rows(range(100), 0.5, seed=1, categories=cats)
    assert a == split_rows(range(100), 0.5, seed=1, categories=cats)
    assert a != split_rows(range(100), 0.5, seed=2, categories=cats)
    assert set(a.tuning) | set(a.held_out) == set(range(100))
    assert not set(a.tuning) & set(a.held_out)
    assert sum(cats[r] == "math" for r in a.held_out) == 15
    assert sum(cats[r] == "history" for r in a.held_out) == 35
    # A category of two still has a row on each side; of one, it is tuned on.
    tiny = split_rows(range(3), 0.9, categories={0: "a", 1: "a", 2: "b"})
    assert len(tiny.held_out) == 1 and 2 in tiny.tuning and len(tiny.tuning) == 2
    assert split_rows(range(10), 0.0).held_out == ()
    with pytest.raises(TuneError, match="held_out must be"):
        split_rows(range(10), 1.0)


def test_interval() -> None:
    wilson = interval([1.0] * 80 + [0.0] * 20)
    assert wilson.mean == 0.8 and wilson.n == 100
    assert wilson.low == pytest.approx(0.7112, abs=1e-4) and wilson.high == pytest.approx(
        0.8666, abs=1e-4
    )
    normal = interval([0.5, 0.7, 0.9])
    assert normal.low < 0.7 < normal.high
    assert interval([1.0]).high == pytest.approx(1.0)


def test_pareto_front() -> None:
    pts = [
        Point({"f": m}, s, d, 0.0, 10)
        for m, s, d in [("a", 0.5, 1), ("b", 0.4, 2), ("c", 0.9, 3), ("d", 0.9, 4)]
    ]
    assert [p.assignment["f"] for p in pareto_front(pts)] == ["a", "c"]


# ---- exact search -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("target", [None, 0.5, 0.7, 0.85])
def test_exact_search_finds_the_brute_force_optimum(seed: int, target: float | None) -> None:
    table = random_table(random.Random(seed), functions=2, rows=60)
    result = run(tune(CANDIDATES, table.measure, 60, target=target, seed=seed))
    assert result.how == "exact: all 9 assignments"
    goal = Objective(target=target)
    expected = brute_force(table, CANDIDATES, result.split.tuning, goal)
    assert result.chosen == expected
    assert result.front == pareto_front(
        [table.point(p.assignment, result.split.tuning) for p in result.points]
    )
    # validated on the held-out rows only
    assert result.held_out is not None
    held = table.point(result.chosen.assignment, result.split.held_out)
    assert result.held_out.score.mean == pytest.approx(held.score)
    assert result.held_out.score.n == len(result.split.held_out) == 30
    assert result.held_out.dollars == pytest.approx(held.dollars)


def test_budget_buys_the_best_score_it_affords() -> None:
    table = random_table(random.Random(3), functions=2, rows=80)
    for budget in (0.002, 0.011, 0.02, 0.11, 0.2):
        result = run(tune(CANDIDATES, table.measure, 80, budget=budget))
        expected = brute_force(table, CANDIDATES, result.split.tuning, Objective(budget=budget))
        assert result.chosen == expected
        assert result.chosen.dollars <= budget + 1e-12
        assert result.reason == ""


def test_an_unreachable_target_takes_the_best_and_says_so() -> None:
    table = random_table(random.Random(4), functions=2, rows=40)
    result = run(tune(CANDIDATES, table.measure, 40, target=1.01))
    best = max(result.points, key=lambda p: p.score)
    assert result.chosen.score == best.score
    assert "no measured assignment reaches the target 1.01" in result.reason
    assert f"the best is {best.score:.4f}" in result.reason


def test_a_budget_too_small_takes_the_cheapest_and_says_so() -> None:
    table = random_table(random.Random(5), functions=2, rows=40)
    result = run(tune(CANDIDATES, table.measure, 40, budget=0.0001))
    assert result.chosen.assignment == {"f0": "cheap", "f1": "cheap"}
    assert "the budget of $0.000100 per row buys no measured assignment" in result.reason
    both = run(tune(CANDIDATES, table.measure, 40, budget=0.002, target=1.01))
    assert "reaches the target 1.01 within the budget" in both.reason


def test_ties_go_to_the_start_then_to_models_listed_first() -> None:
    same = [1, 0] * 10
    table = Table({"f0": {m: same for m in PRICE}, "f1": {m: same for m in PRICE}})
    free = dict.fromkeys(PRICE, 0.0)
    original = dict(PRICE)
    PRICE.update(free)
    try:
        result = run(tune(CANDIDATES, table.measure, 20, start={"f0": "mid", "f1": "best"}))
        assert result.chosen.assignment == {"f0": "mid", "f1": "best"}
        result = run(tune(CANDIDATES, table.measure, 20))
        assert result.chosen.assignment == {"f0": "cheap", "f1": "cheap"}
    finally:
        PRICE.update(original)


# ---- the one-function-at-a-time search ----------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("goal", [{}, {"target": 0.7}, {"target": 0.85}, {"budget": 0.05}])
def test_greedy_agrees_with_exact_where_the_additive_model_holds(seed: int, goal: dict) -> None:
    table = random_table(random.Random(100 + seed), functions=3, rows=60, additive=True)
    candidates = {fn: ["cheap", "mid", "best"] for fn in ("f0", "f1", "f2")}
    exact = run(tune(candidates, table.measure, 60, seed=seed, **goal))
    greedy = run(tune(candidates, table.measure, 60, seed=seed, exact_limit=0, **goal))
    assert exact.how.startswith("exact") and greedy.how.startswith("one function at a time")
    assert greedy.chosen == exact.chosen
    assert len(greedy.points) <= 1 + (2 + 3) * 6


def test_greedy_on_a_space_too_large_to_enumerate_stays_within_its_bound() -> None:
    rng = random.Random(9)
    functions = [f"f{i}" for i in range(8)]  # 3**8 = 6561 assignments
    table = random_table(rng, functions=8, rows=40)
    candidates = {fn: ["cheap", "mid", "best"] for fn in functions}
    result = run(tune(candidates, table.measure, 40, target=0.3, max_rounds=2))
    assert "of 6561 assignments measured (at most 65:" in result.how
    assert len(result.points) <= 65
    # Every point it reports is what the table says.
    for p in result.points:
        assert p == table.point(p.assignment, result.split.tuning)
    assert result.chosen.score >= 0.3 or result.reason
    # It measured the start and every one-function change of it: a profile's entries.
    for fn in functions:
        for m in ("mid", "best"):
            change = result.one_change(fn, m)
            assert change is not None and change.assignment[fn] == m


# ---- per category -------------------------------------------------------------------------


def test_a_category_map_beats_any_single_model() -> None:
    rows = 80
    cats = ["math" if r % 2 else "history" for r in range(rows)]
    table = Table(
        {
            "answer": {
                "cheap": [0] * rows,
                "mid": [int(c == "math") for c in cats],
                "best": [int(c == "history") for c in cats],
            }
        }
    )
    candidates = {"answer": ["cheap", "mid", "best"]}
    single = run(tune(candidates, table.measure, rows, categories=cats))
    assert single.chosen.score == pytest.approx(0.5)
    mapped = run(tune(candidates, table.measure, rows, categories=cats, by_category=True))
    assert mapped.categories == {"history": {"answer": "best"}, "math": {"answer": "mid"}}
    assert mapped.chosen.score == pytest.approx(1.0)
    assert mapped.held_out is not None and mapped.held_out.score.mean == pytest.approx(1.0)
    assert mapped.held_out.score.n == 40
    # math on mid ($0.01) and history on best ($0.1), half the rows each
    assert mapped.held_out.dollars == pytest.approx((0.01 + 0.1) / 2)
    assert max(p.score for p in mapped.front) == pytest.approx(0.5)
    # A target of 0.5: math on mid alone reaches it, history on cheap costs least.
    cheap = run(
        tune(candidates, table.measure, rows, categories=cats, by_category=True, target=0.5)
    )
    assert cheap.categories == {"history": {"answer": "cheap"}, "math": {"answer": "mid"}}
    assert cheap.chosen.dollars == pytest.approx((0.001 + 0.01) / 2)


def test_by_category_needs_categories() -> None:
    table = Table({"answer": {m: [1] * 4 for m in PRICE}})
    with pytest.raises(TuneError, match="needs each row's category"):
        run(tune({"answer": ["cheap"]}, table.measure, 4, by_category=True))


# ---- memoized measurements and a broken measure -------------------------------------------


def test_every_assignment_and_row_is_measured_once() -> None:
    table = random_table(random.Random(1), functions=2, rows=50)
    memo = Measurements(table.measure)
    first = run(tune(CANDIDATES, memo, 50, target=0.7))
    asked = [(a, r) for a, rows in table.asked for r in rows]
    assert len(asked) == len(set(asked)) == first.measured_rows
    assert (
        first.measured_rows == 9 * 25 + 25
    )  # every assignment on the tuning rows; the chosen held out
    start = {"f0": "cheap", "f1": "cheap"}
    assert memo.score(start, first.split.tuning).mean == pytest.approx(first.start.score)
    assert memo.score(start, first.split.tuning).n == 25
    again = run(tune(CANDIDATES, memo, 50, target=0.8))
    assert again.measured_rows <= 25  # only a different chosen point's held-out rows
    calls = len(table.asked)
    run(tune(CANDIDATES, memo, 50, target=0.8))
    assert len(table.asked) == calls


def test_a_measure_that_breaks_its_contract_is_reported() -> None:
    async def short(assignment: dict[str, str], rows: Sequence[int]) -> list[Outcome]:
        return [Outcome(1.0)] * (len(rows) - 1)

    with pytest.raises(TuneError, match=r"measure returned \d+ outcomes for \d+ rows"):
        run(tune({"f": ["a"]}, short, 10))

    async def nan(assignment: dict[str, str], rows: Sequence[int]) -> list[Outcome]:
        return [Outcome(float("nan"))] * len(rows)

    with pytest.raises(TuneError, match="scores must be finite"):
        run(tune({"f": ["a"]}, nan, 10))

    async def junk(assignment: dict[str, str], rows: Sequence[int]) -> list[object]:
        return ["yes"] * len(rows)

    with pytest.raises(TuneError, match="not an Outcome"):
        run(tune({"f": ["a"]}, junk, 10))  # type: ignore[arg-type]


def test_bad_arguments() -> None:
    table = Table({"f": {m: [1] * 4 for m in PRICE}})
    with pytest.raises(TuneError, match="no rows"):
        run(tune({"f": ["cheap"]}, table.measure, 0))
    with pytest.raises(TuneError, match="at least one candidate"):
        run(tune({"f": []}, table.measure, 4))
    with pytest.raises(TuneError, match="not one of the candidates"):
        run(tune({"f": ["cheap"]}, table.measure, 4, start={"f": "best"}))
    with pytest.raises(TuneError, match="has no category"):
        run(tune({"f": ["cheap"]}, table.measure, [0, 1], categories={0: "a"}))
