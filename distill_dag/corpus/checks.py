"""Checks on the curated query table: eval leakage, duplicate rate, and how much each step removed.

They look at the final table (not at what the steps said they did), so a row carried over from
an earlier build, a bookkeeping bug or a step turned off shows up here. query_corpus turns them
into Dagster asset checks; they are plain functions so tests can feed them bad tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from distill_dag.corpus.semantic import QueryVectors
from distill_dag.corpus.text import answer_key, dedup_key, ngrams, word_tokens

DUPLICATE_SAMPLE = 10_000  # training queries whose embedding neighbours duplicate_rate checks


@dataclass(frozen=True)
class Leak:
    query_id: str  # the training query
    eval_query_id: str  # the eval query it leaks
    how: str  # "same text", "13-gram '...'" or "embedding cosine 0.93"


def _train_eval(queries: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    return (queries.filter(pl.col("split") == "train"), queries.filter(pl.col("split") == "eval"))


def eval_leaks(queries: pl.DataFrame, ngram: int, embeddings: QueryVectors | None = None,
               embed_threshold: float | None = None) -> list[Leak]:
    """Training queries that equal an eval query (normalized), share a word n-gram with one, or
    (given the embeddings) have the same answer as one at cosine >= embed_threshold."""
    train, evals = _train_eval(queries)
    keys: dict[str, str] = {}
    grams: dict[tuple[str, ...], str] = {}
    for qid, prompt in zip(evals["query_id"], evals["prompt"], strict=True):
        keys.setdefault(dedup_key(prompt), qid)
        for gram in ngrams(word_tokens(prompt), ngram):
            grams.setdefault(gram, qid)
    leaks: list[Leak] = []
    flagged: set[str] = set()
    for qid, prompt in zip(train["query_id"], train["prompt"], strict=True):
        if (other := keys.get(dedup_key(prompt))) is not None:
            leaks.append(Leak(qid, other, "same text"))
            flagged.add(qid)
            continue
        for gram in sorted(ngrams(word_tokens(prompt), ngram)):
            if gram in grams:
                leaks.append(Leak(qid, grams[gram], f"{ngram}-gram '{' '.join(gram)}'"))
                flagged.add(qid)
                break
    if embeddings is None or embed_threshold is None or evals.is_empty():
        return leaks
    from distill_dag.corpus.semantic import matches_in

    # Rows without an embedding (none, unless the table was edited) are skipped, not guessed.
    train = _embedded(train, embeddings).filter(~pl.col("query_id").is_in(list(flagged)))
    evals = _embedded(evals, embeddings)
    if train.is_empty() or evals.is_empty():
        return leaks
    for m in matches_in(embeddings.rows(train["query_id"].to_list()),
                        [answer_key(a) for a in train["reference_answer"]],
                        embeddings.rows(evals["query_id"].to_list()),
                        [answer_key(a) for a in evals["reference_answer"]], embed_threshold):
        leaks.append(Leak(train["query_id"][m.index], evals["query_id"][m.of],
                          f"embedding cosine {m.similarity:.3f}"))
    return leaks


def _embedded(frame: pl.DataFrame, embeddings: QueryVectors) -> pl.DataFrame:
    return frame.filter(pl.col("query_id").is_in(list(embeddings.ids)))


@dataclass(frozen=True)
class DuplicateRate:
    rate: float  # share of training queries with a duplicate among the others (both count)
    duplicates: int  # such queries found (in the sample, for the embedding estimate)
    checked: int  # queries checked: all of them, or the sample
    how: str  # "normalized text" or "embeddings (sample of N)"


def duplicate_rate(queries: pl.DataFrame, embeddings: QueryVectors | None = None,
                   embed_threshold: float | None = None, sample: int = DUPLICATE_SAMPLE,
                   seed: int = 0) -> DuplicateRate:
    """The share of training queries that have a duplicate among the other training queries:
    the same normalized text, or (given the embeddings) the same answer at cosine >=
    embed_threshold. The embedding figure is estimated on a seeded sample of `sample` queries,
    each searched against all of them (sample x N similarities, in blocks); the larger of the
    two figures is returned."""
    train, _ = _train_eval(queries)
    if train.is_empty():
        return DuplicateRate(0.0, 0, 0, "normalized text")
    keys = pl.Series([dedup_key(p) for p in train["prompt"]])
    exact = int(keys.is_duplicated().sum())
    result = DuplicateRate(exact / train.height, exact, train.height, "normalized text")
    if embeddings is None or embed_threshold is None:
        return result
    from distill_dag.corpus.semantic import block_rows, group_codes

    train = _embedded(train, embeddings)
    if train.height < 2:
        return result
    vectors = embeddings.rows(train["query_id"].to_list())
    codes = group_codes([answer_key(a) for a in train["reference_answer"]])
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(train.height, size=min(sample, train.height), replace=False))
    found = 0
    step = block_rows(train.height)
    for begin in range(0, len(picked), step):
        rows = picked[begin:begin + step]
        sims = vectors[rows] @ vectors.T
        sims[np.arange(len(rows)), rows] = -1.0  # not itself
        sims[codes[rows, None] != codes[None, :]] = -1.0  # same answer only
        found += int((sims >= embed_threshold).any(axis=1).sum())
    estimate = DuplicateRate(found / len(picked), found, len(picked),
                             f"embeddings (sample of {len(picked):,})")
    return estimate if estimate.rate > result.rate else result


def removal_shares(step_rows: Mapping[str, tuple[int, int]]) -> dict[str, float]:
    """Share of the rows entering each step that the step removed (steps with input only)."""
    return {step: (before - after) / before
            for step, (before, after) in step_rows.items() if before}


def removal_examples(quarantine: pl.DataFrame, per_stage: int = 3) -> pl.DataFrame:
    """The first few removed rows of each stage: stage, where, reason, the query's start."""
    if quarantine.is_empty():
        return pl.DataFrame(schema={"stage": pl.String, "where": pl.String,
                                    "reason": pl.String, "query": pl.String})
    return (quarantine.with_row_index("_order")
            .group_by("stage", maintain_order=True).head(per_stage)
            .select("stage",
                    pl.concat_str([pl.col("source_file").fill_null("generator"),
                                   pl.col("line").cast(pl.String).fill_null("?")],
                                  separator=":").alias("where"),
                    "reason",
                    pl.col("raw").str.slice(0, 120).alias("query")))
