"""Tests for provenance categories and ProvenanceConfig."""

from __future__ import annotations

import numpy as np
import pytest

from distill_dag.provenance.categories import (
    BOOSTED,
    COMMON,
    SHARED,
    STUDENT,
    TEACHER,
    UNSCORED,
    ProvenanceConfig,
    categorize_teacher_student,
    categorize_three_way,
    category_counts,
)


def test_two_way_basic() -> None:
    out = categorize_teacher_student([0.9, 0.1, 0.5], [0.2, 0.8, 0.45])
    assert out.tolist() == [TEACHER, STUDENT, COMMON]


@pytest.mark.parametrize(
    ("pt", "ps", "expected"),
    [
        (0.6, 0.5, COMMON),  # dTS == beta: strict inequality -> common
        (0.5, 0.6, COMMON),  # dTS == -beta
        (0.8, 0.7, COMMON),  # 0.10000000000000009 in floats, still exactly beta
        (0.3, 0.2, COMMON),  # 0.09999999999999998 in floats
        (0.1, 0.0, COMMON),
        (0.61, 0.5, TEACHER),
        (0.5, 0.61, STUDENT),
    ],
)
def test_two_way_boundaries(pt: float, ps: float, expected: str) -> None:
    assert categorize_teacher_student([pt], [ps], beta=0.1).tolist() == [expected]


def test_two_way_nan_and_broadcast() -> None:
    out = categorize_teacher_student(np.array([np.nan, 0.9, 0.4]), [0.1, np.nan, 0.4])
    assert out.tolist() == [UNSCORED, UNSCORED, COMMON]
    assert categorize_teacher_student([0.9, 0.1], 0.5).tolist() == [TEACHER, STUDENT]
    assert categorize_teacher_student([], []).tolist() == []


def test_two_way_beta_zero() -> None:
    out = categorize_teacher_student([0.5, 0.51, 0.49], [0.5, 0.5, 0.5], beta=0.0)
    assert out.tolist() == [COMMON, TEACHER, STUDENT]


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="beta"):
        categorize_teacher_student([0.5], [0.5], beta=1.0)
    with pytest.raises(ValueError, match="p_teacher"):
        categorize_teacher_student([1.5], [0.5])
    with pytest.raises(ValueError, match="alpha"):
        categorize_three_way([0.5], [0.5], [0.5], alpha=-0.1)


@pytest.mark.parametrize(
    ("pt", "ps", "pd", "expected"),
    [
        (0.50, 0.52, 0.48, SHARED),  # all three differences within alpha
        (0.55, 0.50, 0.50, SHARED),  # |dTS| == alpha exactly: "<=" keeps it shared
        (0.50, 0.50, 0.45, SHARED),  # |dSD| == |dTD| == alpha exactly
        (0.56, 0.50, 0.50, BOOSTED),  # |dTS| just above alpha but not above beta
        (0.9, 0.3, 0.9, TEACHER),  # dTS = 0.6 > beta (D copied the teacher)
        (0.2, 0.8, 0.8, STUDENT),  # dTS = -0.6 < -beta
        (0.5, 0.5, 0.9, BOOSTED),  # T and S agree, D moved up
        (0.5, 0.55, 0.2, BOOSTED),  # T and S agree (|dTS| = alpha), D moved down
        (0.6, 0.5, 0.6, BOOSTED),  # dTS == beta exactly: not teacher (strict), so boosted
        (0.5, 0.6, 0.5, BOOSTED),  # dTS == -beta exactly: not student
        (np.nan, 0.5, 0.5, UNSCORED),
        (0.5, 0.5, np.nan, UNSCORED),
    ],
)
def test_three_way_rules(pt: float, ps: float, pd: float, expected: str) -> None:
    assert categorize_three_way([pt], [ps], [pd], alpha=0.05, beta=0.1).tolist() == [expected]


def test_three_way_vectorized() -> None:
    out = categorize_three_way([0.9, 0.5, 0.5], [0.3, 0.5, 0.5], [0.9, 0.5, 0.9])
    assert out.tolist() == [TEACHER, SHARED, BOOSTED]


def test_three_way_teacher_when_d_matches_teacher() -> None:
    # D copied the teacher: dTD = 0 but dTS > beta, so the sentence is teacher-driven, not shared.
    assert categorize_three_way([0.9], [0.5], [0.9]).tolist() == [TEACHER]
    assert categorize_three_way([0.3], [0.9], [0.9]).tolist() == [STUDENT]


def test_category_counts() -> None:
    counts = category_counts(np.array([TEACHER, COMMON, TEACHER, UNSCORED, "other"]))
    assert counts == {TEACHER: 2, COMMON: 1, UNSCORED: 1, "other": 1}
    assert list(counts) == [TEACHER, COMMON, UNSCORED, "other"]
    assert category_counts([]) == {}


def test_config_defaults_and_validation() -> None:
    cfg = ProvenanceConfig()
    assert (cfg.beta, cfg.alpha, cfg.teacher_logprobs) == (0.1, 0.05, "generation")
    assert (cfg.batch_size, cfg.max_length) == (8, 1024)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\)"):
        ProvenanceConfig(beta=1.0)
    with pytest.raises(ValueError, match="alpha"):
        ProvenanceConfig(alpha=-0.01)
    with pytest.raises(ValueError, match="teacher_logprobs"):
        ProvenanceConfig(teacher_logprobs="api")
    with pytest.raises(ValueError, match="batch_size"):
        ProvenanceConfig(batch_size=0)
    with pytest.raises(ValueError, match="max_length"):
        ProvenanceConfig(max_length=True)
    with pytest.raises(ValueError, match="beta must be a number"):
        ProvenanceConfig(beta="0.1")  # type: ignore[arg-type]


def test_config_from_dict() -> None:
    cfg = ProvenanceConfig.from_dict({"beta": 0.2, "teacher_logprobs": "rescore"})
    assert cfg.beta == 0.2 and cfg.teacher_logprobs == "rescore"
    with pytest.raises(ValueError, match=r"provenance\.betta: unknown key"):
        ProvenanceConfig.from_dict({"betta": 0.2})
    with pytest.raises(ValueError, match=r"assets\.scores: beta"):
        ProvenanceConfig.from_dict({"beta": 2}, where="assets.scores")
    with pytest.raises(ValueError, match="expected a mapping"):
        ProvenanceConfig.from_dict([("beta", 0.2)])  # type: ignore[arg-type]


def test_probabilities_a_hair_above_one_are_clipped() -> None:
    assert categorize_teacher_student([1.0 + 1e-9], [0.5]).tolist() == [TEACHER]
