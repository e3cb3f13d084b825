"""query_corpus: ingest, clean, dedup and split the queries; quarantine what is bad."""


import time

import dagster as dg
import polars as pl

from assets._common import content_version, fail, preview, retry_policy, stale_or_updated
from distill_dag.config import ProjectConfig
from distill_dag.corpus import EmptyCorpusError, build_corpus, dedup_key
from distill_dag.corpus.curate import ngrams, word_tokens
from resources import ProjectResource, StoreResource

STAGE_VERSION = "1"


def _grams(text: str, n: int) -> set[tuple[str, ...]]:
    return ngrams(word_tokens(text), n)


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
                              description="No training query equals or shares an n-gram with "
                                          "an eval query."),
            dg.AssetCheckSpec("has_train_and_eval", asset="query_corpus",
                              description="Both splits are non-empty."),
        ],
        description="Queries from the generator and/or files: normalized, stable query_id, "
                    "exact-deduplicated, eval split held out and decontaminated. Bad rows go to "
                    "the `quarantine` table with file, line, field and reason.",
    )
    def query_corpus(context: dg.AssetExecutionContext, project: ProjectResource,
                     store: StoreResource):
        cfg = project.load()
        started = time.perf_counter()
        db = store.store()
        previous = db.read_table("queries") if db.table_exists("queries") else None
        try:
            result = build_corpus(cfg.corpus, previous)
        except (EmptyCorpusError, FileNotFoundError) as exc:
            raise fail(f"query_corpus: {exc}") from exc
        for warning in result.warnings:
            context.log.warning(warning)
        db.write_table("queries", result.queries)
        db.write_table("quarantine", result.quarantine)
        queries = result.queries
        train = queries.filter(pl.col("split") == "train")
        evals = queries.filter(pl.col("split") == "eval")

        eval_keys = {dedup_key(p) for p in evals["prompt"]}
        eval_grams = set().union(*(_grams(p, cfg.corpus.decontam_ngram) for p in evals["prompt"]))
        leaks = [q for q, p in zip(train["query_id"], train["prompt"], strict=True)
                 if dedup_key(p) in eval_keys or _grams(p, cfg.corpus.decontam_ngram) & eval_grams]
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
                                              "examples": str(leaks[:5])}),
                dg.AssetCheckResult(check_name="has_train_and_eval",
                                    passed=train.height > 0 and evals.height > 0,
                                    severity=dg.AssetCheckSeverity.WARN,
                                    metadata={"train": train.height, "eval": evals.height}),
            ],
        )

    return [query_corpus]
