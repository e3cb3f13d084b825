"""Build the training set from the chosen teachers' samples: correct, provenance-guided, bounded.

Per query, among the correct candidate responses, keep the one with the most Teacher sentences
(absolute count, the seed paper's best selection rule: 58.7 avg vs 56.4 by Teacher ratio and 57.9
by length). Ties go to the shorter response, then to the request key, so the choice is stable.
Sample-level curation can narrow the candidates first: a difficulty band from the base student's
own pass rate (difficulty.py), and a preference for concise traces (a response more than
`concise_ratio` times longer than the query's shortest correct one is dropped, as the
difficulty-aware pruning study suggests). With per_query > 1, `diversity` fills the remaining
slots with the most mutually distant responses (diversity.py) instead of the next best ranked.
The result is written as chat ``messages`` records in the student's zero-shot prompt format,
which TRL's SFTTrainer and transformers' chat templates take directly. Incorrect samples are
kept in their own table (negatives for a later contrastive stage such as REDI).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import polars as pl

from distill_dag.configbase import Config, ConfigError, check_int, check_number, setting
from distill_dag.difficulty import DifficultyConfig, in_band
from distill_dag.diversity import DIVERSITY_METRICS
from distill_dag.generation.config import PromptConfig

BEST_OF_N_RULES = ("teacher_count", "teacher_fraction", "shortest", "longest", "random")


def _check_int(name: str, value: Any, minimum: int) -> None:
    check_int(f"filtering.{name}", value, minimum)


def _check_number(name: str, value: Any, low: float, high: float | None = None) -> None:
    check_number(f"filtering.{name}", value, low, high)


@dataclass
class FilterConfig(Config):
    """What makes a sample good enough to train on, and how many to keep."""

    WHERE: ClassVar[str] = "filtering"
    RENAMED_KEYS: ClassVar[Mapping[str, str]] = MappingProxyType({"selection": "best_of_n"})
    # Added after stores existed: left out of the section hash while it keeps its default.
    HASHED_WHEN_SET: ClassVar[tuple[str, ...]] = ("license",)

    best_of_n: str = setting(
        "teacher_count", "How the responses of one query are ranked (best first): "
        '"teacher_count" (most Teacher sentences), "teacher_fraction" (highest share of '
        'Teacher sentences), "shortest", "longest" (most completion tokens), or "random" '
        "(seeded). Ties go to the shorter response, then the request key.")
    per_query: int = setting(
        1, "Responses kept per query (>= 1): the top ones by best_of_n (or by diversity).")
    min_completion_tokens: int = setting(1, "Drop responses shorter than this (tokens, >= 0).")
    max_completion_tokens: int = setting(
        4096, "Drop responses longer than this (tokens; and those cut at max_new_tokens).")
    drop_truncated: bool = setting(
        True, "Drop responses that hit max_new_tokens (finish_reason length).")
    budget: int | None = setting(
        None, "At most this many training records (a seeded random subset); null: no cap.")
    seed: int = setting(
        0, 'Seeds best_of_n "random" and the subset kept under a budget.')
    difficulty: DifficultyConfig = setting(
        factory=DifficultyConfig,
        doc="The base student's pass rate per query and the band of queries kept (off by "
        "default: it costs k student generations per training query). See difficulty.py.")
    concise_ratio: float | None = setting(
        None, "Drop a correct response more than this many times longer than the query's "
        "shortest correct one (in characters, so teachers with different tokenizers compare "
        "fairly); >= 1, or null to keep every length. 1.5-2 prunes rambling traces.")
    diversity: str = setting(
        "none", 'How slots 2..per_query are filled: "none" (the next best by best_of_n), '
        '"edit" or "embedding" (the most mutually distant responses, see diversity.py).')
    min_diversity_distance: float = setting(
        0.0, "Never keep two responses of a query closer than this (0-1 edit distance, 0-2 "
        "cosine distance); 0 sets no floor.")
    diversity_embed_model: str = setting(
        "pkg:all-minilm-l6-v2", 'The embedding model of diversity "embedding".')
    warn_removed_share: float = setting(
        0.8, "filtered_dataset's removal_share check warns when the difficulty band or the "
        "concise filter removes more than this share of what it was given, in [0, 1]. Changes "
        "the check, not the dataset.", output=False)
    license: str = setting(
        "other", "The licence declared in filtered_dataset's dataset card (hf/README.md): a "
        "Hub licence id such as apache-2.0 or cc-by-4.0. other: none declared (the card says "
        "the teachers' and the corpus's terms apply). Changes the card, not the dataset.",
        output=False)

    def __post_init__(self) -> None:
        if self.best_of_n not in BEST_OF_N_RULES:
            raise ConfigError(f"filtering.best_of_n must be one of {BEST_OF_N_RULES}, "
                              f"got {self.best_of_n!r}")
        _check_int("per_query", self.per_query, 1)
        _check_int("min_completion_tokens", self.min_completion_tokens, 0)
        _check_int("max_completion_tokens", self.max_completion_tokens, 0)
        if self.min_completion_tokens > self.max_completion_tokens:
            raise ConfigError("filtering: need 0 <= min_completion_tokens <= max_completion_tokens"
                              f", got {self.min_completion_tokens} and "
                              f"{self.max_completion_tokens}")
        if self.budget is not None:
            _check_int("budget", self.budget, 1)
        _check_int("seed", self.seed, 0)
        if not isinstance(self.difficulty, DifficultyConfig):
            raise ConfigError(f"filtering.difficulty must be a mapping, got {self.difficulty!r}")
        if self.concise_ratio is not None:
            _check_number("concise_ratio", self.concise_ratio, 1.0)
        if self.diversity not in DIVERSITY_METRICS:
            raise ConfigError(f"filtering.diversity must be one of {DIVERSITY_METRICS}, got "
                              f"{self.diversity!r}")
        _check_number("min_diversity_distance", self.min_diversity_distance, 0.0, 2.0)
        _check_number("warn_removed_share", self.warn_removed_share, 0.0, 1.0)
        if not isinstance(self.license, str) or not re.fullmatch(r"[\w.+-]+", self.license):
            raise ConfigError("filtering.license must be a licence id such as apache-2.0 or "
                              f"other, got {self.license!r}")
        if self.diversity != "none" and self.per_query < 2:
            raise ConfigError(f"filtering.diversity {self.diversity!r} chooses among the "
                              "responses kept per query: set per_query >= 2")
        if self.min_diversity_distance and self.diversity == "none":
            raise ConfigError("filtering.min_diversity_distance needs diversity edit or "
                              "embedding")
        if self.diversity == "edit" and self.min_diversity_distance > 1:
            raise ConfigError("filtering.min_diversity_distance must be <= 1 with diversity "
                              f"edit (normalized edit distance), got {self.min_diversity_distance}")


@dataclass
class FilterResult:
    dataset: pl.DataFrame  # the training records (with provenance columns and `messages`)
    negatives: pl.DataFrame  # incorrect samples of the chosen teachers
    removed: dict[str, int] = field(default_factory=dict)  # reason -> rows removed
    # Share of its input each curation filter removed: "difficulty" (of the queries with
    # samples), "concise" (of the correct samples), for the removal_share check.
    removed_shares: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # e.g. responses past the embedder window


def _messages(student_prompt: PromptConfig, query: str, response: str) -> list[dict[str, str]]:
    """The student's own prompt (as evaluation and provenance render it), then the reply."""
    from distill_dag.generation.prompts import chat_messages

    return [*chat_messages(student_prompt, query), {"role": "assistant", "content": response}]


