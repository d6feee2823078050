"""Statistics of evaluation results: confidence intervals and pass@k."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float | None = None  # 95% confidence interval, where one makes sense
    high: float | None = None
    n: int = 0

    def as_dict(self) -> dict:
        # NaN (a rate over zero items) is not JSON; it becomes null.
        value = None if isinstance(self.value, float) and math.isnan(self.value) else self.value
        return {"value": value, "ci95": None if self.low is None else [self.low, self.high], "n": self.n}


def wilson(successes: float, n: int, z: float = Z95) -> Estimate:
    """A proportion with its Wilson score interval: unlike the normal approximation it stays
    inside [0, 1] and is sensible for small n and rates near 0 or 1 (Wilson 1927)."""
    if n == 0:
        return Estimate(float("nan"), None, None, 0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n successes the bound is exactly 0 or 1 (the formula leaves rounding noise there).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Estimate(p, low, high, n)


def bootstrap(
    values: Sequence, statistic: Callable[[Sequence], float], *, resamples: int = 1000, seed: int = 0
) -> Estimate:
    """Percentile bootstrap of ``statistic`` over items (seeded: the same data gives the same CI)."""
    n = len(values)
    if n == 0:
        return Estimate(float("nan"), None, None, 0)
    rng = random.Random(seed)
    stats = sorted(statistic([values[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))
    lo, hi = stats[int(0.025 * (resamples - 1))], stats[int(math.ceil(0.975 * (resamples - 1)))]
    value = statistic(values)
    # With a handful of items the percentile interval of a skewed statistic can miss the point
    # estimate; widen it to include it rather than report an interval that excludes the value.
    return Estimate(value, min(lo, value), max(hi, value), n)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass (Chen et al. 2021, "Evaluating Large
    Language Models Trained on Code"): 1 - C(n-c, k) / C(n, k), as a stable product."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_with_normal_ci(values: Sequence[float]) -> Estimate:
    """Mean of per-item scores in [0, 1] (e.g. pass@k) with a normal-approximation interval."""
    n = len(values)
    if n == 0:
        return Estimate(float("nan"), None, None, 0)
    m = sum(values) / n
    if n == 1:
        return Estimate(m, None, None, 1)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = Z95 * sd / math.sqrt(n)
    return Estimate(m, max(0.0, m - half), min(1.0, m + half), n)
