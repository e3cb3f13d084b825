"""Tests for teacher metrics and the ranking rule."""

from __future__ import annotations

import math

import polars as pl
import pytest

from distill_dag.selection import (
    METRICS,
    RankingRule,
    compute_teacher_metrics,
    rank_teachers,
)

SAMPLE_ROWS = [
    # teacher, query, sample, correct, tokens, latency, student mean log-prob
    ("a", "q1", 0, True, 10, 1.0, -1.0),
    ("a", "q1", 1, False, 20, 2.0, None),
    ("a", "q2", 0, True, 30, 1.5, -2.0),
    ("a", "q2", 1, True, 40, 0.5, -3.0),
    ("a", "q3", 0, True, 100, 9.0, -9.0),  # q3: only a answered it -> excluded everywhere
    ("b", "q1", 0, False, 5, 1.0, None),
    ("b", "q2", 0, True, 15, 1.0, -0.5),
    ("b", "q2", 1, False, 10, 1.0, -0.1),  # incorrect: not in the student perplexity
    ("c", "q1", 0, False, 8, 0.25, None),
    ("c", "q2", 0, None, 12, 0.25, None),  # null correct counts as incorrect
]
SENTENCE_ROWS = [
    ("a", "q1", 0, "teacher", 0.3),
    ("a", "q1", 0, "common", 0.0),
    ("a", "q2", 1, "student", -0.2),
    ("a", "q3", 0, "teacher", 0.9),  # query not common
    ("b", "q2", 0, "teacher", 0.4),
    ("b", "q2", 0, "unscored", None),
    ("b", "q1", 5, "student", -0.5),  # no such sample
]


def samples_frame() -> pl.DataFrame:
    cols = ["teacher", "query_id", "sample_index", "correct", "completion_tokens", "latency_s"]
    return pl.DataFrame(
        SAMPLE_ROWS, schema=[*cols, "student_mean_logprob"], orient="row"
    ).with_columns(pl.col("student_mean_logprob").cast(pl.Float64))


def sentences_frame() -> pl.DataFrame:
    return pl.DataFrame(
        SENTENCE_ROWS,
        schema=["teacher", "query_id", "sample_index", "category", "d_ts"],
        orient="row",
    )


@pytest.fixture
def metrics() -> pl.DataFrame:
    return compute_teacher_metrics(samples_frame(), sentences_frame())


def by_teacher(df: pl.DataFrame) -> dict[str, dict]:
    return {row["teacher"]: row for row in df.to_dicts()}


def test_metric_arithmetic(metrics: pl.DataFrame) -> None:
    m = by_teacher(metrics)
    assert list(m) == ["a", "b", "c"]
    assert metrics.columns == ["teacher", *METRICS, "n_queries_total", "n_common_queries"]
    a, b, c = m["a"], m["b"], m["c"]
    assert (a["n_queries"], a["n_samples"], a["n_queries_total"]) == (2, 4, 3)
    assert a["pass_rate"] == pytest.approx(0.75)
    assert a["yield_per_query"] == pytest.approx(1.5)
    assert a["solved_share"] == pytest.approx(1.0)
    assert a["length_mean"] == pytest.approx(25.0)
    assert a["length_std"] == pytest.approx(math.sqrt(125.0))  # population std of 10,20,30,40
    assert a["student_ppl_correct"] == pytest.approx(math.exp(2.0))  # mean(-1, -2, -3) = -2
    assert a["mean_d_ts"] == pytest.approx((0.3 + 0.0 - 0.2) / 3)
    assert a["teacher_sentence_fraction"] == pytest.approx(1 / 3)
    assert (a["tokens_generated"], a["seconds"]) == (100, pytest.approx(5.0))

    assert (b["n_samples"], b["n_queries_total"]) == (3, 2)
    assert b["pass_rate"] == pytest.approx(1 / 3)
    assert b["yield_per_query"] == pytest.approx(0.5)
    assert b["solved_share"] == pytest.approx(0.5)
    assert b["length_std"] == pytest.approx(math.sqrt(50 / 3))
    assert b["student_ppl_correct"] == pytest.approx(math.exp(0.5))
    assert b["mean_d_ts"] == pytest.approx(0.4)
    assert b["teacher_sentence_fraction"] == pytest.approx(1.0)

    assert c["pass_rate"] == 0.0 and c["yield_per_query"] == 0.0
    assert c["student_ppl_correct"] is None
    assert c["mean_d_ts"] is None and c["teacher_sentence_fraction"] is None
    assert (c["tokens_generated"], c["seconds"]) == (20, pytest.approx(0.5))


