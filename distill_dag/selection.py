"""Per-teacher metrics on a common query set, and an explicit, configurable rule that ranks them."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import polars as pl

from distill_dag.configbase import Config, ConfigError, check_int, check_number, setting
from distill_dag.provenance.categories import TEACHER, UNSCORED

SAMPLE_COLUMNS = (
    "teacher",
    "query_id",
    "sample_index",
    "correct",
    "completion_tokens",
    "latency_s",
    "student_mean_logprob",
)
SENTENCE_COLUMNS = ("teacher", "query_id", "sample_index", "category", "d_ts")

# Metric name -> what it measures; every one can be used in RankingRule.order_by.
METRICS: dict[str, str] = {
    "n_queries": "queries used for the comparison (those answered by every teacher)",
    "n_samples": "samples on those queries",
    "pass_rate": "correct samples / samples",
    "yield_per_query": "correct samples / queries",
    "solved_share": "queries with at least one correct sample / queries",
    "length_mean": "mean completion tokens (all samples)",
    "length_std": "population std of completion tokens (all samples)",
    "student_ppl_correct": "student perplexity of the correct samples: exp(-mean log-prob)",
    "mean_d_ts": "mean pT - pS over scored sentences",
    "teacher_sentence_fraction": "teacher sentences / scored sentences",
    "tokens_generated": "completion tokens generated",
    "seconds": "generation seconds (sum of latencies)",
}

_DIRECTIONS = ("asc", "desc")


def _require_columns(df: pl.DataFrame, required: tuple[str, ...], name: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{name} is missing columns {missing}; has {df.columns}")


def compute_teacher_metrics(samples: pl.DataFrame, sentences: pl.DataFrame) -> pl.DataFrame:
    """One row per teacher with the metrics in ``METRICS``, plus n_queries_total and
    n_common_queries.

    Every metric (costs included) is computed on the queries that ALL teachers answered: a
    teacher that skipped the hard queries would otherwise look better on pass rate, yield and
    cost for reasons that have nothing to do with the teacher. ``n_queries_total`` keeps how many
    queries the teacher answered overall. A null ``correct`` counts as incorrect. Sentence
    metrics use the sentences of the same samples whose category is not null / "unscored"
    (mean_d_ts also skips null or NaN d_ts); they are null when a teacher has none.
    """
    _require_columns(samples, SAMPLE_COLUMNS, "samples")
    _require_columns(sentences, SENTENCE_COLUMNS, "sentences")
    if samples.height == 0:
        raise ValueError("samples is empty: no teacher to measure")

    totals = (
        samples.group_by("teacher")
        .agg(pl.col("query_id").n_unique().cast(pl.Int64).alias("n_queries_total"))
        .sort("teacher")
    )
    n_teachers = totals.height
    common = (
        samples.select("teacher", "query_id")
        .unique()
        .group_by("query_id")
        .len()
        .filter(pl.col("len") == n_teachers)
        .get_column("query_id")
    )
    if common.len() == 0:
        counts = ", ".join(f"{t}: {n}" for t, n in totals.iter_rows())
        raise ValueError(
            f"no query was answered by all {n_teachers} teachers (queries per teacher: {counts})"
        )

    s = samples.filter(pl.col("query_id").is_in(common.implode())).with_columns(
        pl.col("correct").fill_null(False).cast(pl.Boolean)
    )
    good_logprob = (
        pl.col("correct")
        & pl.col("student_mean_logprob").is_not_null()
        & pl.col("student_mean_logprob").cast(pl.Float64).is_finite()
    )
    per_query = s.group_by("teacher", "query_id").agg(pl.col("correct").any().alias("solved"))
    sample_metrics = s.group_by("teacher").agg(
        pl.col("query_id").n_unique().cast(pl.Int64).alias("n_queries"),
        pl.len().cast(pl.Int64).alias("n_samples"),
        pl.col("correct").sum().cast(pl.Int64).alias("_n_correct"),
        pl.col("completion_tokens").cast(pl.Float64).mean().alias("length_mean"),
        pl.col("completion_tokens").cast(pl.Float64).std(ddof=0).alias("length_std"),
        (-pl.col("student_mean_logprob").cast(pl.Float64).filter(good_logprob).mean())
        .exp()
        .alias("student_ppl_correct"),
        pl.col("completion_tokens").sum().cast(pl.Int64).alias("tokens_generated"),
        pl.col("latency_s").cast(pl.Float64).sum().alias("seconds"),
    )
    solved = per_query.group_by("teacher").agg(
        pl.col("solved").sum().cast(pl.Int64).alias("_n_solved")
    )

    # Only sentences of the samples measured above (same teachers, queries and sample indices).
    scored = sentences.join(
        s.select("teacher", "query_id", "sample_index"),
        on=["teacher", "query_id", "sample_index"],
        how="semi",
    ).filter(pl.col("category").is_not_null() & (pl.col("category") != UNSCORED))
    d_ts = pl.col("d_ts").cast(pl.Float64)
    sentence_metrics = scored.group_by("teacher").agg(
        d_ts.filter(d_ts.is_not_null() & d_ts.is_finite()).mean().alias("mean_d_ts"),
        ((pl.col("category") == TEACHER).sum() / pl.len())
        .cast(pl.Float64)
        .alias("teacher_sentence_fraction"),
    )

    out = (
        totals.join(sample_metrics, on="teacher", how="left")
        .join(solved, on="teacher", how="left")
        .join(sentence_metrics, on="teacher", how="left")
        .with_columns(
            (pl.col("_n_correct") / pl.col("n_samples")).alias("pass_rate"),
            (pl.col("_n_correct") / pl.col("n_queries")).alias("yield_per_query"),
            (pl.col("_n_solved") / pl.col("n_queries")).alias("solved_share"),
            pl.lit(common.len(), dtype=pl.Int64).alias("n_common_queries"),
        )
    )
    return out.select("teacher", *METRICS, "n_queries_total", "n_common_queries").sort("teacher")


@dataclass
class RankingRule(Config):
    """How teachers are ranked and chosen from their metrics (the `teacher_ranking` section)."""

    WHERE: ClassVar[str] = "teacher_ranking"

    min_pass_rate: float = setting(
        0.0, "Teachers with pass_rate below this are ineligible (the reason names the numbers). "
        "[0, 1].")
    order_by: list[str] = setting(
        factory=lambda: [
            "yield_per_query desc",
            "teacher_sentence_fraction desc",
            "student_ppl_correct asc",
        ],
        doc='Lexicographic sort keys, each "metric asc|desc"; later keys only break ties of '
        "earlier ones, and missing values always rank last. Metrics (measured on the queries "
        f"every teacher answered): {'; '.join(f'{k}: {v}' for k, v in METRICS.items())}.")
    tie_tolerance: float = setting(
        0.0, "Values within this relative tolerance (|a - b| <= tol * max(|a|, |b|)) tie on that "
        "key, so the next key decides. In [0, 1); 0 means only equal values tie.")
    top_k: int = setting(1, "How many teachers are chosen (>= 1); fewer when fewer are eligible.")

    def __post_init__(self) -> None:
        check_number("min_pass_rate", self.min_pass_rate, 0.0, 1.0)
        if isinstance(self.order_by, str) or not isinstance(self.order_by, list | tuple):
            raise ConfigError(
                f'order_by must be a list of "metric asc|desc" strings, got {self.order_by!r}'
            )
        self.order_by = list(self.order_by)
        if not self.order_by:
            raise ConfigError("order_by must name at least one metric")
        seen: set[str] = set()
        for item in self.order_by:
            metric, _ = _parse_key(item)
            if metric in seen:
                raise ConfigError(f"order_by names {metric!r} twice")
            seen.add(metric)
        check_number("tie_tolerance", self.tie_tolerance, 0.0)
        if self.tie_tolerance >= 1.0:
            raise ConfigError(f"tie_tolerance must be in [0, 1), got {self.tie_tolerance!r}")
        check_int("top_k", self.top_k)

    @property
    def keys(self) -> list[tuple[str, str]]:
        """order_by parsed into (metric, "asc" | "desc") pairs."""
        return [_parse_key(item) for item in self.order_by]

    def describe(self) -> str:
        """The rule in words."""
        parts = [f"{m} ({'higher' if d == 'desc' else 'lower'} is better)" for m, d in self.keys]
        tol = (
            f"values within {self.tie_tolerance:.3g} relative tolerance tie"
            if self.tie_tolerance > 0
            else "only equal values tie"
        )
        return (
            f"Rule: teachers with pass_rate < {_fmt(self.min_pass_rate)} are ineligible; "
            f"the rest are ordered by {', then '.join(parts)}; {tol}; remaining ties go to "
            f"the teacher name in alphabetical order; the top {self.top_k} "
            f"{'is' if self.top_k == 1 else 'are'} chosen."
        )


def _parse_key(item: Any) -> tuple[str, str]:
    if not isinstance(item, str):
        raise ConfigError(f'order_by entries must be strings "metric asc|desc", got {item!r}')
    parts = item.split()
    if len(parts) != 2 or parts[1].lower() not in _DIRECTIONS:
        raise ConfigError(f'order_by entry {item!r} must look like "metric asc" or "metric desc"')
    metric, direction = parts[0], parts[1].lower()
    if metric not in METRICS:
        raise ConfigError(
            f"order_by entry {item!r}: unknown metric {metric!r}; "
            f"known metrics: {', '.join(METRICS)}"
        )
    return metric, direction


def _fmt(value: Any) -> str:
    """3 significant digits, no scientific notation for everyday magnitudes."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e7 or abs(value) < 1e-4):
            return f"{value:.3g}"
        return np.format_float_positional(value, precision=3, fractional=False, trim="-")
    return str(value)


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _compare_key(a: Any, b: Any, direction: str, tol: float) -> int:
    """-1 if a ranks before b on this key, 1 if after, 0 on a tie."""
    if _missing(a) or _missing(b):
        return (1 if _missing(a) else 0) - (1 if _missing(b) else 0)
    if abs(a - b) <= tol * max(abs(a), abs(b)):
        return 0
    a_better = a > b if direction == "desc" else a < b
    return -1 if a_better else 1


