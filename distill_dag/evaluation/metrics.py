"""The statistics of eval_report: unbiased pass@k, mean@k, and a paired bootstrap interval.

pass@k follows Chen et al. 2021 ("Evaluating Large Language Models Trained on Code"): with n
samples of which c are correct, the probability that at least one of k samples drawn without
replacement is correct is 1 - C(n-c, k) / C(n, k), computed as a stable product. mean@k is the
plain share of correct samples. The gain's interval resamples *queries* (paired: both models'
results on a query move together), which is the right unit when the same queries are evaluated
under both models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples with c correct (requires 1 <= k <= n)."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"correct count c={c} must be in [0, n={n}]")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k / i): no huge binomials, exact for small n.
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(samples: Sequence[int], correct: Sequence[int], k: int) -> float:
    """pass@k averaged over queries, each with its own (n, c)."""
    if not len(samples):
        return float("nan")
    return float(np.mean([pass_at_k(n, c, k) for n, c in zip(samples, correct, strict=True)]))


@dataclass(frozen=True)
class Interval:
    estimate: float  # the statistic on the original data
    low: float
    high: float
    confidence: float
    resamples: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return (f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}] "
                f"({self.confidence:.0%} bootstrap, {self.resamples} resamples)")


def paired_bootstrap_mean_diff(
    treated: Sequence[float],
    control: Sequence[float],
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> Interval:
    """Interval for mean(treated - control) over paired observations (one pair per query).

    Percentile bootstrap (scipy.stats.bootstrap) of the mean per-query difference. Percentile
    rather than BCa: per-query scores are often 0/1, where BCa's jackknife degenerates."""
    from scipy.stats import bootstrap

    a = np.asarray(treated, dtype=np.float64)
    b = np.asarray(control, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two 1-d arrays of equal length, got {a.shape} "
                         f"and {b.shape}")
    if a.size < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 paired queries, got {a.size}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    diffs = a - b
    estimate = float(diffs.mean())
    if np.all(diffs == diffs[0]):  # every resample equals the estimate
        return Interval(estimate, estimate, estimate, confidence, resamples)
    result = bootstrap((diffs,), np.mean, confidence_level=confidence, n_resamples=resamples,
                       method="percentile", random_state=np.random.default_rng(seed))
    ci = result.confidence_interval
    return Interval(estimate, float(ci.low), float(ci.high), confidence, resamples)


def bootstrap_mean(values: Sequence[float], confidence: float = 0.95, resamples: int = 10_000,
                   seed: int = 0) -> Interval:
    """Percentile-bootstrap interval of a mean (one value per query): the accuracy error bars."""
    arr = np.asarray(values, dtype=np.float64)
    return paired_bootstrap_mean_diff(arr, np.zeros_like(arr), confidence, resamples, seed)
