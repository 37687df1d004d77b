"""95% confidence intervals of a mean score: Wilson's for 0/1 scores (right even at 0 or
N of N, where the normal approximation gives an empty interval), a percentile bootstrap
with a fixed seed otherwise (the same scores always give the same interval)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

Z95 = 1.959963984540054
"""The standard normal's 97.5th percentile."""
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 20261202


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of a proportion; (0, 1) with no rows."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap(
    scores: Sequence[float], samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the mean over `samples` resamples."""
    n = len(scores)
    if n == 0:
        return 0.0, 1.0
    if n == 1 or min(scores) == max(scores):
        return float(scores[0]), float(scores[0])
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(scores, k=n)) / n for _ in range(samples))
    low = means[int(0.025 * samples)]
    high = means[min(samples - 1, int(math.ceil(0.975 * samples)) - 1)]
    return low, high


def interval(scores: Sequence[float]) -> tuple[float, float, str]:
    """The interval of the scores' mean and how it was found ("wilson", "bootstrap")."""
    if all(s in (0.0, 1.0) for s in scores):
        low, high = wilson(sum(scores), len(scores))
        return low, high, "wilson"
    low, high = bootstrap(scores)
    return low, high, "bootstrap"
