"""What query_corpus's curation removes from GSM8K: train as the corpus, test_dev as the eval set.

Every step at its default settings (quality filters, exact dedup, 13-gram decontamination,
MinHash near-duplicates, embedding paraphrases), then the checks query_corpus runs on the
result. Prints the rows each step removed with examples, the step timings and the checks.

    .venv/bin/python benchmarks/report_gsm8k_curation.py [--data ../shared/data/gsm8k]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from distill_dag.corpus import CorpusConfig, build_corpus
from distill_dag.corpus.checks import duplicate_rate, eval_leaks, removal_examples, removal_shares

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--eval-file", default="test_dev.jsonl")
    args = parser.parse_args()
    train, evals = args.data / "train.jsonl", args.data / args.eval_file
    if not train.exists() or not evals.exists():
        sys.exit(f"GSM8K is not at {args.data} (needs train.jsonl and {args.eval_file}); "
                 "pass --data")
    fields = {"prompt": "question", "reference_answer": "answer"}
    cfg = CorpusConfig.from_dict({"files": [
        {"path": str(train), "fields": fields, "answer_format": "gsm8k"},
        {"path": str(evals), "fields": fields, "answer_format": "gsm8k", "split": "eval"}]})
    started = time.perf_counter()
    result = build_corpus(cfg)
    total = time.perf_counter() - started
    stats = result.stats
    print(f"GSM8K: {stats['rows_read']:,} rows read ({train.name} + {evals.name}); "
          f"{stats['train']:,} training and {stats['eval']:,} eval queries kept; {total:.1f} s")
    print("\nremoved per step:")
    for key, value in stats.items():
        if key.endswith("_removed") or key in ("conflicts", "eval_held_out"):
            print(f"  {key:32s} {value:6,}")
    print("\nrows in -> out and seconds per step:")
    shares = removal_shares(result.step_rows)
    for step, seconds in result.seconds.items():
        rows = result.step_rows.get(step)
        flow = f"{rows[0]:7,} -> {rows[1]:7,} ({shares.get(step, 0):.2%} removed)" if rows else ""
        print(f"  {step:26s} {seconds:7.2f} s  {flow}")
    print("\nexamples (query_corpus metadata 'removal_examples'):")
    for row in removal_examples(result.quarantine).iter_rows(named=True):
        print(f"  [{row['stage']}] {row['where']}: {row['reason'][:150]}")
        print(f"      {row['query'][:110]!r}")
    leaks = eval_leaks(result.queries, cfg.decontam_ngram, result.embeddings,
                       cfg.embed_decontam_threshold)
    dups = duplicate_rate(result.queries, result.embeddings, cfg.embed_dedup_threshold)
    print(f"\nchecks: no_eval_leakage {'passed' if not leaks else f'FAILED ({len(leaks)})'}; "
          f"duplicate_rate {dups.rate:.4%} ({dups.duplicates} of {dups.checked:,} by "
          f"{dups.how}); removal_share max "
          f"{max(shares.values()):.2%} (warns above {cfg.warn_removed_share:.0%})")


if __name__ == "__main__":
    main()
