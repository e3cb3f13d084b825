"""filtered_dataset: the chosen teachers' best correct samples as chat records to train on."""


import hashlib
import json
import os

import dagster as dg
import polars as pl

from assets._common import content_version, preview
from distill_dag.config import ProjectConfig
from distill_dag.filtering import filter_dataset
from resources import ProjectResource, StoreResource

STAGE_VERSION = "1"


def _write_exports(frame: pl.DataFrame, folder: str) -> tuple[str, str]:
    """train.jsonl ({"messages": [...]}) and train.parquet; returns the jsonl path and its hash."""
    os.makedirs(folder, exist_ok=True)
    jsonl = os.path.join(folder, "train.jsonl")
    with open(jsonl + ".tmp", "w") as handle:
        for row in frame.select("messages", "query_id", "teacher").iter_rows(named=True):
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(jsonl + ".tmp", jsonl)
    frame.write_parquet(os.path.join(folder, "train.parquet"))
    with open(jsonl, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    return jsonl, digest


def build(project: ProjectConfig) -> list:
    @dg.asset(
        group_name="distill",
        deps=["teacher_selection", "teacher_outputs", "provenance_scores"],
        code_version=f"{STAGE_VERSION}+{project.section_hash('filtering', 'student')}",
        kinds={"duckdb", "parquet"},
        check_specs=[
            dg.AssetCheckSpec("not_empty", asset="filtered_dataset", blocking=True,
                              description="At least one training record."),
            dg.AssetCheckSpec("no_eval_queries", asset="filtered_dataset", blocking=True,
                              description="No record comes from an eval query."),
            dg.AssetCheckSpec("chat_schema", asset="filtered_dataset",
                              description="Every record ends with a non-empty assistant turn "
                                          "after a user turn."),
        ],
        description="Correct samples of the chosen teacher(s), best-of-N per query by "
                    "Teacher-sentence count, length bounds and a budget; chat `messages` "
                    "records (JSONL + Parquet) in the student's zero-shot format. Incorrect "
                    "samples go to the `negatives` table.",
    )
    def filtered_dataset(context: dg.AssetExecutionContext, project: ProjectResource,
                         store: StoreResource):
        cfg = project.load()
        db = store.store()
        chosen = db.read_table("teacher_metrics", "chosen")["teacher"].to_list()
        queries = db.read_table("queries")
        samples = db.read_table("provenance_samples").join(
            db.read_table("teacher_outputs").select("request_key", "response", "finish_reason"),
            on="request_key", how="inner")
        result = filter_dataset(samples, queries, chosen, cfg.filtering, cfg.student.prompt)
        data = result.dataset
        db.write_table("filtered_dataset", data)
        db.write_table("negatives", result.negatives)
        version = content_version(data, ["request_key"]) if data.height else dg.DataVersion("empty")
        jsonl, digest = _write_exports(data, store.artifact_dir("filtered_dataset",
                                                                version.value))
        eval_ids = set(queries.filter(pl.col("split") == "eval")["query_id"])
        leaked = int(data["query_id"].is_in(list(eval_ids)).sum()) if data.height else 0
        bad_schema = sum(
            1 for m in data["messages"].to_list()
            if len(m) < 2 or m[-1]["role"] != "assistant" or not m[-1]["content"].strip()
            or m[-2]["role"] != "user") if data.height else 0
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": data.height,
                "negatives": result.negatives.height,
                "chosen_teachers": ", ".join(chosen),
                "queries_covered": data["query_id"].n_unique() if data.height else 0,
                "mean_teacher_sentences": round(float(data["n_teacher"].mean() or 0), 3)
                if data.height else 0.0,
                "mean_completion_tokens": round(float(data["completion_tokens"].mean() or 0), 1)
                if data.height else 0.0,
                **{f"removed/{k}": v for k, v in result.removed.items()},
                "jsonl_path": dg.MetadataValue.path(jsonl),
                "jsonl_sha256": digest,
                "preview": preview(data, ["query_id", "teacher", "n_teacher", "response"]),
            },
            data_version=version,
            check_results=[
                dg.AssetCheckResult(check_name="not_empty", passed=data.height > 0,
                                    metadata={"rows": data.height, **result.removed}),
                dg.AssetCheckResult(check_name="no_eval_queries", passed=leaked == 0,
                                    metadata={"eval_records": leaked}),
                dg.AssetCheckResult(check_name="chat_schema", passed=bad_schema == 0,
                                    metadata={"bad_records": bad_schema}),
            ],
        )

    return [filtered_dataset]
