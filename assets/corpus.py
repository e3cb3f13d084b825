"""query_corpus: ingest, clean, dedup and split the queries; quarantine what is bad."""


import time

import dagster as dg
import polars as pl

from assets._common import (
    content_version,
    fail,
    preview,
    removal_share_check,
    retry_policy,
    stale_or_updated,
)
from distill_dag.config import ProjectConfig
from distill_dag.corpus import ConfigError, EmptyCorpusError, build_corpus
from distill_dag.corpus.checks import (
    duplicate_rate,
    eval_leaks,
    removal_examples,
    removal_shares,
)
from resources import ProjectResource, StoreResource

STAGE_VERSION = "1"


def build(project: ProjectConfig) -> list:
    @dg.asset(
        group_name="distill",
        automation_condition=stale_or_updated(),
        retry_policy=retry_policy(project),
        deps=["corpus_files"],
        code_version=f"{STAGE_VERSION}+{project.corpus_settings_hash()}",
        kinds={"duckdb", "polars"},
        check_specs=[
            dg.AssetCheckSpec("no_eval_leakage", asset="query_corpus", blocking=True,
                              description="No training query equals an eval query, shares a "
                                          "decontam_ngram-word n-gram with one, or (when the "
                                          "embedding step runs) paraphrases one with the same "
                                          "answer at cosine >= embed_decontam_threshold."),
            dg.AssetCheckSpec("duplicate_rate", asset="query_corpus",
                              description="At most max_duplicate_rate of the training queries "
                                          "have a duplicate among the others (normalized text; "
                                          "an embedding paraphrase with the same answer, "
                                          "estimated on a sample, when that step runs)."),
            dg.AssetCheckSpec("removal_share", asset="query_corpus",
                              description="No curation step removed more than "
                                          "warn_removed_share of the rows it was given."),
            dg.AssetCheckSpec("has_train_and_eval", asset="query_corpus",
                              description="Both splits are non-empty."),
        ],
        description="Queries from the generator and/or files: normalized, stable query_id, "
                    "quality-filtered (length, charset, scripts, language, gradeable answer), "
                    "exact- and near-deduplicated (MinHash, embeddings), eval split held out "
                    "and decontaminated (n-grams, MinHash, embeddings). Removed rows go to the "
                    "`quarantine` table with file, line, field, reason and the row they "
                    "matched.",
    )
    def query_corpus(context: dg.AssetExecutionContext, project: ProjectResource,
                     store: StoreResource):
        cfg = project.load()
        started = time.perf_counter()
        db = store.store()
        previous = db.read_table("queries") if db.table_exists("queries") else None
        try:
            result = build_corpus(cfg.corpus, previous)
        except (EmptyCorpusError, FileNotFoundError, ConfigError) as exc:
            raise fail(f"query_corpus: {exc}") from exc
        for warning in result.warnings:
            context.log.warning(warning)
        db.write_table("queries", result.queries)
        db.write_table("quarantine", result.quarantine)
        queries = result.queries
        train = queries.filter(pl.col("split") == "train")
        evals = queries.filter(pl.col("split") == "eval")

        c = cfg.corpus
        leaks = eval_leaks(queries, c.decontam_ngram, result.embeddings,
                           c.embed_decontam_threshold)
        duplicates = duplicate_rate(queries, result.embeddings, c.embed_dedup_threshold)
        shares = removal_shares(result.step_rows)
        examples = removal_examples(result.quarantine)
        reasons = (result.quarantine.group_by("reason").len().sort("len", descending=True)
                   if result.quarantine.height else None)
        for row in (result.quarantine.head(20).iter_rows(named=True)
                    if result.quarantine.height else []):
            context.log.warning(f"quarantined {row['source_file']}:{row['line']} "
                                f"field={row['field']}: {row['reason']}")
        return dg.MaterializeResult(
            metadata={
                **{k: dg.MetadataValue.int(int(v)) for k, v in result.stats.items()},
                "dagster/row_count": queries.height,
                "seconds": round(time.perf_counter() - started, 3),
                **{f"seconds_{step}": round(t, 3) for step, t in result.seconds.items()},
                "warnings": dg.MetadataValue.md("\n".join(f"- {w}" for w in result.warnings)
                                                or "none"),
                "preview": preview(queries, ["query_id", "split", "difficulty", "prompt",
                                             "reference_answer"]),
                "quarantine_preview": preview(result.quarantine, ["source_file", "line", "field",
                                                                  "reason"], rows=10),
                "removal_examples": preview(examples, list(examples.columns),
                                            rows=examples.height, width=120),
                **{f"removed_share_{k}": round(v, 4) for k, v in shares.items()},
                "quarantine_reasons": dg.MetadataValue.md(
                    "\n".join(f"- {r['reason'][:100]}: {r['len']}"
                              for r in reasons.head(10).iter_rows(named=True))
                    if reasons is not None else "none"),
            },
            data_version=content_version(queries, ["query_id", "prompt", "split",
                                                   "reference_answer", "domain", "source"]),
            check_results=[
                dg.AssetCheckResult(check_name="no_eval_leakage", passed=not leaks,
                                    metadata={"leaked_queries": len(leaks),
                                              "examples": "; ".join(
                                                  f"{k.query_id} ~ eval {k.eval_query_id} "
                                                  f"({k.how})" for k in leaks[:5]) or "none"}),
                dg.AssetCheckResult(check_name="duplicate_rate",
                                    passed=duplicates.rate <= c.max_duplicate_rate,
                                    severity=dg.AssetCheckSeverity.WARN,
                                    metadata={"duplicate_rate": round(duplicates.rate, 6),
                                              "duplicates": duplicates.duplicates,
                                              "checked": duplicates.checked,
                                              "measured_by": duplicates.how,
                                              "max_duplicate_rate": c.max_duplicate_rate}),
                removal_share_check(shares, c.warn_removed_share),
                dg.AssetCheckResult(check_name="has_train_and_eval",
                                    passed=train.height > 0 and evals.height > 0,
                                    severity=dg.AssetCheckSeverity.WARN,
                                    metadata={"train": train.height, "eval": evals.height}),
            ],
        )

    return [query_corpus]