def test_only_common_queries_are_compared(metrics: pl.DataFrame) -> None:
    assert metrics["n_common_queries"].to_list() == [2, 2, 2]
    assert metrics["n_queries"].to_list() == [2, 2, 2]


def test_no_common_query_is_an_error() -> None:
    samples = samples_frame().filter(
        ~((pl.col("teacher") == "c") & (pl.col("query_id") == "q1"))
        & ~((pl.col("teacher") == "b") & (pl.col("query_id") == "q2"))
    )
    with pytest.raises(ValueError, match="no query was answered by all 3 teachers"):
        compute_teacher_metrics(samples, sentences_frame())


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match="latency_s"):
        compute_teacher_metrics(samples_frame().drop("latency_s"), sentences_frame())


def test_default_rule_ranks_by_yield(metrics: pl.DataFrame) -> None:
    result = rank_teachers(metrics, RankingRule())
    assert result.chosen == ["a"]
    assert result.table["teacher"].to_list() == ["a", "b", "c"]
    assert result.table["rank"].to_list() == [1, 2, 3]
    assert result.table["chosen"].to_list() == [True, False, False]
    assert "a ranked 1: yield_per_query 1.5 > 0.5 (b)" in result.explanation
    assert "2 queries answered by all 3 teachers" in result.explanation
    assert result.explanation.splitlines()[0].startswith("Rule:")


def tiny(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "teacher": pl.String,
            "pass_rate": pl.Float64,
            "yield_per_query": pl.Float64,
            "teacher_sentence_fraction": pl.Float64,
            "student_ppl_correct": pl.Float64,
        },
        orient="row",
    )


def test_lexicographic_order_and_ties() -> None:
    df = tiny(
        [
            ("x", 0.5, 0.5, 0.3, 2.0),
            ("y", 0.5, 0.5, 0.4, 9.0),  # ties x on yield; wins on teacher fraction
            ("z", 0.5, 0.5, 0.4, 3.0),  # ties y on both; wins on lower perplexity
            ("w", 0.5, 0.4, 0.9, 1.0),
        ]
    )
    result = rank_teachers(df, RankingRule(top_k=2))
    assert result.table["teacher"].to_list() == ["z", "y", "x", "w"]
    assert result.chosen == ["z", "y"]
    assert "tied on yield_per_query 0.5 vs 0.5, teacher_sentence_fraction 0.4 vs 0.4" in (
        result.explanation
    )
    assert "student_ppl_correct 3 < 9 (y)" in result.explanation


def test_tie_tolerance_lets_the_next_key_decide() -> None:
    df = tiny([("p", 0.5, 0.51, 0.1, 1.0), ("q", 0.5, 0.50, 0.2, 1.0)])
    assert rank_teachers(df, RankingRule()).chosen == ["p"]
    assert rank_teachers(df, RankingRule(tie_tolerance=0.05)).chosen == ["q"]


def test_full_tie_goes_by_name_and_missing_values_rank_last() -> None:
    df = tiny([("m", 0.5, 0.5, 0.5, 1.0), ("k", 0.5, 0.5, 0.5, 1.0), ("n", 0.5, None, 0.9, 1.0)])
    result = rank_teachers(df, RankingRule())
    assert result.table["teacher"].to_list() == ["k", "m", "n"]
    assert "order by name" in result.table["reason"][0]


def test_ascending_key() -> None:
    df = tiny([("p", 0.5, 0.5, 0.5, 4.0), ("q", 0.5, 0.5, 0.5, 2.0)])
    rule = RankingRule(order_by=["student_ppl_correct asc"])
    assert rank_teachers(df, rule).chosen == ["q"]
    rule = RankingRule(order_by=["student_ppl_correct DESC"])
    assert rank_teachers(df, rule).chosen == ["p"]


def test_ineligible_teachers(metrics: pl.DataFrame) -> None:
    result = rank_teachers(metrics, RankingRule(min_pass_rate=0.5, top_k=3))
    assert result.chosen == ["a"]  # fewer than top_k are eligible
    table = by_teacher(result.table)
    assert table["b"]["eligible"] is False and table["b"]["rank"] == 2
    assert table["b"]["reason"] == "ineligible: pass_rate 0.333 < min_pass_rate 0.5"
    assert table["c"]["reason"].startswith("ineligible: pass_rate 0 <")
    assert "the only eligible teacher" in result.explanation


