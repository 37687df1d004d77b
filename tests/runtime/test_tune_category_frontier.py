"""`by_category` combines the categories' choices over Pareto frontiers: exactly up to
FRONTIER_LIMIT states, then thinned with a stated bound (it once fell back to each
category's own choice, much dearer under a target, and said nothing; found by
bench/routing/mmlu_tune.py's review).
MMLU's 57 subjects with two models stay under the limit (their map reaches the target
with $0 to spare); 13 categories built so that every subset of them is on the frontier
(costs and gains both powers of two) go over it."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

from llmflow.runtime.tune import FRONTIER_LIMIT, Outcome, tune

CATEGORIES = 13  # 2**13 = 8192 frontier states > FRONTIER_LIMIT
SCALE = 2.0**CATEGORIES


def outcome(model: str, row: int) -> Outcome:
    """Row i is category i's only row: the cheap model loses 2**i / 2**13 of a point on
    it, the dear one gets it right for 2**i dollars."""
    if model == "cheap":
        return Outcome(1.0 - 2.0**row / SCALE, 0.0)
    return Outcome(1.0, 2.0**row)


async def measure(assignment: dict[str, str], rows: Sequence[int]) -> list[Outcome]:
    return [outcome(assignment["answer"], r) for r in rows]


def cheapest_map(target: float) -> float:
    """Brute force over every subset of categories on the dear model."""
    best = float("inf")
    for dear in itertools.product((False, True), repeat=CATEGORIES):
        picks = [outcome("dear" if d else "cheap", r) for r, d in enumerate(dear)]
        score = sum(o.score for o in picks) / CATEGORIES
        if score >= target - 1e-12:
            best = min(best, sum(o.dollars for o in picks) / CATEGORIES)
    return best


def test_a_category_map_past_the_frontier_limit_is_still_the_cheapest_meeting_the_target() -> None:
    assert 2**CATEGORIES > FRONTIER_LIMIT
    target = 0.99
    result = asyncio.run(
        tune(
            {"answer": ["cheap", "dear"]},
            measure,
            CATEGORIES,
            target=target,
            categories=[str(r) for r in range(CATEGORIES)],
            by_category=True,
            held_out=0.0,
        )
    )
    # Past the limit the frontiers are thinned: the map still meets the target, costs at
    # most the bound `how` states over the cheapest meeting it, and says so.
    assert result.chosen.score >= target - 1e-12
    assert "combined approximately" in result.how
    bound = float(result.how.rsplit("at most ", 1)[1].split()[0])
    optimum = cheapest_map(target)
    assert optimum <= result.chosen.dollars <= optimum + bound + 1e-9
    assert bound < 0.01 * optimum  # the bands are narrow: a real bound, not a shrug


def test_a_category_map_under_the_frontier_limit_is_exact() -> None:
    few = 8
    result = asyncio.run(
        tune(
            {"answer": ["cheap", "dear"]},
            measure,
            few,
            target=0.99,
            categories=[str(r) for r in range(few)],
            by_category=True,
            held_out=0.0,
        )
    )
    assert "approximately" not in result.how
