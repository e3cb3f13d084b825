"""pass@k (unbiased estimator) and the paired bootstrap interval."""

from __future__ import annotations

import itertools
from math import comb

import numpy as np
import pytest

from distill_dag.evaluation.metrics import (
    bootstrap_mean,
    mean_pass_at_k,
    paired_bootstrap_mean_diff,
    pass_at_k,
)


def _pass_at_k_by_enumeration(n: int, c: int, k: int) -> float:
    """Share of k-subsets of n samples (c correct) that contain a correct one."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 4, 7])
def test_pass_at_k_equals_enumeration_and_the_binomial_formula(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            expected = _pass_at_k_by_enumeration(n, c, k)
            assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
            assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_pass_at_1_is_the_correct_share_and_pass_at_k_grows_with_k():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    values = [pass_at_k(10, 3, k) for k in range(1, 11)]
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert values[-1] == 1.0  # all samples drawn: any correct one is found
    assert pass_at_k(10, 0, 10) == 0.0


def test_pass_at_k_stays_exact_for_large_n():
    # 1 - C(180, 20) / C(200, 20): the product form needs no 10^29-sized integers.
    assert pass_at_k(200, 20, 20) == pytest.approx(1 - comb(180, 20) / comb(200, 20), rel=1e-9)


@pytest.mark.parametrize("n,c,k", [(4, 1, 5), (4, 1, 0), (4, 5, 1), (0, 0, 1)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_pass_at_k_averages_per_query():
    assert mean_pass_at_k([4, 4], [4, 0], 2) == pytest.approx(0.5)
    assert np.isnan(mean_pass_at_k([], [], 1))


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    base = rng.random(200) < 0.3
    distilled = rng.random(200) < 0.6
    a = paired_bootstrap_mean_diff(distilled, base, resamples=2000, seed=3)
    b = paired_bootstrap_mean_diff(distilled, base, resamples=2000, seed=3)
    assert a == b
    assert a.low < a.estimate < a.high
    assert a.estimate == pytest.approx(distilled.mean() - base.mean())
    assert a.excludes_zero and a.low > 0
    # Roughly the normal-theory width of a paired difference of proportions.
    se = np.std(distilled.astype(float) - base, ddof=1) / np.sqrt(200)
    assert (a.high - a.low) == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_paired_interval_is_narrower_than_unpaired_for_correlated_scores():
    """The distilled model mostly solves what the base solves plus some: pairing by query
    removes the shared per-query difficulty, which an unpaired interval would count as noise."""
    rng = np.random.default_rng(4)
    base = (rng.random(300) < 0.5).astype(float)
    distilled = base.copy()
    flips = rng.choice(np.flatnonzero(base == 0), size=30, replace=False)
    distilled[flips] = 1.0  # +0.1, query by query
    paired = paired_bootstrap_mean_diff(distilled, base, resamples=2000)
    assert paired.estimate == pytest.approx(0.1)
    unpaired_se = np.sqrt(distilled.var(ddof=1) / 300 + base.var(ddof=1) / 300)
    assert (paired.high - paired.low) < 0.5 * (2 * 1.96 * unpaired_se)
    assert paired.low > 0  # significant paired, though not unpaired (0.1 < 1.96 * se * 2)


def test_bootstrap_of_no_difference_includes_zero():
    rng = np.random.default_rng(2)
    x = (rng.random(100) < 0.5).astype(float)
    y = x[rng.permutation(100)]  # same accuracy, shuffled pairs
    iv = paired_bootstrap_mean_diff(x, y, resamples=2000)
    assert iv.low <= 0 <= iv.high and not iv.excludes_zero


def test_bootstrap_degenerate_and_invalid_inputs():
    iv = paired_bootstrap_mean_diff([1, 1, 1], [0, 0, 0])
    assert (iv.estimate, iv.low, iv.high) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap_mean_diff([1, 0], [1])
    with pytest.raises(ValueError, match="at least 2"):
        paired_bootstrap_mean_diff([1], [0])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_mean_diff([1, 0], [0, 0], confidence=1.5)


def test_bootstrap_mean_is_an_accuracy_interval():
    iv = bootstrap_mean([1, 0, 1, 1, 0, 1, 0, 1, 1, 1], resamples=2000)
    assert iv.estimate == pytest.approx(0.7)
    assert 0.3 < iv.low < 0.7 < iv.high <= 1.0
