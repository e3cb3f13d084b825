"""Build the training set from the chosen teachers' samples: correct, provenance-guided, bounded.

Per query, among the correct candidate responses, keep the one with the most Teacher sentences
(absolute count, the seed paper's best selection rule: 58.7 avg vs 56.4 by Teacher ratio and 57.9
by length). Ties go to the shorter response, then to the request key, so the choice is stable.
The result is written as chat ``messages`` records in the student's zero-shot prompt format,
which TRL's SFTTrainer and transformers' chat templates take directly. Incorrect samples are
kept in their own table (negatives for a later contrastive stage such as REDI).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from distill_dag.configbase import ConfigError, build_config
from distill_dag.generation.config import PromptConfig

SELECTION_RULES = ("teacher_count", "teacher_fraction", "shortest", "random")


@dataclass
class FilterConfig:
    """What makes a sample good enough to train on, and how many to keep."""

    selection: str = "teacher_count"  # best-of-N rule per query; one of SELECTION_RULES
    per_query: int = 1  # responses kept per query (the top ones by the selection rule)
    min_completion_tokens: int = 1  # drop shorter responses
    max_completion_tokens: int = 4096  # drop longer responses (and those cut at max_new_tokens)
    drop_truncated: bool = True  # drop responses that hit max_new_tokens (finish_reason length)
    budget: int | None = None  # at most this many training records (None: no cap)
    seed: int = 0  # only used by selection "random" and to subsample under a budget

    def __post_init__(self) -> None:
        if self.selection not in SELECTION_RULES:
            raise ConfigError(f"filtering.selection must be one of {SELECTION_RULES}, "
                              f"got {self.selection!r}")
        if self.per_query < 1:
            raise ConfigError(f"filtering.per_query must be >= 1, got {self.per_query}")
        if not 0 <= self.min_completion_tokens <= self.max_completion_tokens:
            raise ConfigError("filtering: need 0 <= min_completion_tokens <= max_completion_tokens"
                              f", got {self.min_completion_tokens} and "
                              f"{self.max_completion_tokens}")
        if self.budget is not None and self.budget < 1:
            raise ConfigError(f"filtering.budget must be >= 1 or null, got {self.budget}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "filtering") -> FilterConfig:
        return build_config(cls, data, where)


@dataclass
class FilterResult:
    dataset: pl.DataFrame  # the training records (with provenance columns and `messages`)
    negatives: pl.DataFrame  # incorrect samples of the chosen teachers
    removed: dict[str, int] = field(default_factory=dict)  # reason -> rows removed


def _messages(student_prompt: PromptConfig, query: str, response: str) -> list[dict[str, str]]:
    """The student's own prompt (as evaluation and provenance render it), then the reply."""
    from distill_dag.generation.prompts import chat_messages

    return [*chat_messages(student_prompt, query), {"role": "assistant", "content": response}]


def _seeded_order(keys: pl.Series, seed: int) -> pl.Series:
    """A pseudo-random but stable order: sha256 of key and seed (polars' own hash may change
    between versions, which would silently change a "random" selection)."""
    import hashlib

    return pl.Series([hashlib.sha256(f"{k}|{seed}".encode()).hexdigest() for k in keys])


def _rank_expr(selection: str) -> list[pl.Expr]:
    by_length = [pl.col("completion_tokens"), pl.col("request_key")]
    if selection == "teacher_count":
        return [-pl.col("n_teacher").cast(pl.Int64), *by_length]
    if selection == "teacher_fraction":
        return [-pl.col("teacher_fraction"), *by_length]
    if selection == "shortest":
        return by_length
    return [pl.col("_seeded")]


def filter_dataset(
    samples: pl.DataFrame,
    queries: pl.DataFrame,
    chosen_teachers: list[str],
    cfg: FilterConfig,
    student_prompt: PromptConfig,
) -> FilterResult:
    """`samples`: per-sample rows from provenance (teacher, query_id, correct, n_teacher, ...),
    joined with the response text. Returns the training records and the negatives."""
    removed: dict[str, int] = {}

    def drop(frame: pl.DataFrame, keep: pl.Expr, reason: str) -> pl.DataFrame:
        kept = frame.filter(keep)
        if frame.height - kept.height:
            removed[reason] = removed.get(reason, 0) + frame.height - kept.height
        return kept

    pool = samples.filter(pl.col("teacher").is_in(chosen_teachers))
    removed["other_teachers"] = samples.height - pool.height
    train_ids = queries.filter(pl.col("split") == "train")["query_id"].to_list()
    pool = drop(pool, pl.col("query_id").is_in(train_ids), "not_a_training_query")
    negatives = pool.filter(~pl.col("correct").fill_null(False))
    pool = drop(pool, pl.col("correct").fill_null(False), "incorrect")
    pool = drop(pool, pl.col("response").str.strip_chars().str.len_chars() > 0, "empty_response")
    if cfg.drop_truncated:
        pool = drop(pool, pl.col("finish_reason") != "length", "truncated")
    pool = drop(pool, pl.col("completion_tokens").is_between(cfg.min_completion_tokens,
                                                           cfg.max_completion_tokens),
                "length_bounds")
    pool = pool.with_columns(_seeded_order(pool["request_key"], cfg.seed).alias("_seeded"))
    ranked = pool.sort(_rank_expr(cfg.selection))
    best = ranked.group_by("query_id", maintain_order=True).head(cfg.per_query)
    removed["not_best_of_n"] = ranked.height - best.height
    if cfg.budget is not None and best.height > cfg.budget:
        removed["over_budget"] = best.height - cfg.budget
        # Keep a seeded random subset rather than the head: the head is sorted by query_id.
        best = best.sort("_seeded").head(cfg.budget)
    prompts = dict(zip(queries["query_id"], queries["prompt"], strict=True))
    best = best.drop("_seeded").sort("query_id", "teacher", "sample_index")
    messages = [_messages(student_prompt, prompts[q], r)
                for q, r in zip(best["query_id"], best["response"], strict=True)]
    dataset = best.with_columns(
        pl.Series("prompt", [prompts[q] for q in best["query_id"]], dtype=pl.Utf8),
        pl.Series("messages", messages,
                  dtype=pl.List(pl.Struct({"role": pl.Utf8, "content": pl.Utf8}))),
    )
    return FilterResult(dataset, negatives, {k: v for k, v in removed.items() if v})


def dataset_jsonl(dataset: pl.DataFrame) -> bytes:
    """The JSONL export of training records ({"messages", "query_id", "teacher"} per line).

    Its sha256 (first 16 hex digits) is filtered_dataset's data version; distilled_checkpoint
    recomputes it from the stored table to name what it trained on."""
    import json

    lines = [json.dumps(row, ensure_ascii=False) + "\n"
             for row in dataset.select("messages", "query_id", "teacher").iter_rows(named=True)]
    return "".join(lines).encode()


def dataset_version(dataset: pl.DataFrame) -> str:
    """filtered_dataset's data version: the first 16 hex digits of its JSONL export's sha256."""
    import hashlib

    return hashlib.sha256(dataset_jsonl(dataset)).hexdigest()[:16]