def _seeded_order(keys: pl.Series, seed: int) -> pl.Series:
    """A pseudo-random but stable order: sha256 of key and seed (polars' own hash may change
    between versions, which would silently change a "random" best_of_n)."""
    import hashlib

    return pl.Series([hashlib.sha256(f"{k}|{seed}".encode()).hexdigest() for k in keys])


def _rank_expr(best_of_n: str) -> list[pl.Expr]:
    by_length = [pl.col("completion_tokens"), pl.col("request_key")]
    if best_of_n == "teacher_count":
        return [-pl.col("n_teacher").cast(pl.Int64), *by_length]
    if best_of_n == "teacher_fraction":
        return [-pl.col("teacher_fraction"), *by_length]
    if best_of_n == "shortest":
        return by_length
    if best_of_n == "longest":
        return [-pl.col("completion_tokens"), pl.col("request_key")]
    return [pl.col("_seeded")]


def _diverse_heads(ranked: pl.DataFrame, cfg: FilterConfig, warnings: list[str]
                   ) -> pl.DataFrame:
    """Per query (rows contiguous, in rank order): the best ranked, then the most mutually
    distant. Only queries with a choice to make are measured (and embedded)."""
    from distill_dag.diversity import edit_distances, embedding_distances, farthest_first

    texts = ranked["response"].to_list()
    sizes = ranked.group_by("query_id", maintain_order=True).len()["len"].to_list()
    starts = np.cumsum([0, *sizes[:-1]]).tolist()
    # With a distance floor even a query with per_query candidates or fewer has a choice.
    floor = cfg.min_diversity_distance > 0
    choose = [(start, size) for start, size in zip(starts, sizes, strict=True)
              if size > cfg.per_query or (floor and size > 1)]
    vectors: dict[int, np.ndarray] = {}
    if cfg.diversity == "embedding" and choose:
        from distill_dag.corpus.semantic import embed, load_embedder

        rows = [i for start, size in choose for i in range(start, start + size)]
        embedded = embed(load_embedder(cfg.diversity_embed_model), [texts[i] for i in rows])
        vectors = dict(zip(rows, embedded.vectors, strict=True))
        if embedded.truncated:
            warnings.append(f"diversity: {embedded.truncated} of {len(rows)} responses are "
                            f"longer than the embedding model's {embedded.max_tokens}-token "
                            "window; their distances reflect how they begin")
    keep = set(range(ranked.height))
    for start, size in choose:
        group = range(start, start + size)
        distances = (embedding_distances(np.stack([vectors[i] for i in group]))
                     if cfg.diversity == "embedding" else edit_distances([texts[i] for i in group]))
        chosen = {start + i for i in farthest_first(distances, cfg.per_query,
                                                    cfg.min_diversity_distance)}
        keep -= set(group) - chosen
    return ranked[sorted(keep)]


