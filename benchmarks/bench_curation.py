"""Curation at scale, one run: ingest + clean + exact dedup + split + n-gram decontamination +
MinHash-LSH near-duplicates of N generated queries written to a JSONL file, on this machine
(the embedding steps are off: they are measured at their own scale).

Prints each step's wall time and throughput and the process's peak memory (RSS).

    .venv/bin/python benchmarks/bench_curation.py [--queries 1000000]

The queries come from the embedded generator (levels 1-3), written to a temporary JSONL file
first, so the file loader (parsing, field mapping, validation) is part of what is measured.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from distill_dag.corpus import CorpusConfig, build_corpus
from distill_dag.corpus.checks import duplicate_rate, eval_leaks
from distill_dag.corpus.generator import generate_word_problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "queries.jsonl"
        started = time.perf_counter()
        with path.open("w") as handle:
            for row in generate_word_problems(args.queries, seed=3, levels=(1, 2, 3)):
                handle.write(json.dumps({"prompt": row["prompt"],
                                         "reference_answer": row["reference_answer"]}) + "\n")
        print(f"wrote {args.queries:,} queries ({path.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - started:.1f} s (not counted)")
        # The embedding steps have their own scale (100,000 queries against 1,000 eval
        # questions) and are off here.
        cfg = CorpusConfig.from_dict({"files": [{"path": str(path)}], "eval_fraction": 0.01,
                                      "embed_decontam_threshold": None,
                                      "embed_dedup_threshold": None})
        started = time.perf_counter()
        result = build_corpus(cfg)
        total = time.perf_counter() - started
    # query_corpus then runs its checks on the table (reported apart from the curation total).
    started = time.perf_counter()
    leaks = eval_leaks(result.queries, cfg.decontam_ngram)
    duplicates = duplicate_rate(result.queries)
    checks = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"\n{'step':<26}{'seconds':>10}{'queries/s':>14}")
    for step, seconds in result.seconds.items():
        print(f"{step:<26}{seconds:>10.1f}{args.queries / max(seconds, 1e-9):>14,.0f}")
    print(f"{'total':<26}{total:>10.1f}{args.queries / total:>14,.0f}")
    print(f"checks afterwards: {checks:.1f} s (no_eval_leakage: {len(leaks)} leaks; "
          f"duplicate_rate {duplicates.rate:.4%})")
    print(f"\npeak RSS {peak_gb:.2f} GB; " + ", ".join(
        f"{k} {v:,}" for k, v in result.stats.items() if v))


if __name__ == "__main__":
    main()
