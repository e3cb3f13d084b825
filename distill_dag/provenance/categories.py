"""Provenance categories of sentences from their probabilities under teacher, student, distilled.

Method: "Where Did This Sentence Come From?" (arXiv 2512.20908). A sentence's probability under a
model is the geometric mean of its token probabilities (see ``sentences.sentence_logprob_means``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from distill_dag.configbase import Config, ConfigError, check_int, check_number, setting

TEACHER = "teacher"
STUDENT = "student"
COMMON = "common"
SHARED = "shared"
BOOSTED = "boosted"
UNSCORED = "unscored"

TWO_WAY_CATEGORIES = (TEACHER, STUDENT, COMMON, UNSCORED)
THREE_WAY_CATEGORIES = (SHARED, TEACHER, STUDENT, BOOSTED, UNSCORED)
ALL_CATEGORIES = (TEACHER, STUDENT, COMMON, SHARED, BOOSTED, UNSCORED)

_DTYPE = f"<U{max(len(c) for c in ALL_CATEGORIES)}"

# Differences are rounded before comparing with the margins so that a difference that is exactly
# at the margin in decimal (0.8 - 0.7 vs beta 0.1) is treated as at the margin, not above it by
# one float ulp. Probabilities carry no information at 1e-12.
_ROUND_DECIMALS = 12


# exp(mean log-prob) can land a hair above 1 when a low-precision log-softmax rounds up.
_PROB_SLACK = 1e-6


def _probs(x: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size and (finite.min() < -_PROB_SLACK or finite.max() > 1.0 + _PROB_SLACK):
        raise ValueError(
            f"{name} must be probabilities in [0, 1] (or NaN for unscored), "
            f"got values in [{finite.min():.4g}, {finite.max():.4g}]"
        )
    return np.clip(arr, 0.0, 1.0)


def _check_margin(value: float, name: str) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def categorize_teacher_student(
    p_teacher: ArrayLike, p_student: ArrayLike, beta: float = 0.1
) -> np.ndarray:
    """Before-training categories from dTS = pT - pS with margin beta (strict inequalities).

    "teacher" if dTS > beta, "student" if dTS < -beta, else "common"; "unscored" where either
    probability is NaN. Inputs broadcast; the result has their broadcast shape.
    """
    _check_margin(beta, "beta")
    pt = _probs(p_teacher, "p_teacher")
    ps = _probs(p_student, "p_student")
    d_ts = np.round(pt - ps, _ROUND_DECIMALS)
    out = np.full(d_ts.shape, COMMON, dtype=_DTYPE)
    out[d_ts > beta] = TEACHER
    out[d_ts < -beta] = STUDENT
    out[np.isnan(d_ts)] = UNSCORED
    return out


def categorize_three_way(
    p_teacher: ArrayLike,
    p_student: ArrayLike,
    p_distilled: ArrayLike,
    alpha: float = 0.05,
    beta: float = 0.1,
) -> np.ndarray:
    """After-training categories with the distilled student D.

    With dSD = pS - pD, dTD = pT - pD, dTS = pT - pS: "shared" if |dSD|, |dTD| and |dTS| are all
    <= alpha; else "teacher" if dTS > beta; else "student" if dTS < -beta; else "boosted" (T and S
    agree, D moved away: distillation amplified a behaviour both already had). NaN -> "unscored".
    """
    _check_margin(alpha, "alpha")
    _check_margin(beta, "beta")
    pt = _probs(p_teacher, "p_teacher")
    ps = _probs(p_student, "p_student")
    pd = _probs(p_distilled, "p_distilled")
    d_ts = np.round(pt - ps, _ROUND_DECIMALS)
    d_sd = np.round(ps - pd, _ROUND_DECIMALS)
    d_td = np.round(pt - pd, _ROUND_DECIMALS)
    out = np.full(np.broadcast_shapes(d_ts.shape, d_sd.shape), BOOSTED, dtype=_DTYPE)
    # Assign in reverse priority so that the higher-priority rule overwrites.
    out[d_ts < -beta] = STUDENT
    out[d_ts > beta] = TEACHER
    shared = (np.abs(d_sd) <= alpha) & (np.abs(d_td) <= alpha) & (np.abs(d_ts) <= alpha)
    out[np.broadcast_to(shared, out.shape)] = SHARED
    unscored = np.isnan(d_ts) | np.isnan(d_sd) | np.isnan(d_td)
    out[np.broadcast_to(unscored, out.shape)] = UNSCORED
    return out


def category_counts(categories: Iterable[str]) -> dict[str, int]:
    """Count of each category, in a stable order (known categories first, then any others)."""
    counts = Counter(str(c) for c in np.asarray(categories, dtype=object).ravel())
    ordered = {c: counts[c] for c in ALL_CATEGORIES if c in counts}
    ordered.update({c: n for c, n in sorted(counts.items()) if c not in ordered})
    return ordered


@dataclass
class ProvenanceConfig(Config):
    """How provenance_scores scores and categorizes sentences."""

    WHERE: ClassVar[str] = "provenance"
    TEACHER_LOGPROBS_CHOICES: ClassVar[tuple[str, ...]] = ("generation", "rescore")

    beta: float = setting(
        0.1, 'Margin on dTS = pT - pS: "teacher" if dTS > beta, "student" if dTS < -beta. In '
        "[0, 1); 0.1 is the paper's best.")
    alpha: float = setting(
        0.05, 'Noise margin for the three-way (after-training) "shared" category. In [0, 1).')
    teacher_logprobs: str = setting(
        "generation", 'Where the teacher\'s token log-probs come from: "generation" takes those '
        "the backend returned at sampling time when it provided them, else rescores with a "
        'forward pass; "rescore" always runs the forward pass.')
    batch_size: int = setting(8, "Sequences per scoring forward pass (>= 1).", output=False)
    max_length: int = setting(
        1024, "Maximum tokens (prompt + response) per scored sequence (>= 1).")

    def __post_init__(self) -> None:
        for name in ("beta", "alpha"):
            value = getattr(self, name)
            check_number(name, value, 0.0, 1.0)
            _check_margin(float(value), name)  # and below 1
        if self.teacher_logprobs not in self.TEACHER_LOGPROBS_CHOICES:
            raise ConfigError(
                f"teacher_logprobs must be one of {list(self.TEACHER_LOGPROBS_CHOICES)}, "
                f"got {self.teacher_logprobs!r}"
            )
        check_int("batch_size", self.batch_size)
        check_int("max_length", self.max_length)
