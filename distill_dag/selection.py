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
    "cost": "money spent generating (prices: teachers[].price_per_hour, endpoint.price_per_"
            "million_*; 0 where none is set)",
    "tokens_per_correct": "completion tokens generated per verified-correct sample",
    "seconds_per_correct": "generation seconds per verified-correct sample",
    "cost_per_correct": "money per verified-correct sample",
}

# Trial distillation's measures (teacher_ranking.trial): order_by may use them when it is on.
TRIAL_METRICS: dict[str, str] = {
    "trial_pass_at_1": "greedy pass@1 on the trial's dev slice of the student after a short "
                       "fine-tune on this teacher's data (teacher_ranking.trial)",
}

_DIRECTIONS = ("asc", "desc")


def _require_columns(df: pl.DataFrame, required: tuple[str, ...], name: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{name} is missing columns {missing}; has {df.columns}")


def compute_teacher_metrics(samples: pl.DataFrame, sentences: pl.DataFrame) -> pl.DataFrame:
    """One row per teacher with the metrics in ``METRICS``, plus n_queries_total and
    n_common_queries.

    A ``cost`` column in `samples` (money per sample, see ``sample_costs``) gives the cost
    metrics; without one they are null. Every metric (costs included) is computed on the
    queries that ALL teachers answered: a teacher that skipped the hard queries would otherwise
    look better on pass rate, yield and cost for reasons that have nothing to do with the
    teacher. ``n_queries_total`` keeps how many queries the teacher answered overall. A null
    ``correct`` counts as incorrect. Sentence metrics use the sentences of the same samples
    whose category is not null / "unscored" (mean_d_ts also skips null or NaN d_ts); they are
    null when a teacher has none.
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
        (pl.col("cost").cast(pl.Float64).sum() if "cost" in s.columns
         else pl.lit(None, dtype=pl.Float64)).alias("cost"),
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
            *[(pl.col(total) / pl.col("_n_correct").replace(0, None)).alias(f"{name}_per_correct")
              for total, name in (("tokens_generated", "tokens"), ("seconds", "seconds"),
                                  ("cost", "cost"))],
            pl.lit(common.len(), dtype=pl.Int64).alias("n_common_queries"),
        )
    )
    return out.select("teacher", *METRICS, "n_queries_total", "n_common_queries").sort("teacher")


def sample_costs(samples: pl.DataFrame, prices: dict[str, dict[str, float]]) -> pl.Series:
    """Money per sample (rows with teacher, completion_tokens, latency_s and, where known,
    prompt_tokens) under each teacher's ``prices`` (TeacherConfig.prices)."""
    def price(field: str) -> pl.Expr:
        return pl.col("teacher").replace_strict(
            {t: p[field] for t, p in prices.items()}, default=0.0, return_dtype=pl.Float64)

    prompt = (pl.col("prompt_tokens") if "prompt_tokens" in samples.columns
              else pl.lit(0)).cast(pl.Float64).fill_null(0.0)
    money = (prompt * price("per_million_input")
             + pl.col("completion_tokens").cast(pl.Float64).fill_null(0.0)
             * price("per_million_output")) / 1e6 \
        + pl.col("latency_s").cast(pl.Float64).fill_null(0.0) * price("per_second")
    return samples.select(money.alias("cost"))["cost"]


def cost_per_kept_sample(outputs: pl.DataFrame, kept: pl.DataFrame,
                         prices: dict[str, dict[str, float]]) -> pl.DataFrame:
    """Per teacher: what all its samples cost (`outputs`: teacher_outputs rows) per
    verified-correct sample and per sample that reached filtered_dataset (`kept`: its rows,
    with a teacher column). A teacher nothing was kept from has null per-kept figures."""
    costs = outputs.with_columns(sample_costs(outputs, prices))
    totals = costs.group_by("teacher").agg(
        pl.len().cast(pl.Int64).alias("samples"),
        pl.col("correct").fill_null(False).cast(pl.Int64).sum().alias("correct"),
        pl.col("completion_tokens").cast(pl.Int64).sum().alias("tokens"),
        pl.col("latency_s").cast(pl.Float64).sum().alias("seconds"),
        pl.col("cost").sum().alias("cost"))
    counts = kept.group_by("teacher").agg(pl.len().cast(pl.Int64).alias("kept"))
    out = totals.join(counts, on="teacher", how="left").with_columns(
        pl.col("kept").fill_null(0))
    per = []
    for count in ("correct", "kept"):
        n = pl.col(count).replace(0, None)
        per += [(pl.col("tokens") / n).alias(f"tokens_per_{count}"),
                (pl.col("seconds") / n).alias(f"seconds_per_{count}"),
                (pl.col("cost") / n).alias(f"cost_per_{count}")]
    return out.with_columns(per).sort("teacher")


@dataclass
class TrialConfig(Config):
    """Trial distillation (DED): each eligible teacher's data trains the student for the same
    short budget, and the student is scored on a dev slice of the training split."""

    WHERE: ClassVar[str] = "teacher_ranking.trial"

    steps: int = setting(
        0, "Optimizer steps of each teacher's trial fine-tune (training's batch size, method "
        "and learning rate); 0 turns trial distillation off. Every teacher gets the same "
        "steps, so every trial sees the same number of examples.")
    queries: int = setting(
        64, "Training records per teacher: one per query (the best by filtering.best_of_n) "
        "from training queries outside the dev slice, a seeded subset when there are more. A "
        "teacher with fewer correct queries repeats its records within the same steps.")
    dev_queries: int = setting(
        40, "Training-split queries held out of every trial and scored by greedy pass@1: the "
        "dev slice (never the eval split, which stays eval_report's).")
    objective: str = setting(
        "sft", "The training objective of the trials (training.objective's names; its "
        "settings come from training.<objective>).")
    seed: int = setting(0, "Seeds which training queries form the dev slice and the subset.")

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 0)
        check_int("queries", self.queries)
        check_int("dev_queries", self.dev_queries)
        check_int("seed", self.seed, 0)
        if not isinstance(self.objective, str) or not self.objective:
            raise ConfigError(f"objective must name a training objective, got {self.objective!r}")

    @property
    def enabled(self) -> bool:
        return self.steps > 0


