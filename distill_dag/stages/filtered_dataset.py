"""filtered_dataset: the chosen teachers' best correct samples as chat records to train on."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import polars as pl

from distill_dag import tables
from distill_dag.config import ProjectConfig
from distill_dag.difficulty import student_pass_rates
from distill_dag.errors import DistillError, StageError
from distill_dag.filtering import dataset_jsonl, filter_dataset
from distill_dag.models import load_model
from distill_dag.stage import Check, PathValue, StageContext, StageOutput, preview
from distill_dag.stage import removal_share_check as share_check
from distill_dag.store import Store
from distill_dag.training.data import TrainingDataError, check_record


def write_exports(frame: pl.DataFrame, root: str | Path) -> tuple[str, str]:
    """Write train.jsonl ({"messages": [...]}) and train.parquet into root/<sha of the jsonl>/.

    The folder is named by content, so an older materialization's path keeps pointing at the
    bytes its hash describes; the same content is written once."""
    tmp = os.path.join(root, f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    content = dataset_jsonl(frame)
    with open(os.path.join(tmp, "train.jsonl"), "wb") as handle:
        handle.write(content)
    digest = hashlib.sha256(content).hexdigest()
    frame.write_parquet(os.path.join(tmp, "train.parquet"))
    final = os.path.join(root, digest[:16])
    if os.path.exists(final):
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, final)
    return os.path.join(final, "train.jsonl"), digest


def template_problems(tokenizer, records: list[list[dict]]) -> list[str]:
    """Render each record with the student's chat template exactly as training will; a record
    training would reject (no reply, a template that drops it or re-renders the prompt) is a
    problem here already, before any compute is spent on it."""
    problems = []
    for i, messages in enumerate(records):
        try:
            check_record(tokenizer, messages, f"record {i}")
        except TrainingDataError as exc:
            problems.append(str(exc))
    return problems


def student_difficulty(ctx: StageContext, cfg: ProjectConfig, db: Store, samples: pl.DataFrame,
                       queries: pl.DataFrame, chosen: list[str]
                       ) -> tuple[pl.DataFrame | None, dict]:
    """The base student's pass rate on each training query a chosen teacher answered correctly
    (the others cannot reach the dataset), and metadata; (None, {}) when the band is off."""
    difficulty = cfg.filtering.difficulty
    if not difficulty.enabled:
        return None, {}
    answered = samples.filter(pl.col("correct").fill_null(False))["query_id"].unique()
    train = queries.filter((pl.col("split") == "train")
                           & pl.col("query_id").is_in(answered.implode()))
    if train.is_empty():
        ctx.log.warning(f"difficulty: no training query has a correct sample from {chosen}; "
                        "the student was not run")
        return None, {}
    try:
        rates = student_pass_rates(cfg.student, difficulty, train, db, ctx.device, ctx.dtype,
                                   ctx.show_progress)
    except DistillError as exc:
        raise StageError(f"filtered_dataset: student.model: {exc}",
                         retryable=exc.retryable) from exc
    pass_rates = rates.per_query
    db.write_table(tables.STUDENT_DIFFICULTY, pass_rates)
    mean = float(pass_rates["student_pass_rate"].mean() or 0)
    ctx.log.info(f"difficulty: the base student answered {train.height} queries x "
                 f"{difficulty.num_samples} ({rates.generated} generated now, "
                 f"{rates.seconds:.1f} s); mean pass rate {mean:.3f}")
    solved = float((pass_rates["student_pass_rate"] > difficulty.max_pass_rate).mean() or 0)
    return pass_rates, {"student_pass_rate_mean": round(mean, 4),
                        "student_solved_share": round(solved, 4),
                        "difficulty_generated_now": rates.generated}


def chosen_samples(db: Store, chosen: list[str]) -> tuple[pl.DataFrame, int]:
    """The chosen teachers' samples with their provenance counts, and how many samples have no
    provenance yet (left out). Verdicts and text come from teacher_outputs (current verifier)."""
    outputs = db.query(
        "SELECT teacher, request_key, query_id, sample_index, response, correct, "
        f"finish_reason, completion_tokens FROM {tables.TEACHER_OUTPUTS} "
        "WHERE list_contains(?, teacher)", [chosen])
    provenance = db.query(
        "SELECT teacher, request_key, n_sentences, n_teacher, teacher_fraction "
        f"FROM {tables.PROVENANCE_SAMPLES} WHERE list_contains(?, teacher)", [chosen])
    samples = outputs.join(provenance, on=["teacher", "request_key"], how="left")
    unscored = samples.filter(pl.col("n_sentences").is_null()).height
    return samples.filter(pl.col("n_sentences").is_not_null()), unscored


def run(ctx: StageContext) -> StageOutput:
    cfg = ctx.project
    db = ctx.store
    chosen = db.read_table(tables.TEACHER_METRICS, "chosen")["teacher"].to_list()
    queries = db.read_table(tables.QUERIES)
    samples, unscored = chosen_samples(db, chosen)
    if unscored:
        ctx.log.warning(f"{unscored} samples of {chosen} have no provenance scores yet and are "
                        "left out; materialize provenance_scores first")
    pass_rates, difficulty_meta = student_difficulty(ctx, cfg, db, samples, queries, chosen)
    result = filter_dataset(samples, queries, chosen, cfg.filtering, cfg.student.prompt,
                            pass_rates)
    for warning in result.warnings:
        ctx.log.warning(warning)
    if unscored:
        result.removed["no_provenance"] = unscored
    data = result.dataset
    db.write_table(tables.FILTERED_DATASET, data)
    db.write_table(tables.NEGATIVES, result.negatives)
    jsonl, digest = write_exports(data, ctx.artifact_dir("filtered_dataset"))
    eval_ids = queries.filter(pl.col("split") == "eval")["query_id"]
    leaked = int(data["query_id"].is_in(eval_ids.implode()).sum()) if data.height else 0
    tokenizer = load_model(cfg.student.model, ctx.device, ctx.dtype).tokenizer
    problems = template_problems(tokenizer, data["messages"].to_list())
    return StageOutput(
        row_count=data.height,
        tables={tables.FILTERED_DATASET: data, tables.NEGATIVES: result.negatives},
        metadata={
            "negatives": result.negatives.height,
            "chosen_teachers": ", ".join(chosen),
            "queries_covered": data["query_id"].n_unique() if data.height else 0,
            "mean_teacher_sentences": round(float(data["n_teacher"].mean() or 0), 3)
            if data.height else 0.0,
            "mean_completion_tokens": round(float(data["completion_tokens"].mean() or 0), 1)
            if data.height else 0.0,
            **{f"removed/{k}": v for k, v in result.removed.items()},
            **{f"removed_share/{k}": round(v, 4) for k, v in result.removed_shares.items()},
            **difficulty_meta,
            "jsonl_path": PathValue(jsonl),
            "jsonl_sha256": digest,
            "preview": preview(data, ["query_id", "teacher", "n_teacher", "response"]),
        },
        data_version=digest[:16],
        checks=[
            Check("not_empty", passed=data.height > 0,
                  metadata={"rows": data.height, **result.removed}),
            Check("no_eval_queries", passed=leaked == 0, metadata={"eval_records": leaked}),
            share_check(result.removed_shares, cfg.filtering.warn_removed_share),
            Check("chat_schema", passed=not problems,
                  metadata={"bad_records": len(problems), "examples": "; ".join(problems[:5])}),
        ],
    )