def test_no_eligible_teacher_raises_with_numbers(metrics: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"min_pass_rate 0.9 \(a 0.75, b 0.333, c 0\)"):
        rank_teachers(metrics, RankingRule(min_pass_rate=0.9))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"order_by": ["yeild_per_query desc"]}, "unknown metric 'yeild_per_query'"),
        ({"order_by": ["pass_rate up"]}, "must look like"),
        ({"order_by": ["pass_rate"]}, "must look like"),
        ({"order_by": "pass_rate desc"}, "must be a list"),
        ({"order_by": []}, "at least one"),
        ({"order_by": ["pass_rate desc", "pass_rate asc"]}, "twice"),
        ({"min_pass_rate": 1.5}, "min_pass_rate"),
        ({"tie_tolerance": -0.1}, "tie_tolerance"),
        ({"top_k": 0}, "top_k"),
    ],
)
def test_rule_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RankingRule(**kwargs)


def test_rule_from_dict() -> None:
    rule = RankingRule.from_dict({"order_by": ["pass_rate desc"], "top_k": 2})
    assert rule.keys == [("pass_rate", "desc")] and rule.top_k == 2
    with pytest.raises(ValueError, match=r"selection\.rule\.topk: unknown key"):
        RankingRule.from_dict({"topk": 2}, where="selection.rule")
    with pytest.raises(ValueError, match=r"ranking: order_by entry 'bogus asc'"):
        RankingRule.from_dict({"order_by": ["bogus asc"]})


def test_metric_missing_from_frame() -> None:
    df = tiny([("p", 0.5, 0.5, 0.5, 1.0)])
    with pytest.raises(ValueError, match="no column"):
        rank_teachers(df, RankingRule(order_by=["mean_d_ts desc"]))


def test_markdown(metrics: pl.DataFrame) -> None:
    md = rank_teachers(metrics, RankingRule()).to_markdown()
    lines = md.splitlines()
    assert lines[0].startswith("| rank | teacher |")
    assert lines[2].startswith("| 1 | a |")
    assert "| 0.333 |" in md  # b's pass rate, 3 significant digits
    assert "| 7.39 |" in md  # a's student perplexity e^2
    assert "n/a" in md  # c has no perplexity
    assert len(lines) == 2 + 3


def test_cost_per_correct_sample_prices_tokens_and_device_hours():
    """An endpoint teacher pays per token, a local one per device-hour; the cost of a teacher's
    samples is divided by its verified-correct ones, on the common queries only."""
    from distill_dag.selection import sample_costs

    samples = samples_frame().with_columns(pl.lit(100).alias("prompt_tokens"))
    prices = {"a": {"per_million_input": 1.0, "per_million_output": 4.0, "per_second": 0.0},
              "b": {"per_million_input": 0.0, "per_million_output": 0.0, "per_second": 0.5}}
    costs = sample_costs(samples, prices)
    assert costs[0] == pytest.approx((100 * 1.0 + 10 * 4.0) / 1e6)  # a: tokens only
    assert costs[5] == pytest.approx(1.0 * 0.5)  # b: one second at 0.5 per second
    assert costs[8] == 0.0  # c: no prices set
    m = compute_teacher_metrics(samples.with_columns(costs), sentences_frame())
    row = {r["teacher"]: r for r in m.iter_rows(named=True)}
    # a on q1, q2: 4 samples, 3 correct, 100 completion tokens, 5 s.
    assert row["a"]["tokens_per_correct"] == pytest.approx(100 / 3)
    assert row["a"]["seconds_per_correct"] == pytest.approx(5.0 / 3)
    assert row["a"]["cost_per_correct"] == pytest.approx((400 * 1.0 + 100 * 4.0) / 1e6 / 3)
    assert row["b"]["cost_per_correct"] == pytest.approx(3 * 0.5 / 1)
    assert row["c"]["cost_per_correct"] is None  # no correct sample: no price per one
    assert compute_teacher_metrics(samples_frame(), sentences_frame())["cost"].null_count() == 3


