"""Query difficulty for the student: its own pass rate on each training query, and a band to keep.

DED (DESIGN.md) drops the questions the student already solves (about 75% of theirs): training
on them teaches little and costs compute. The base student answers each training query k times
(sampled, in its own zero-shot prompt) through the same memoized generation path as the
teachers, in its own namespace (``student``/``difficulty``: store/generations_student/difficulty,
which no teacher name can reach): a rerun generates nothing, and changing k generates only the
new sample indices. Queries whose pass rate falls outside [min_pass_rate, max_pass_rate] are
left out of the training set.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from distill_dag.configbase import Config, ConfigError, check_int, check_number, setting
from distill_dag.generation.config import StudentConfig
from distill_dag.generation.run import Namespace, generate, verify_outputs
from distill_dag.generation.spec import GenerationSpec, SamplingConfig
from distill_dag.store import Store

NAMESPACE = Namespace("student", "difficulty")  # where the student's answers are memoized


@dataclass
class DifficultyConfig(Config):
    """How the student's pass rate per training query is measured and which band is kept."""

    num_samples: int = setting(0, "k answers of the base student per training query; 0 turns "
                                  "the difficulty filter off (it costs k generations per query, "
                                  "like a teacher).")
    min_pass_rate: float = setting(0.0, "Queries the student solves less often than this are "
                                        "dropped (too hard to learn from). 0 keeps the ones it "
                                        "never solves, which are what a teacher can add (DED); "
                                        "open-r1 keeps 0.1-0.9 for RL, where a query needs some "
                                        "successes.")
    max_pass_rate: float = setting(0.9, "Queries the student solves more often than this are "
                                        "dropped (already solved: DED's question compression). "
                                        "With k = 4 the default drops those it solves 4 times "
                                        "out of 4.")
    temperature: float = setting(0.7, "Sampling temperature of the k answers (> 0: k greedy "
                                      "answers would all agree).")
    top_k: int = setting(50, "Top-k filter of the k answers (0 disables it).")
    max_new_tokens: int = setting(64, "Token budget per answer; an answer cut at the budget "
                                      "counts as not solved.")
    batch_size: int = setting(32, "Prompts per generate() call.", output=False)
    seed: int = setting(0, "Seeds the sampling.")

    def __post_init__(self) -> None:
        check_int("num_samples", self.num_samples, 0)
        check_number("min_pass_rate", self.min_pass_rate, 0.0, 1.0)
        check_number("max_pass_rate", self.max_pass_rate, 0.0, 1.0)
        if self.min_pass_rate > self.max_pass_rate:
            raise ConfigError(f"min_pass_rate {self.min_pass_rate} exceeds max_pass_rate "
                              f"{self.max_pass_rate}: the band would keep nothing")
        check_number("temperature", self.temperature, 1e-6, 5.0)
        check_int("top_k", self.top_k, 0)
        check_int("max_new_tokens", self.max_new_tokens)
        check_int("batch_size", self.batch_size)
        check_int("seed", self.seed, 0)

    @property
    def enabled(self) -> bool:
        return self.num_samples > 0

    def spec(self, student: StudentConfig) -> GenerationSpec:
        """The base student as a generation: its model and zero-shot prompt, k samples."""
        sampling = SamplingConfig(temperature=self.temperature, top_k=self.top_k,
                                  max_new_tokens=self.max_new_tokens,
                                  num_samples=self.num_samples, seed=self.seed)
        return GenerationSpec(model=student.model, prompt=student.prompt, sampling=sampling,
                              batch_size=self.batch_size,
                              trust_remote_code=student.trust_remote_code,
                              allow_pickle_weights=student.allow_pickle_weights)


@dataclass
class StudentPassRates:
    per_query: pl.DataFrame  # query_id, student_samples, student_correct, student_pass_rate
    generated: int  # answers generated in this call (the rest came from the store)
    seconds: float


def student_pass_rates(student: StudentConfig, cfg: DifficultyConfig, queries: pl.DataFrame,
                       store: Store, device: str = "auto", dtype: str = "auto",
                       show_progress: bool = True) -> StudentPassRates:
    """k verified answers of the base student per query in `queries`; its pass rate on each."""
    summary = generate(cfg.spec(student), NAMESPACE, queries, store, device=device, dtype=dtype,
                       show_progress=show_progress)
    verified = verify_outputs(summary.outputs, queries)
    per_query = verified.group_by("query_id").agg(
        pl.len().cast(pl.Int64).alias("student_samples"),
        pl.col("correct").fill_null(False).cast(pl.Int64).sum().alias("student_correct"),
    ).with_columns((pl.col("student_correct") / pl.col("student_samples"))
                   .alias("student_pass_rate")).sort("query_id")
    return StudentPassRates(per_query, summary.generated, summary.seconds)


def in_band(pass_rates: pl.DataFrame, cfg: DifficultyConfig) -> pl.DataFrame:
    """pass_rates with a `difficulty` column: "too_easy", "too_hard" or "kept"."""
    rate = pl.col("student_pass_rate")
    return pass_rates.with_columns(
        pl.when(rate > cfg.max_pass_rate).then(pl.lit("too_easy"))
        .when(rate < cfg.min_pass_rate).then(pl.lit("too_hard"))
        .otherwise(pl.lit("kept")).alias("difficulty"))
