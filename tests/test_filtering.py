"""Behaviour of filter_dataset: who and what is kept, best-of-N rules, bounds, budget, records."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from distill_dag.difficulty import DifficultyConfig
from distill_dag.filtering import FilterConfig, filter_dataset
from distill_dag.generation.config import ConfigError, PromptConfig

STUDENT = PromptConfig(style="chat", system="Solve it.", instruction="Problem: {prompt}\nThink.")


def queries(train: int = 3, evals: int = 1) -> pl.DataFrame:
    rows = [(f"q{i}", f"prompt {i}?", "train", str(i)) for i in range(train)]
    rows += [(f"e{i}", f"eval prompt {i}?", "eval", str(i)) for i in range(evals)]
    return pl.DataFrame(
        rows, schema=["query_id", "prompt", "split", "reference_answer"], orient="row"
    )


def sample(key: str, **overrides: Any) -> dict[str, Any]:
    row = {
        "request_key": key,
        "teacher": "A",
        "query_id": "q0",
        "sample_index": 0,
        "correct": True,
        "completion_tokens": 20,
        "latency_s": 0.1,
        "n_teacher": 1,
        "n_sentences": 4,
        "teacher_fraction": None,
        "response": f"response {key}",
        "finish_reason": "stop",
    }
    row.update(overrides)
    if row["teacher_fraction"] is None:
        row["teacher_fraction"] = row["n_teacher"] / row["n_sentences"]
    return row


def frame(*rows: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame(
        list(rows),
        schema={
            "request_key": pl.Utf8, "teacher": pl.Utf8, "query_id": pl.Utf8,
            "sample_index": pl.Int64, "correct": pl.Boolean, "completion_tokens": pl.Int64,
            "latency_s": pl.Float64, "n_teacher": pl.Int64, "n_sentences": pl.Int64,
            "teacher_fraction": pl.Float64, "response": pl.Utf8, "finish_reason": pl.Utf8,
        },
    )  # fmt: skip


def run(samples: pl.DataFrame, chosen=("A",), prompt: PromptConfig = STUDENT, **cfg: Any):
    return filter_dataset(samples, queries(), list(chosen), FilterConfig(**cfg), prompt)


def keys(df: pl.DataFrame) -> list[str]:
    return sorted(df["request_key"].to_list())


def test_only_chosen_teachers_are_kept() -> None:
    samples = frame(
        sample("a0", teacher="A", query_id="q0"),
        sample("b0", teacher="B", query_id="q1"),
        sample("c0", teacher="C", query_id="q2"),
        sample("c1", teacher="C", query_id="q2", correct=False),
    )
    result = run(samples, chosen=("A", "B"))
    assert keys(result.dataset) == ["a0", "b0"]
    assert result.removed["other_teachers"] == 2
    assert result.negatives.height == 0  # C's incorrect sample is not a negative


def test_correct_go_to_dataset_incorrect_of_chosen_to_negatives() -> None:
    samples = frame(
        sample("ok", query_id="q0"),
        sample("bad", query_id="q1", correct=False),
        sample("unknown", query_id="q2", correct=None),  # unverifiable: not a training record
        sample("other_bad", teacher="C", query_id="q1", correct=False),
    )
    result = run(samples)
    assert keys(result.dataset) == ["ok"]
    assert "bad" in keys(result.negatives)
    assert "other_bad" not in keys(result.negatives)
    assert result.dataset["correct"].all()
    assert result.removed["incorrect"] == 2


def test_best_of_n_uses_absolute_teacher_count_not_fraction() -> None:
    samples = frame(
        sample("many", n_teacher=3, n_sentences=10, completion_tokens=40),  # 0.3
        sample("dense", n_teacher=2, n_sentences=2, completion_tokens=30),  # 1.0
        sample("none", n_teacher=0, n_sentences=1, completion_tokens=10),
    )
    assert keys(run(samples).dataset) == ["many"]
    assert keys(run(samples, best_of_n="teacher_fraction").dataset) == ["dense"]
    assert keys(run(samples, best_of_n="shortest").dataset) == ["none"]
    assert run(samples).removed["not_best_of_n"] == 2


def test_best_of_n_is_per_query() -> None:
    samples = frame(
        sample("q0_lo", query_id="q0", n_teacher=1),
        sample("q0_hi", query_id="q0", n_teacher=2),
        sample("q1_lo", query_id="q1", n_teacher=5),
        sample("q1_hi", query_id="q1", n_teacher=9),
    )
    assert keys(run(samples).dataset) == ["q0_hi", "q1_hi"]


def test_teacher_count_tie_breaks_to_fewer_completion_tokens() -> None:
    samples = frame(
        sample("long", n_teacher=2, completion_tokens=40),
        sample("short", n_teacher=2, completion_tokens=12),
        sample("fewer", n_teacher=1, completion_tokens=5),
    )
    assert keys(run(samples).dataset) == ["short"]


def test_tie_on_everything_is_stable_by_request_key() -> None:
    rows = [sample(k, n_teacher=2, completion_tokens=10) for k in ("k3", "k1", "k2")]
    assert keys(run(frame(*rows)).dataset) == ["k1"]
    assert keys(run(frame(*reversed(rows))).dataset) == ["k1"]


def test_per_query_two_keeps_the_top_two() -> None:
    samples = frame(
        sample("t1", n_teacher=1),
        sample("t3", n_teacher=3),
        sample("t2", n_teacher=2),
        sample("other", query_id="q1", n_teacher=0),
    )
    result = run(samples, per_query=2)
    assert keys(result.dataset) == ["other", "t2", "t3"]
    assert result.removed["not_best_of_n"] == 1


def test_truncated_responses_dropped_only_when_configured() -> None:
    samples = frame(
        sample("cut", n_teacher=5, finish_reason="length"),
        sample("whole", n_teacher=1, finish_reason="stop"),
    )
    dropped = run(samples)
    assert keys(dropped.dataset) == ["whole"]
    assert dropped.removed["truncated"] == 1
    assert keys(run(samples, drop_truncated=False).dataset) == ["cut"]


def test_completion_length_bounds_are_inclusive() -> None:
    samples = frame(
        sample("t4", query_id="q0", completion_tokens=4),
        sample("t5", query_id="q1", completion_tokens=5),
        sample("t9", query_id="q2", completion_tokens=9),
        sample("t10", query_id="q2", completion_tokens=10, sample_index=1),
    )
    result = run(samples, min_completion_tokens=5, max_completion_tokens=9)
    assert keys(result.dataset) == ["t5", "t9"]
    assert result.removed["length_bounds"] == 2


def test_empty_response_is_dropped() -> None:
    samples = frame(sample("blank", response="  \n", n_teacher=9), sample("text", n_teacher=1))
    result = run(samples)
    assert keys(result.dataset) == ["text"]
    assert result.removed["empty_response"] == 1


def budget_samples(n: int = 12) -> tuple[pl.DataFrame, pl.DataFrame]:
    qs = pl.DataFrame(
        {
            "query_id": [f"q{i:02d}" for i in range(n)],
            "prompt": [f"p{i}" for i in range(n)],
            "split": ["train"] * n,
            "reference_answer": ["1"] * n,
        }
    )
    return frame(*[sample(f"k{i:02d}", query_id=f"q{i:02d}") for i in range(n)]), qs


def test_budget_caps_rows_deterministically_per_seed() -> None:
    samples, qs = budget_samples()

    def pick(seed: int) -> list[str]:
        result = filter_dataset(samples, qs, ["A"], FilterConfig(budget=4, seed=seed), STUDENT)
        assert result.dataset.height == 4
        assert result.removed["over_budget"] == 8
        return keys(result.dataset)

    assert pick(0) == pick(0)
    assert len({tuple(pick(seed)) for seed in range(6)}) > 1  # the seed matters
    uncapped = filter_dataset(samples, qs, ["A"], FilterConfig(budget=50), STUDENT)
    assert uncapped.dataset.height == 12
    assert "over_budget" not in uncapped.removed


def test_random_best_of_n_is_seeded() -> None:
    samples = frame(*[sample(f"k{i}", sample_index=i, n_teacher=i) for i in range(8)])
    picks = [keys(run(samples, best_of_n="random", seed=s).dataset) for s in range(6)]
    assert all(len(p) == 1 for p in picks)
    assert picks[0] == keys(run(samples, best_of_n="random", seed=0).dataset)
    assert len({p[0] for p in picks}) > 1


def test_eval_queries_never_appear() -> None:
    samples = frame(
        sample("eval_good", query_id="e0", n_teacher=50),
        sample("eval_bad", query_id="e0", correct=False),
        sample("unknown_query", query_id="zz"),
        sample("train", query_id="q0"),
    )
    result = run(samples)
    assert keys(result.dataset) == ["train"]
    assert result.negatives.height == 0
    assert result.removed["not_a_training_query"] == 3


def test_messages_follow_the_student_prompt() -> None:
    samples = frame(
        sample("a", query_id="q1", response="Step 1. The answer is 1."),
        sample("b", query_id="q0", response="The answer is 0."),
    )
    result = run(samples)
    data = result.dataset
    assert data["query_id"].to_list() == ["q0", "q1"]  # sorted output
    assert data["prompt"].to_list() == ["prompt 0?", "prompt 1?"]
    assert data["messages"].to_list()[1] == [
        {"role": "system", "content": "Solve it."},
        {"role": "user", "content": "Problem: prompt 1?\nThink."},
        {"role": "assistant", "content": "Step 1. The answer is 1."},
    ]
    # Provenance columns survive for analysis.
    assert {"n_teacher", "teacher_fraction", "completion_tokens"} <= set(data.columns)


def test_messages_without_system_prompt() -> None:
    result = run(frame(sample("a")), prompt=PromptConfig(style="chat"))
    assert result.dataset["messages"].to_list() == [
        [
            {"role": "user", "content": "prompt 0?"},
            {"role": "assistant", "content": "response a"},
        ]
    ]


def test_removed_counts_add_up() -> None:
    samples = frame(
        sample("other", teacher="C"),
        sample("eval", query_id="e0"),
        sample("wrong", correct=False),
        sample("blank", response=""),
        sample("cut", finish_reason="length"),
        sample("long", completion_tokens=999),
        sample("loser", n_teacher=0),
        sample("winner", n_teacher=3),
        sample("q1", query_id="q1"),
        sample("q2", query_id="q2"),
    )
    result = run(samples, max_completion_tokens=100, budget=2, seed=0)
    assert result.removed == {
        "other_teachers": 1,
        "not_a_training_query": 1,
        "incorrect": 1,
        "empty_response": 1,
        "truncated": 1,
        "length_bounds": 1,
        "not_best_of_n": 1,
        "over_budget": 1,
    }
    assert result.dataset.height + sum(result.removed.values()) == samples.height
    assert all(v > 0 for v in run(frame(sample("x"))).removed.values())


def test_nothing_survives_gives_empty_dataset_with_schema() -> None:
    result = run(frame(sample("wrong", correct=False)))
    assert result.dataset.height == 0
    assert {"messages", "prompt", "request_key"} <= set(result.dataset.columns)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"best_of_n": "most_teacher"}, "best_of_n"),
        ({"per_query": 0}, "per_query"),
        ({"min_completion_tokens": 10, "max_completion_tokens": 5}, "min_completion_tokens"),
        ({"min_completion_tokens": -1}, "min_completion_tokens"),
        ({"budget": 0}, "budget"),
    ],
)
def test_invalid_config_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        FilterConfig(**kwargs)
    assert isinstance(info.value, ValueError)
    assert "filtering" in str(info.value)


def test_from_dict_rejects_unknown_keys() -> None:
    assert FilterConfig.from_dict({"per_query": 3}).per_query == 3
    with pytest.raises(ConfigError, match=r"filtering.*per_qury"):
        FilterConfig.from_dict({"per_qury": 3})


def test_the_renamed_selection_key_names_best_of_n() -> None:
    with pytest.raises(ConfigError, match=r"^filtering: 'selection' was renamed to 'best_of_n'"):
        FilterConfig.from_dict({"selection": "shortest"})
    assert FilterConfig.from_dict({"best_of_n": "shortest"}).best_of_n == "shortest"


def test_the_warning_threshold_is_not_an_output_setting() -> None:
    base = FilterConfig()
    assert FilterConfig(warn_removed_share=0.5).fingerprint() == base.fingerprint()
    assert FilterConfig(best_of_n="shortest").fingerprint() != base.fingerprint()
    assert FilterConfig(difficulty=DifficultyConfig(num_samples=4)).fingerprint() \
        != base.fingerprint()
