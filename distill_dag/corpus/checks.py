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

from distill_dag.corpus.curate import answer_key, dedup_key, ngrams, word_tokens


@dataclass(frozen=True)
class Leak:
    query_id: str  # the training query
    eval_query_id: str  # the eval query it leaks
    how: str  # "same text", "13-gram '...'" or "embedding cosine 0.93"


def _train_eval(queries: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    return (queries.filter(pl.col("split") == "train"), queries.filter(pl.col("split") == "eval"))


def eval_leaks(queries: pl.DataFrame, ngram: int,
               embeddings: Mapping[str, np.ndarray] | None = None,
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
    train = train.filter(pl.col("query_id").is_in(list(embeddings))
                         & ~pl.col("query_id").is_in(list(flagged)))
    evals = evals.filter(pl.col("query_id").is_in(list(embeddings)))
    if train.is_empty() or evals.is_empty():
        return leaks
    for m in matches_in(np.stack([embeddings[q] for q in train["query_id"]]),
                        [answer_key(a) for a in train["reference_answer"]],
                        np.stack([embeddings[q] for q in evals["query_id"]]),
                        [answer_key(a) for a in evals["reference_answer"]], embed_threshold):
        leaks.append(Leak(train["query_id"][m.index], evals["query_id"][m.of],
                          f"embedding cosine {m.similarity:.3f}"))
    return leaks


def duplicate_rate(queries: pl.DataFrame, embeddings: Mapping[str, np.ndarray] | None = None,
                   embed_threshold: float | None = None) -> tuple[float, int]:
    """(share, count) of training queries that repeat an earlier training query: the same
    normalized text, or (given the embeddings) the same answer at cosine >= embed_threshold."""
    train, _ = _train_eval(queries)
    if train.is_empty():
        return 0.0, 0
    keys = [dedup_key(p) for p in train["prompt"]]
    repeated = len(keys) - len(set(keys))
    if embeddings is not None and embed_threshold is not None:
        from distill_dag.corpus.semantic import earlier_duplicates

        have = [i for i, q in enumerate(train["query_id"]) if q in embeddings]
        if have:
            vectors = np.stack([embeddings[train["query_id"][i]] for i in have])
            groups = [answer_key(train["reference_answer"][i]) for i in have]
            # Exact repeats embed identically, so this count includes them.
            repeated = max(repeated, len(earlier_duplicates(vectors, groups, embed_threshold)))
    return repeated / train.height, repeated


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