def _why(row: dict[str, Any], other: dict[str, Any], rule: RankingRule) -> str:
    """Which key separates row from other, e.g. "yield_per_query 0.62 > 0.31 (gemma)"."""
    tied: list[str] = []
    for metric, direction in rule.keys:
        a, b = row[metric], other[metric]
        if _compare_key(a, b, direction, rule.tie_tolerance) != 0:
            sign = ">" if (not _missing(a) and not _missing(b) and a > b) else "<"
            if _missing(a) or _missing(b):
                sign = "vs"
            prefix = f"tied on {', '.join(tied)}; " if tied else ""
            return f"{prefix}{metric} {_fmt(a)} {sign} {_fmt(b)} ({other['teacher']})"
        tied.append(f"{metric} {_fmt(a)} vs {_fmt(b)}")
    return f"tied with {other['teacher']} on every key; order by name"


@dataclass
class RankingResult:
    """Outcome of rank_teachers."""

    table: pl.DataFrame
    """The metrics plus rank (1 = best), eligible, chosen and reason, sorted by rank."""
    chosen: list[str]
    """Chosen teachers, best first."""
    explanation: str
    """The rule in words and why the chosen teachers won, with the numbers."""

    def to_markdown(self) -> str:
        """The table as GitHub markdown, numbers with 3 significant digits."""
        cols = self.table.columns
        lines = [
            "| " + " | ".join(cols) + " |",
            "|" + "|".join("---" for _ in cols) + "|",
        ]
        for row in self.table.iter_rows():
            cells = [_fmt(v).replace("|", "\\|") for v in row]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def rank_teachers(metrics: pl.DataFrame, rule: RankingRule) -> RankingResult:
    """Rank teachers by ``rule`` and choose the top_k eligible ones.

    Eligible teachers take ranks 1..n in rule order; ineligible ones follow, in the same order.
    Raises ValueError when no teacher is eligible, naming every teacher's pass rate.
    """
    _require_columns(metrics, ("teacher", "pass_rate"), "metrics")
    missing = [m for m, _ in rule.keys if m not in metrics.columns]
    if missing:
        raise ValueError(f"metrics has no column for order_by metric(s) {missing}")
    if metrics.height == 0:
        raise ValueError("metrics is empty: no teacher to rank")
    dupes = metrics.filter(pl.col("teacher").is_duplicated())["teacher"].unique().to_list()
    if dupes:
        raise ValueError(f"metrics has more than one row for teacher(s) {sorted(dupes)}")

    rows = sorted(metrics.to_dicts(), key=lambda r: str(r["teacher"]))

    def eligible(row: dict[str, Any]) -> bool:
        pr = row["pass_rate"]
        return not _missing(pr) and pr >= rule.min_pass_rate

    def cmp(a: dict[str, Any], b: dict[str, Any]) -> int:
        for metric, direction in rule.keys:
            c = _compare_key(a[metric], b[metric], direction, rule.tie_tolerance)
            if c:
                return c
        return 0  # sorted() is stable and rows are in name order: ties go by name

    ok = sorted((r for r in rows if eligible(r)), key=functools.cmp_to_key(cmp))
    bad = sorted((r for r in rows if not eligible(r)), key=functools.cmp_to_key(cmp))
    if not ok:
        rates = ", ".join(f"{r['teacher']} {_fmt(r['pass_rate'])}" for r in rows)
        raise ValueError(
            f"no teacher is eligible: every pass_rate is below min_pass_rate "
            f"{_fmt(rule.min_pass_rate)} ({rates})"
        )

    chosen = [str(r["teacher"]) for r in ok[: rule.top_k]]
    reasons: dict[str, str] = {}
    for i, row in enumerate(ok):
        if len(ok) == 1:
            why = "the only eligible teacher"
        elif i == 0:
            why = _why(row, ok[1], rule)
        else:
            why = _why(row, ok[i - 1], rule)
        status = "chosen" if row["teacher"] in chosen else "not chosen"
        reasons[row["teacher"]] = f"{status}, rank {i + 1}: {why}"
    for row in bad:
        reasons[row["teacher"]] = (
            f"ineligible: pass_rate {_fmt(row['pass_rate'])} < min_pass_rate "
            f"{_fmt(rule.min_pass_rate)}"
        )

    ordered = ok + bad
    table = pl.DataFrame(ordered, schema=metrics.schema).with_columns(
        pl.Series("rank", range(1, len(ordered) + 1), dtype=pl.Int64),
        pl.Series("eligible", [eligible(r) for r in ordered], dtype=pl.Boolean),
        pl.Series("chosen", [r["teacher"] in chosen for r in ordered], dtype=pl.Boolean),
        pl.Series("reason", [reasons[r["teacher"]] for r in ordered], dtype=pl.String),
    )
    table = table.select("rank", "teacher", pl.exclude("rank", "teacher"))

    lines = [rule.describe()]
    if "n_common_queries" in metrics.columns:
        n_common = metrics["n_common_queries"][0]
        lines.append(f"Compared on the {n_common} queries answered by all {len(rows)} teachers.")
    for i, row in enumerate(ok[: rule.top_k]):
        if len(ok) == 1:
            lines.append(f"{row['teacher']} ranked 1: the only eligible teacher")
            continue
        # Explain each chosen teacher against the teacher right below it.
        other = ok[i + 1] if i + 1 < len(ok) else ok[i - 1]
        lines.append(f"{row['teacher']} ranked {i + 1}: {_why(row, other, rule)}")
    lines.extend(f"{r['teacher']} {reasons[r['teacher']]}" for r in bad)
    lines.append(f"Chosen: {', '.join(chosen)}")
    return RankingResult(table=table, chosen=chosen, explanation="\n".join(lines))
