"""Knobs of the eval_report stage: decoding budgets, samples for pass@k, and the statistics."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from distill_dag.configbase import build_config, stable_hash
from distill_dag.configbase import check_int as _positive_int
from distill_dag.configbase import check_number as _number


@dataclass
class EvalConfig:
    """How eval_report compares the base and the distilled student on the held-out split.

    Both models get the same prompt (the student's zero-shot prompt) and the same token budget.
    """

    max_new_tokens: int = 64
    """Token budget per answer (>= 1). An answer cut at the budget never stated its result and
    counts as incorrect (reported as truncated)."""
    num_samples: int = 4
    """n sampled answers per query for pass@k and mean@k (0 evaluates greedy pass@1 only)."""
    temperature: float = 0.7
    """Sampling temperature of the n samples (> 0)."""
    top_k: int = 50
    """Top-k filter of the n samples (0 disables it)."""
    top_p: float = 1.0
    """Nucleus mass of the n samples, in (0, 1]."""
    pass_k: list[int] = field(default_factory=lambda: [1, 2, 4])
    """Which pass@k to report; each k must be <= num_samples."""
    batch_size: int = 32
    """Prompts per generate() call."""
    max_queries: int | None = None
    """Evaluate on at most this many eval queries (the first by query id: a stable subset);
    None uses the whole eval split."""
    confidence: float = 0.95
    """Confidence level of the bootstrap intervals, in (0, 1)."""
    bootstrap_resamples: int = 10_000
    """Bootstrap resamples (>= 100)."""
    seed: int = 0
    """Seeds sampling and the bootstrap."""
    provenance: bool = True
    """Score the distilled model's own greedy answers under the teacher, the original student and
    the distilled student, and report Teacher / Student / Shared / Boosted shares."""
    provenance_teacher: str | None = None
    """Which teacher's model and prompt define the "teacher" probability; None: the teacher that
    teacher_selection ranked first."""

    def __post_init__(self) -> None:
        _positive_int("max_new_tokens", self.max_new_tokens)
        _positive_int("num_samples", self.num_samples, 0)
        _number("temperature", self.temperature, 1e-6)
        _positive_int("top_k", self.top_k, 0)
        _number("top_p", self.top_p, 1e-6, 1.0)
        _positive_int("batch_size", self.batch_size)
        if self.max_queries is not None:
            _positive_int("max_queries", self.max_queries, 2)
        _number("confidence", self.confidence, 1e-6, 0.999999)
        _positive_int("bootstrap_resamples", self.bootstrap_resamples, 100)
        _positive_int("seed", self.seed, 0)
        if not isinstance(self.pass_k, list) or not all(
                isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in self.pass_k):
            raise ValueError(f"pass_k must be a list of integers >= 1, got {self.pass_k!r}")
        too_big = [k for k in self.pass_k if k > self.num_samples]
        if too_big and self.num_samples:
            raise ValueError(f"pass_k {too_big} exceed num_samples={self.num_samples}; pass@k "
                             "needs at least k samples per query")
        for name in ("provenance",):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false")

    @property
    def reported_k(self) -> list[int]:
        return sorted(set(self.pass_k)) if self.num_samples else []

    def fingerprint(self) -> str:
        return stable_hash(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "evaluation") -> EvalConfig:
        return build_config(cls, data, where)
