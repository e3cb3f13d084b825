"""Embedding curation, side by side in one run: paraphrase decontamination of N training
queries against M eval questions plus paraphrase dedup among the training queries (embedding +
blocked search, as query_corpus runs them), against the embedding model's raw encode of the
same texts. The search must not matter: the target is >= 0.8x the raw throughput.

    .venv/bin/python benchmarks/bench_embedding_curation.py [--queries 100000] [--eval 1000]
"""

from __future__ import annotations

import argparse
import resource
import time

import polars as pl

from distill_dag.corpus.checks import duplicate_rate
from distill_dag.corpus.generator import generate_word_problems
from distill_dag.corpus.semantic import (
    QueryVectors,
    earlier_duplicates,
    embed,
    load_embedder,
    matches_in,
)
from distill_dag.corpus.text import answer_key, make_query_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--eval", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    train = generate_word_problems(args.queries, seed=3, levels=(1, 2, 3))
    evals = generate_word_problems(args.eval, seed=4, levels=(1, 2, 3))
    texts = [r["prompt"] for r in train] + [r["prompt"] for r in evals]
    groups = [answer_key(r["reference_answer"]) for r in train + evals]
    model = load_embedder("pkg:all-minilm-l6-v2")
    model.encode(texts[:256], batch_size=args.batch_size)  # warm-up

    started = time.perf_counter()
    model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True)
    raw = time.perf_counter() - started

    started = time.perf_counter()
    vectors = embed(model, texts, args.batch_size).vectors
    encoded = time.perf_counter() - started
    n = args.queries
    contaminated = matches_in(vectors[:n], groups[:n], vectors[n:], groups[n:], 0.9)
    gone = {m.index for m in contaminated}
    left = [i for i in range(n) if i not in gone]
    duplicates = earlier_duplicates(vectors[left], [groups[i] for i in left], 0.95)
    pipeline = time.perf_counter() - started

    # query_corpus's duplicate_rate check on the kept queries (reported, not in the ratio).
    dropped = {left[m.index] for m in duplicates}
    kept = [i for i in left if i not in dropped]
    rows = [train[i] for i in kept]
    table = pl.DataFrame({"query_id": [make_query_id(r["prompt"]) for r in rows],
                          "split": ["train"] * len(rows), "prompt": [r["prompt"] for r in rows],
                          "reference_answer": [r["reference_answer"] for r in rows]})
    started = time.perf_counter()
    rate = duplicate_rate(table, QueryVectors(table["query_id"].to_list(), vectors[kept]), 0.95)
    check = time.perf_counter() - started

    total = len(texts)
    print(f"{args.queries:,} training queries + {args.eval:,} eval questions, batch "
          f"{args.batch_size}:")
    print(f"  raw encode            {total / raw:8.1f} sentences/s ({raw:.1f} s)")
    print(f"  curation (embed+search) {total / pipeline:6.1f} sentences/s ({pipeline:.1f} s: "
          f"embed {encoded:.1f} s, search {pipeline - encoded:.1f} s) = "
          f"**{raw / pipeline:.2f}x** raw")
    print(f"  duplicate_rate check afterwards: {check:.1f} s ({rate.rate:.4%} by {rate.how})")
    print(f"  removed: {len(contaminated):,} eval paraphrases, {len(duplicates):,} training "
          f"paraphrases; peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GB")


if __name__ == "__main__":
    main()
