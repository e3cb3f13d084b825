"""Knobs of the eval_report stage: decoding budgets, samples for pass@k, and the statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from distill_dag.configbase import Config, ConfigError, check_int, check_number, setting


@dataclass
class EvalConfig(Config):
    """How eval_report compares the base and the distilled student on the held-out split.

    Both models get the same prompt (the student's zero-shot prompt) and the same token budget.
    `fingerprint()` (the fields that change the report) is part of the report's key.
    """

    WHERE: ClassVar[str] = "evaluation"

    max_new_tokens: int = setting(
        64, "Token budget per answer (>= 1). An answer cut at the budget never stated its result "
        "and counts as incorrect (reported as truncated).")
    num_samples: int = setting(
        4, "n sampled answers per query for pass@k and mean@k (0 evaluates greedy pass@1 only).")
    temperature: float = setting(0.7, "Sampling temperature of the n samples (> 0).")
    top_k: int = setting(50, "Top-k filter of the n samples (0 disables it).")
    top_p: float = setting(1.0, "Nucleus mass of the n samples, in (0, 1].")
    pass_k: list[int] = setting(
        factory=lambda: [1, 2, 4], doc="Which pass@k to report; each k must be <= num_samples.")
    batch_size: int = setting(
        32, "Prompts per generate() call. Answers are stored per request, whatever the batch.",
        output=False)
    max_queries: int | None = setting(
        None, "Evaluate on at most this many eval queries (>= 2; the first by query id: a stable "
        "subset); null uses the whole eval split.")
    confidence: float = setting(0.95, "Confidence level of the bootstrap intervals, in (0, 1).")
    bootstrap_resamples: int = setting(10_000, "Bootstrap resamples (>= 100).")
    seed: int = setting(0, "Seeds sampling and the bootstrap.")
    provenance: bool = setting(
        True, "Score the distilled model's own greedy answers under the teacher, the original "
        "student and the distilled student, and report Teacher / Student / Shared / Boosted "
        "shares.")
    provenance_teacher: str | None = setting(
        None, 'Which teacher\'s model and prompt define the "teacher" probability; null: the '
        "teacher that teacher_selection ranked first.")

    def __post_init__(self) -> None:
        check_int("max_new_tokens", self.max_new_tokens)
        check_int("num_samples", self.num_samples, 0)
        check_number("temperature", self.temperature, 1e-6)
        check_int("top_k", self.top_k, 0)
        check_number("top_p", self.top_p, 1e-6, 1.0)
        check_int("batch_size", self.batch_size)
        if self.max_queries is not None:
            check_int("max_queries", self.max_queries, 2)
        check_number("confidence", self.confidence, 1e-6, 0.999999)
        check_int("bootstrap_resamples", self.bootstrap_resamples, 100)
        check_int("seed", self.seed, 0)
        if not isinstance(self.pass_k, list) or not all(
                isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in self.pass_k):
            raise ConfigError(f"pass_k must be a list of integers >= 1, got {self.pass_k!r}")
        too_big = [k for k in self.pass_k if k > self.num_samples]
        if too_big and self.num_samples:
            raise ConfigError(f"pass_k {too_big} exceed num_samples={self.num_samples}; pass@k "
                              "needs at least k samples per query")
        if not isinstance(self.provenance, bool):
            raise ConfigError("provenance must be true or false")

    @property
    def reported_k(self) -> list[int]:
        return sorted(set(self.pass_k)) if self.num_samples else []
