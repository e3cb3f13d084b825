"""Sample-level curation in filter_dataset: difficulty band, concise traces, diverse responses."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from distill_dag.configbase import ConfigError
from distill_dag.difficulty import NAMESPACE, DifficultyConfig, in_band, student_pass_rates
from distill_dag.diversity import edit_distances, embedding_distances, farthest_first
from distill_dag.filtering import FilterConfig
from distill_dag.generation.config import StudentConfig
from distill_dag.generation.run import Namespace
from distill_dag.store import Store
from tests.conftest import SMOLLM
from tests.test_filtering import STUDENT, frame, queries, run, sample


def rates(**by_query: float) -> pl.DataFrame:
    return pl.DataFrame({"query_id": list(by_query), "student_samples": [4] * len(by_query),
                         "student_correct": [int(r * 4) for r in by_query.values()],
                         "student_pass_rate": list(by_query.values())})


# -- difficulty -----------------------------------------------------------------------------------

def test_band_labels_queries_by_the_students_pass_rate():
    banded = in_band(rates(q0=0.0, q1=0.5, q2=1.0, q3=0.75),
                     DifficultyConfig(num_samples=4, min_pass_rate=0.25, max_pass_rate=0.75))
    assert dict(zip(banded["query_id"], banded["difficulty"], strict=True)) == {
        "q0": "too_hard", "q1": "kept", "q2": "too_easy", "q3": "kept"}


def test_queries_the_student_solves_are_dropped_and_counted():
    samples = frame(sample("a", query_id="q0"), sample("b", query_id="q1"),
                    sample("c", query_id="q2"), sample("d", query_id="q2", sample_index=1))
    from distill_dag.filtering import filter_dataset

    cfg = FilterConfig(difficulty=DifficultyConfig(num_samples=4, max_pass_rate=0.5))
    result = filter_dataset(samples, queries(), ["A"], cfg, STUDENT,
                            rates(q0=0.0, q1=1.0, q2=0.25))
    assert result.dataset["query_id"].to_list() == ["q0", "q2"]
    assert result.dataset["student_pass_rate"].to_list() == [0.0, 0.25]
    assert result.removed["too_easy_for_student"] == 1
    assert result.removed_shares == {"difficulty": pytest.approx(1 / 3)}
    # Negatives are kept whatever the difficulty (a later contrastive stage may want them).
    wrong = frame(sample("w", query_id="q1", correct=False))
    assert filter_dataset(wrong, queries(), ["A"], cfg, STUDENT,
                          rates(q1=1.0)).negatives.height == 1


def test_a_query_without_a_pass_rate_is_kept():
    from distill_dag.filtering import filter_dataset

    cfg = FilterConfig(difficulty=DifficultyConfig(num_samples=4, max_pass_rate=0.5))
    result = filter_dataset(frame(sample("a", query_id="q0")), queries(), ["A"], cfg, STUDENT,
                            rates(q1=1.0))
    assert result.dataset["query_id"].to_list() == ["q0"]


def test_student_pass_rates_come_from_the_generation_cache(tmp_path):
    """The real student answers twice per query; a second call generates nothing."""
    store = Store(tmp_path / "store")
    qs = pl.DataFrame({"query_id": ["a", "b"], "split": ["train", "train"],
                       "prompt": ["What is 2 + 3?", "Tom has 4 apples and eats 1. How many?"],
                       "reference_answer": ["5", "3"]})
    cfg = DifficultyConfig(num_samples=2, max_new_tokens=12)
    student = StudentConfig(model=SMOLLM)
    first = student_pass_rates(student, cfg, qs, store, "cpu", "fp32", show_progress=False)
    assert first.generated == 4
    assert first.per_query["student_samples"].to_list() == [2, 2]
    assert first.per_query["student_pass_rate"].is_between(0, 1).all()
    again = student_pass_rates(student, cfg, qs, store, "cpu", "fp32", show_progress=False)
    assert again.generated == 0
    assert again.per_query.equals(first.per_query)
    more = student_pass_rates(student, DifficultyConfig(num_samples=3, max_new_tokens=12), qs,
                              store, "cpu", "fp32", show_progress=False)
    assert more.generated == 2  # only sample index 2 of each query is new


# -- concise traces -------------------------------------------------------------------------------

def test_concise_ratio_drops_traces_much_longer_than_the_shortest_correct_one():
    samples = frame(sample("short", response="x" * 100, n_teacher=1),
                    sample("ok", response="x" * 150, n_teacher=2, sample_index=1),
                    sample("long", response="x" * 400, n_teacher=9, sample_index=2),
                    sample("wrong", response="x" * 40, correct=False, sample_index=3))
    result = run(samples, concise_ratio=1.5)
    # The rambling trace had the most Teacher sentences, but is 4x the shortest correct one
    # (in characters); the incorrect short answer does not count as the shortest.
    assert result.dataset["request_key"].to_list() == ["ok"]
    assert result.removed["not_concise"] == 1
    assert result.removed_shares == {"concise": pytest.approx(1 / 3)}
    assert run(samples).dataset["request_key"].to_list() == ["long"]


# -- diversity ------------------------------------------------------------------------------------

def test_farthest_first_starts_with_the_best_and_spreads_out():
    distances = np.array([[0.0, 0.1, 0.9, 0.5],
                          [0.1, 0.0, 0.8, 0.6],
                          [0.9, 0.8, 0.0, 0.4],
                          [0.5, 0.6, 0.4, 0.0]])
    assert farthest_first(distances, 2) == [0, 2]
    assert farthest_first(distances, 3) == [0, 2, 3]  # 3 is 0.4 from its nearest; 1 only 0.1
    assert farthest_first(distances, 4, min_distance=0.3) == [0, 2, 3]
    assert farthest_first(distances[:1, :1], 3) == [0]


def test_edit_and_embedding_distances():
    edit = edit_distances(["abcd", "abcx", "wxyz"])
    assert edit[0, 1] == pytest.approx(0.25) and edit[0, 2] == pytest.approx(1.0)
    assert np.allclose(np.diag(edit), 0)
    unit = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    assert np.allclose(embedding_distances(unit), [[0, 1, 0], [1, 0, 1], [0, 1, 0]])


TRACE = "Tom has 5 apples. He buys 7 more. 5 + 7 = 12. The answer is 12."
TRACE_COPY = "Tom has 5 apples. He buys 7 more. 5 + 7 = 12. So the answer is 12."
TRACE_OTHER = "Start from 7 bought apples and add the 5 he had: 12 in all. The answer is 12."


@pytest.mark.parametrize("metric", ["edit", "embedding"])
def test_diversity_keeps_a_different_trace_over_a_near_copy(metric):
    samples = frame(sample("best", response=TRACE, n_teacher=5),
                    sample("copy", response=TRACE_COPY, n_teacher=4, sample_index=1),
                    sample("other", response=TRACE_OTHER, n_teacher=1, sample_index=2))
    ranked = run(samples, per_query=2)
    assert sorted(ranked.dataset["request_key"]) == ["best", "copy"]  # by Teacher sentences
    diverse = run(samples, per_query=2, diversity=metric)
    assert sorted(diverse.dataset["request_key"]) == ["best", "other"]
    assert diverse.removed["not_diverse_or_best"] == 1
    # A floor on the distance: with one far trace only, a third slot stays empty.
    floor = {"edit": 0.2, "embedding": 0.05}[metric]
    capped = run(samples, per_query=3, diversity=metric, min_diversity_distance=floor)
    assert sorted(capped.dataset["request_key"]) == ["best", "other"]


def test_diversity_works_per_query_and_with_one_candidate():
    samples = frame(sample("a0", query_id="q0", response=TRACE, n_teacher=3),
                    sample("b0", query_id="q1", response=TRACE, n_teacher=1),
                    sample("a1", query_id="q0", response=TRACE_COPY, sample_index=1, n_teacher=2),
                    sample("a2", query_id="q0", response=TRACE_OTHER, sample_index=2))
    result = run(samples, per_query=2, diversity="edit")
    assert result.dataset.select("query_id", "request_key").rows() == [
        ("q0", "a0"), ("q0", "a2"), ("q1", "b0")]


# -- configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "message"), [
    ({"difficulty": {"num_samples": -1}}, "filtering.difficulty: num_samples"),
    ({"difficulty": {"min_pass_rate": 0.8, "max_pass_rate": 0.5}}, "keep nothing"),
    ({"difficulty": {"samples": 4}}, "filtering.difficulty"),
    ({"concise_ratio": 0.5}, "concise_ratio"),
    ({"diversity": "cosine"}, "diversity must be one of"),
    ({"min_diversity_distance": 3}, "min_diversity_distance"),
    ({"diversity": "edit", "per_query": 1}, "set per_query >= 2"),
    ({"min_diversity_distance": 0.2}, "needs diversity edit or embedding"),
    ({"diversity": "edit", "per_query": 2, "min_diversity_distance": 1.5}, "<= 1 with diversity"),
    ({"warn_removed_share": 1.5}, "warn_removed_share"),
])
def test_bad_curation_settings_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        FilterConfig.from_dict(data)


def test_difficulty_is_off_by_default_and_its_student_is_the_zero_shot_student():
    cfg = FilterConfig.from_dict({"difficulty": {"num_samples": 4}})
    assert not FilterConfig().difficulty.enabled and cfg.difficulty.enabled
    spec = cfg.difficulty.spec(StudentConfig(model=SMOLLM))
    assert Namespace("student", "difficulty") == NAMESPACE and spec.sampling.num_samples == 4
    assert spec.prompt.few_shot == 0