def test_teacher_prices_come_from_the_endpoint_and_the_hourly_rate():
    from distill_dag.generation.config import ConfigError, TeacherConfig

    local = TeacherConfig.from_dict({"name": "t", "model": "pkg:smollm2-135m-instruct",
                                     "price_per_hour": 3.6}, "teachers[0]")
    assert local.prices() == {"per_million_input": 0.0, "per_million_output": 0.0,
                              "per_second": pytest.approx(0.001)}
    served = TeacherConfig.from_dict({
        "name": "s", "model": "pkg:smollm2-135m-instruct", "backend": "openai",
        "endpoint": {"base_url": "http://127.0.0.1:1/v1", "model": "m",
                     "price_per_million_input": 0.5, "price_per_million_output": 2.0}},
        "teachers[1]")
    assert served.prices()["per_million_output"] == 2.0
    with pytest.raises(ConfigError, match="price_per_hour"):
        TeacherConfig.from_dict({"name": "t", "model": "pkg:smollm2-135m-instruct",
                                 "price_per_hour": -1}, "teachers[0]")


def test_cost_per_kept_sample_divides_all_samples_by_what_reached_the_dataset():
    from distill_dag.selection import cost_per_kept_sample

    outputs = samples_frame().with_columns(pl.lit(100).alias("prompt_tokens"))
    kept = pl.DataFrame({"teacher": ["a", "a", "b"]})
    prices = {"a": {"per_million_input": 0.0, "per_million_output": 1e6, "per_second": 0.0},
              "b": {"per_million_input": 0.0, "per_million_output": 0.0, "per_second": 1.0}}
    rows = {r["teacher"]: r for r in cost_per_kept_sample(outputs, kept, prices)
            .iter_rows(named=True)}
    # a: all 5 samples (q3 too), 4 correct, 200 tokens at 1 per token, 2 kept.
    assert (rows["a"]["samples"], rows["a"]["correct"], rows["a"]["kept"]) == (5, 4, 2)
    assert rows["a"]["cost_per_kept"] == pytest.approx(100.0)
    assert rows["a"]["cost_per_correct"] == pytest.approx(50.0)
    assert rows["b"]["cost_per_kept"] == pytest.approx(3.0) and rows["b"]["tokens_per_kept"] == 30
    assert rows["c"]["kept"] == 0 and rows["c"]["cost_per_kept"] is None


def test_proxy_agreement_is_kendall_tau_against_the_trial():
    from distill_dag.selection import proxy_agreement

    table = pl.DataFrame({
        "teacher": ["a", "b", "c"],
        "pass_rate": [0.9, 0.5, 0.1],            # same order as the trial: tau +1
        "student_ppl_correct": [3.0, 2.0, 1.0],  # lower was meant better, yet rises with it
        "yield_per_query": [0.2, 0.2, 0.2],      # no spread: no tau
        "trial_pass_at_1": [0.6, 0.4, 0.2],
    })
    got = {r["metric"]: r for r in proxy_agreement(table).iter_rows(named=True)}
    assert got["pass_rate"]["kendall_tau"] == pytest.approx(1.0) and got["pass_rate"]["agrees"]
    ppl = got["student_ppl_correct"]
    assert ppl["kendall_tau"] == pytest.approx(1.0) and ppl["better"] == "lower"
    assert ppl["agrees"] is False  # lower ppl was meant to be better, the trial says otherwise
    assert got["yield_per_query"]["kendall_tau"] is None
    assert "n_queries" not in got and "teacher_sentence_fraction" not in got  # absent column
    # One swapped pair of three: tau-b = (2 - 1) / 3.
    swapped = table.with_columns(pl.Series("pass_rate", [0.9, 0.1, 0.5]))
    tau = proxy_agreement(swapped).filter(pl.col("metric") == "pass_rate")["kendall_tau"][0]
    assert tau == pytest.approx(1 / 3)


def test_the_trial_metric_needs_trial_distillation_on():
    from distill_dag.configbase import ConfigError

    with pytest.raises(ConfigError, match=r"trial\.steps"):
        RankingRule.from_dict({"order_by": ["trial_pass_at_1 desc"]})
    rule = RankingRule.from_dict({"order_by": ["trial_pass_at_1 desc"], "trial": {"steps": 5}})
    assert rule.keys == [("trial_pass_at_1", "desc")] and rule.trial.enabled
    with pytest.raises(ConfigError, match=r"teacher_ranking\.trial"):
        RankingRule.from_dict({"trial": {"steps": -1}})
