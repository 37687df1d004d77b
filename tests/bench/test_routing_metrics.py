"""bench/routing/metrics.py: APGR, the oracle and the random router on known values."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "routing" / "metrics.py"
_SPEC = importlib.util.spec_from_file_location("routing_metrics", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
metrics = importlib.util.module_from_spec(_SPEC)
sys.modules["routing_metrics"] = metrics
_SPEC.loader.exec_module(metrics)
Curve = metrics.Curve


def test_the_straight_line_between_the_models_recovers_half_the_gap() -> None:
    # a random router in expectation: accuracy linear in the strong share
    line = [Curve(x / 10, 0.6 + 0.2 * x / 10) for x in range(11)]
    assert metrics.apgr(line, 0.6, 0.8) == pytest.approx(0.5)
    assert metrics.apgr([], 0.6, 0.8) == pytest.approx(0.5)  # the two ends alone


def test_apgr_of_known_curves() -> None:
    # strong accuracy from the first 10% of calls on: 0.1 * 0.5 gap-area short of 1
    assert metrics.apgr([Curve(0.1, 0.8)], 0.6, 0.8) == pytest.approx(0.95)
    # never better than the weak model until the end: 0.05 of the gap recovered
    assert metrics.apgr([Curve(0.9, 0.6)], 0.6, 0.8) == pytest.approx(0.05)
    # above the strong model in the middle: more than 1 (the oracle's curve does this)
    assert metrics.apgr([Curve(0.5, 1.0)], 0.6, 0.8) == pytest.approx(1.25)
    # the order points are given in does not matter
    points = [Curve(0.7, 0.78), Curve(0.2, 0.7), Curve(0.4, 0.75)]
    assert metrics.apgr(points, 0.6, 0.8) == pytest.approx(metrics.apgr(points[::-1], 0.6, 0.8))


def test_apgr_refuses_what_it_cannot_normalize() -> None:
    with pytest.raises(ValueError, match="different accuracy"):
        metrics.apgr([], 0.7, 0.7)
    with pytest.raises(ValueError, match="between 0 and 1"):
        metrics.apgr([Curve(1.5, 0.7)], 0.6, 0.8)


def test_the_oracle_pays_for_the_strong_model_only_when_it_alone_is_right() -> None:
    assert [
        metrics.oracle_picks_strong(w, s)
        for w, s in [(True, True), (True, False), (False, True), (False, False)]
    ] == [False, False, True, False]


def test_optimal_accuracy_rescues_as_many_as_the_share_allows() -> None:
    weak = [True, False, False, False]
    strong = [True, True, True, False]  # two questions only the strong model gets right
    assert metrics.optimal_accuracy(weak, strong, 0.0) == 0.25
    assert metrics.optimal_accuracy(weak, strong, 0.25) == 0.5
    assert metrics.optimal_accuracy(weak, strong, 0.5) == 0.75
    assert metrics.optimal_accuracy(weak, strong, 1.0) == 0.75  # nothing more to rescue
    with pytest.raises(ValueError):
        metrics.optimal_accuracy(weak, strong[:2], 0.5)


def test_the_random_router_is_seeded_and_near_its_rate() -> None:
    picks = metrics.random_picks(10_000, 0.3, seed=7)
    assert picks == metrics.random_picks(10_000, 0.3, seed=7)
    assert picks != metrics.random_picks(10_000, 0.3, seed=8)
    assert abs(sum(picks) / len(picks) - 0.3) < 0.02
    assert not any(metrics.random_picks(100, 0.0, seed=1))
    assert all(metrics.random_picks(100, 1.0, seed=1))


def test_spread() -> None:
    got = metrics.spread([0.3, 0.1, 0.2, 0.5])
    assert (got.median, got.low, got.high) == (0.25, 0.1, 0.5)
    assert got.shown(100) == "25.0 (10.0–50.0)"
    with pytest.raises(ValueError):
        metrics.spread([])
