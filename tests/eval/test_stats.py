"""Confidence intervals and the pass@k estimator against independent computations."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from lhama.eval.stats import bootstrap, mean_with_normal_ci, pass_at_k, wilson


def test_wilson_matches_textbook_values():
    # 8 successes of 10: Wilson 95% interval (0.4902, 0.9433), e.g. Newcombe (1998), table I.
    e = wilson(8, 10)
    assert e.value == 0.8
    assert e.low == pytest.approx(0.4902, abs=1e-4) and e.high == pytest.approx(0.9433, abs=1e-4)
    # Stays inside [0, 1] at the edges, where the normal approximation collapses to a point.
    z = wilson(0, 12)
    assert z.low == 0.0 and 0.2 < z.high < 0.3
    assert wilson(12, 12).high == 1.0 and wilson(12, 12).low < 1.0
    assert math.isnan(wilson(0, 0).value) and wilson(0, 0).as_dict()["value"] is None


def _pass_at_k_by_enumeration(n, c, k):
    """Probability that a random k-subset of n samples (c correct) contains a correct one."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize(
    "n,c,k", [(1, 0, 1), (1, 1, 1), (5, 2, 1), (5, 2, 3), (6, 1, 5), (8, 3, 4), (10, 0, 10), (10, 7, 4)]
)
def test_pass_at_k_is_the_unbiased_estimator(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_by_enumeration(n, c, k), abs=1e-12)
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_needs_enough_samples():
    with pytest.raises(ValueError, match="at least 5 samples"):
        pass_at_k(3, 1, 5)


def test_bootstrap_is_seeded_and_brackets_the_mean():
    rng = random.Random(1)
    xs = [rng.gauss(10, 2) for _ in range(200)]
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    a, b = bootstrap(xs, mean), bootstrap(xs, mean)
    assert a == b
    assert a.low < a.value < a.high
    # The bootstrap interval of a mean is close to the normal one (sd 2, n 200: half-width ~0.28).
    assert a.high - a.low == pytest.approx(2 * 1.96 * 2 / math.sqrt(200), rel=0.3)


def test_mean_with_normal_ci():
    e = mean_with_normal_ci([0.0, 0.5, 1.0, 0.5])
    assert e.value == 0.5 and 0 <= e.low < 0.5 < e.high <= 1
    assert mean_with_normal_ci([0.3]).low is None