def filter_dataset(
    samples: pl.DataFrame,
    queries: pl.DataFrame,
    chosen_teachers: list[str],
    cfg: FilterConfig,
    student_prompt: PromptConfig,
    pass_rates: pl.DataFrame | None = None,
) -> FilterResult:
    """`samples`: per-sample rows from provenance (teacher, query_id, correct, n_teacher, ...),
    joined with the response text. `pass_rates`: the base student's per-query pass rates
    (difficulty.student_pass_rates) when the difficulty band is on. Returns the training
    records and the negatives."""
    removed: dict[str, int] = {}
    shares: dict[str, float] = {}
    warnings: list[str] = []

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
    if pass_rates is not None:
        banded = in_band(pass_rates, cfg.difficulty).select(
            "query_id", "student_pass_rate", "difficulty")
        pool = pool.join(banded, on="query_id", how="left")
        asked = pool.filter(pl.col("difficulty").is_not_null())["query_id"].n_unique()
        easy = pool.filter(pl.col("difficulty") == "too_easy")["query_id"].n_unique()
        hard = pool.filter(pl.col("difficulty") == "too_hard")["query_id"].n_unique()
        if asked:
            shares["difficulty"] = (easy + hard) / asked
        # A query the student never answered (none, unless the store was edited) is kept.
        band = pl.col("difficulty").fill_null("kept")
        pool = drop(pool, band != "too_easy", "too_easy_for_student")
        pool = drop(pool, band != "too_hard", "too_hard_for_student").drop("difficulty")
    pool = drop(pool, pl.col("correct").fill_null(False), "incorrect")
    pool = drop(pool, pl.col("response").str.strip_chars().str.len_chars() > 0, "empty_response")
    if cfg.drop_truncated:
        pool = drop(pool, pl.col("finish_reason") != "length", "truncated")
    pool = drop(pool, pl.col("completion_tokens").is_between(cfg.min_completion_tokens,
                                                           cfg.max_completion_tokens),
                "length_bounds")
    if cfg.concise_ratio is not None and pool.height:
        before = pool.height
        length = pl.col("response").str.len_chars()
        pool = drop(pool, length <= length.min().over("query_id") * cfg.concise_ratio,
                    "not_concise")
        shares["concise"] = (before - pool.height) / before
    pool = pool.with_columns(_seeded_order(pool["request_key"], cfg.seed).alias("_seeded"))
    ranked = pool.sort(_rank_expr(cfg.best_of_n))
    if cfg.diversity != "none" and cfg.per_query > 1:
        # group_by keeps rows in rank order within each query, and the queries in order of
        # their first row: sort by query first so each query's rows are contiguous.
        ranked = ranked.with_row_index("_rank").sort("query_id", "_rank").drop("_rank")
        best = _diverse_heads(ranked, cfg, warnings)
        removed["not_diverse_or_best"] = ranked.height - best.height
    else:
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
    return FilterResult(dataset, negatives, {k: v for k, v in removed.items() if v}, shares,
                        warnings)


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
