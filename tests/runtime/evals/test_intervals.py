"""95% intervals against published values."""

from __future__ import annotations

import pytest

from llmflow.runtime.evals.intervals import bootstrap, interval, wilson


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        # Wilson score intervals, z = 1.96 (e.g. Newcombe 1998, Table I; statsmodels'
        # proportion_confint(method="wilson")).
        (8, 10, 0.4902, 0.9433),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_known_values(successes: int, n: int, low: float, high: float) -> None:
    got = wilson(successes, n)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_with_no_rows_is_everything() -> None:
    assert wilson(0, 0) == (0.0, 1.0)


def test_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    scores = [0.1, 0.5, 0.9, 0.7, 0.3, 0.6, 0.4, 0.8, 0.2, 0.5] * 5
    low, high = bootstrap(scores)
    assert bootstrap(scores) == (low, high)
    mean = sum(scores) / len(scores)
    assert low < mean < high
    # The normal approximation of the mean's interval: within a few hundredths of it.
    sd = (sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) ** 0.5
    half = 1.96 * sd / len(scores) ** 0.5
    assert low == pytest.approx(mean - half, abs=0.02)
    assert high == pytest.approx(mean + half, abs=0.02)


def test_interval_picks_wilson_for_zero_one_scores() -> None:
    assert interval([1.0, 0.0, 1.0])[2] == "wilson"
    assert interval([1.0, 0.5])[2] == "bootstrap"
    assert bootstrap([0.4]) == (0.4, 0.4)
    assert bootstrap([]) == (0.0, 1.0)