@dataclass
class RankingRule(Config):
    """How teachers are ranked and chosen from their metrics (the `teacher_ranking` section)."""

    WHERE: ClassVar[str] = "teacher_ranking"
    # Added after stores existed: hashed only when set, so their code versions stay.
    HASHED_WHEN_SET: ClassVar[tuple[str, ...]] = ("trial",)

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
        f"every teacher answered): {'; '.join(f'{k}: {v}' for k, v in METRICS.items())}. "
        "With trial distillation on: "
        f"{'; '.join(f'{k}: {v}' for k, v in TRIAL_METRICS.items())}.")
    tie_tolerance: float = setting(
        0.0, "Values within this relative tolerance (|a - b| <= tol * max(|a|, |b|)) tie on that "
        "key, so the next key decides. In [0, 1); 0 means only equal values tie.")
    top_k: int = setting(1, "How many teachers are chosen (>= 1); fewer when fewer are eligible.")
    trial: TrialConfig = setting(
        factory=TrialConfig, doc="Trial distillation: a short fine-tune of the student on each "
        "eligible teacher's data, scored on a dev slice of the training split; the table shows "
        "how well each proxy metric's ranking agrees with it (Kendall tau). Off by default "
        "(steps 0): it trains once per teacher.")

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
        needs_trial = [m for m, _ in self.keys if m in TRIAL_METRICS]
        if needs_trial and not self.trial.enabled:
            raise ConfigError(f"order_by uses {needs_trial}, which trial distillation measures: "
                              "set teacher_ranking.trial.steps (e.g. 20) or drop them")

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
    if metric not in METRICS and metric not in TRIAL_METRICS:
        raise ConfigError(
            f"order_by entry {item!r}: unknown metric {metric!r}; "
            f"known metrics: {', '.join([*METRICS, *TRIAL_METRICS])}"
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


def proxy_agreement(table: pl.DataFrame, measure: str = "trial_pass_at_1") -> pl.DataFrame:
    """How well each proxy metric orders the teachers as `measure` (the trial) does: Kendall's
    tau-b between the metric and the measure over the teachers that have both (+1: the higher
    the metric, the better the trial; -1: the reverse; null: fewer than two teachers, or no
    spread). ``agrees`` says whether the metric's direction in the default rule (higher is
    better, except perplexity and cost-like metrics) matches the sign of tau."""
    from scipy.stats import kendalltau

    lower_is_better = {"student_ppl_correct", "length_mean", "tokens_generated", "seconds",
                       "cost", "tokens_per_correct", "seconds_per_correct", "cost_per_correct"}
    rows = []
    for metric in METRICS:
        if metric in ("n_queries", "n_samples") or metric not in table.columns:
            continue
        pairs = table.select(metric, measure).drop_nulls().drop_nans()
        tau = None
        if pairs.height >= 2 and pairs[metric].n_unique() > 1 and pairs[measure].n_unique() > 1:
            tau = float(kendalltau(pairs[metric].to_numpy(), pairs[measure].to_numpy()).statistic)
        better = "lower" if metric in lower_is_better else "higher"
        agrees = None if tau is None or tau == 0 else (tau > 0) == (better == "higher")
        rows.append({"metric": metric, "better": better, "kendall_tau": tau,
                     "teachers": pairs.height, "agrees": agrees})
    return pl.DataFrame(rows, schema={"metric": pl.String, "better": pl.String,
                                      "kendall_tau": pl.Float64, "teachers": pl.Int64,
                                      "agrees": pl.Boolean})
