"""The routing literature's yardsticks, as pure functions over per-row outcomes.

A router sends each question to the weak model or the strong one; what it achieves is a
point (share of calls to the strong model, accuracy). RouteLLM (Ong et al. 2024,
routellm/evals/evaluate.py) compares routers by the area under the curve those points
make as a router's threshold sweeps from all-weak to all-strong, normalized so the weak
model's flat line scores 0 and the strong model's 1: the average performance gap
recovered (APGR). A random router's curve is the straight line between the two models,
so its APGR is 0.5 in expectation.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from typing import NamedTuple


class Curve(NamedTuple):
    """One point of a router family: share of calls to the strong model (0..1), accuracy."""

    strong_share: float
    accuracy: float


def apgr(points: Sequence[Curve], weak: float, strong: float) -> float:
    """RouteLLM's APGR of a router family: the trapezoid area under its accuracy-vs-
    strong-share points, the family's two ends (all-weak at 0, all-strong at 1, where
    any threshold sweep starts and ends) included, normalized between the weak model's
    accuracy (0) and the strong model's (1) over the same span."""
    if strong == weak:
        raise ValueError("APGR needs two models of different accuracy")
    for p in points:
        if not 0.0 <= p.strong_share <= 1.0:
            raise ValueError(f"strong share {p.strong_share} is not between 0 and 1")
    curve = sorted({Curve(0.0, weak), Curve(1.0, strong), *points})
    area = sum(
        (b.strong_share - a.strong_share) * (a.accuracy + b.accuracy) / 2
        for a, b in zip(curve, curve[1:], strict=False)
    )
    return (area - weak) / (strong - weak)


def oracle_picks_strong(weak_right: bool, strong_right: bool) -> bool:
    """Per question, the cheaper model that is right: the weak one whenever it is right
    (or when neither is, since then the cheaper wrong answer will do)."""
    return strong_right and not weak_right


def optimal_accuracy(
    weak_right: Sequence[bool], strong_right: Sequence[bool], share: float
) -> float:
    """The best accuracy any router reaches with `share` of its calls on the strong
    model (RouteLLM's `get_optimal_accuracy`): every question the weak model gets right,
    plus as many as the share allows of those only the strong one gets right."""
    n = len(weak_right)
    if n == 0 or len(strong_right) != n:
        raise ValueError("optimal_accuracy needs as many strong outcomes as weak ones")
    rescued = sum(s and not w for w, s in zip(weak_right, strong_right, strict=True))
    return (sum(weak_right) + min(share * n, rescued)) / n


def random_picks(n: int, rate: float, seed: int) -> list[bool]:
    """A random router's choices for n questions: each goes to the strong model with
    probability `rate`, fixed by `seed`."""
    rng = random.Random(seed)
    return [rng.random() < rate for _ in range(n)]


class Spread(NamedTuple):
    """A figure over several splits: its median and range."""

    median: float
    low: float
    high: float

    def shown(self, scale: float = 1.0, digits: int = 1) -> str:
        return (
            f"{self.median * scale:.{digits}f} "
            f"({self.low * scale:.{digits}f}–{self.high * scale:.{digits}f})"
        )


def spread(values: Sequence[float]) -> Spread:
    if not values:
        raise ValueError("no values to summarize")
    return Spread(statistics.median(values), min(values), max(values))
