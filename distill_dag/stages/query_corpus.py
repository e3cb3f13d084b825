"""query_corpus: ingest, clean, dedup and split the queries; quarantine what is bad."""

from __future__ import annotations

import time

import polars as pl

from distill_dag import tables
from distill_dag.corpus import CorpusSourceError, EmptyCorpusError, build_corpus
from distill_dag.corpus.checks import duplicate_rate, eval_leaks, removal_examples, removal_shares
from distill_dag.errors import StageError
from distill_dag.stage import (
    WARN,
    Check,
    Markdown,
    StageContext,
    StageOutput,
    content_version,
    preview,
    removal_share_check,
)

# The columns query_corpus's data version hashes.
VERSION_COLUMNS = ["query_id", "prompt", "split", "reference_answer", "domain", "source"]


def corpus_version(queries: pl.DataFrame) -> str:
    """query_corpus's data version of a query table (e.g. for the dataset card downstream)."""
    return content_version(queries, VERSION_COLUMNS)


def run(ctx: StageContext) -> StageOutput:
    cfg = ctx.project
    started = time.perf_counter()
    db = ctx.store
    previous = db.read_table(tables.QUERIES) if db.table_exists(tables.QUERIES) else None
    try:
        result = build_corpus(cfg.corpus, previous)
    except (EmptyCorpusError, FileNotFoundError, CorpusSourceError) as exc:
        raise StageError(f"query_corpus: {exc}") from exc
    for warning in result.warnings:
        ctx.log.warning(warning)
    db.write_table(tables.QUERIES, result.queries)
    db.write_table(tables.QUARANTINE, result.quarantine)
    queries, quarantine = result.queries, result.quarantine
    train = queries.filter(pl.col("split") == "train")
    evals = queries.filter(pl.col("split") == "eval")

    c = cfg.corpus
    leaks = eval_leaks(queries, c.decontam_ngram, result.embeddings, c.embed_decontam_threshold)
    duplicates = duplicate_rate(queries, result.embeddings, c.embed_dedup_threshold)
    shares = removal_shares(result.step_rows)
    examples = removal_examples(quarantine)
    reasons = (quarantine.group_by("reason").len().sort("len", descending=True)
               if quarantine.height else None)
    for row in quarantine.head(20).iter_rows(named=True) if quarantine.height else []:
        where = row["source_file"] or "generator"  # generated rows have no file
        ctx.log.warning(f"quarantined {where}:{row['line']} "
                        f"field={row['field']}: {row['reason']}")
    return StageOutput(
        row_count=queries.height,
        tables={tables.QUERIES: queries, tables.QUARANTINE: quarantine},
        metadata={
            **{k: int(v) for k, v in result.stats.items()},
            "seconds": round(time.perf_counter() - started, 3),
            **{f"seconds_{step}": round(t, 3) for step, t in result.seconds.items()},
            "warnings": Markdown("\n".join(f"- {w}" for w in result.warnings) or "none"),
            "preview": preview(queries, ["query_id", "split", "difficulty", "prompt",
                                         "reference_answer"]),
            "quarantine_preview": preview(quarantine, ["source_file", "line", "field", "reason"],
                                          rows=10),
            "removal_examples": preview(examples, list(examples.columns), rows=examples.height,
                                        width=120),
            **{f"removed_share_{k}": round(v, 4) for k, v in shares.items()},
            "quarantine_reasons": Markdown(
                "\n".join(f"- {r['reason'][:100]}: {r['len']}"
                          for r in reasons.head(10).iter_rows(named=True))
                if reasons is not None else "none"),
        },
        data_version=corpus_version(queries),
        checks=[
            Check("no_eval_leakage", passed=not leaks,
                  metadata={"leaked_queries": len(leaks),
                            "examples": "; ".join(f"{k.query_id} ~ eval {k.eval_query_id} "
                                                  f"({k.how})" for k in leaks[:5]) or "none"}),
            Check("duplicate_rate", passed=duplicates.rate <= c.max_duplicate_rate,
                  severity=WARN,
                  metadata={"duplicate_rate": round(duplicates.rate, 6),
                            "duplicates": duplicates.duplicates, "checked": duplicates.checked,
                            "measured_by": duplicates.how,
                            "max_duplicate_rate": c.max_duplicate_rate}),
            removal_share_check(shares, c.warn_removed_share),
            Check("has_train_and_eval", passed=train.height > 0 and evals.height > 0,
                  severity=WARN, metadata={"train": train.height, "eval": evals.height}),
        ],
    )
