"""filtered_dataset: the chosen teachers' best correct samples as chat records to train on."""


import hashlib
import os
import shutil

import dagster as dg
import polars as pl

from assets._common import fail, preview, removal_share_check, retry_policy, stale_or_updated
from distill_dag.config import ProjectConfig
from distill_dag.difficulty import student_pass_rates
from distill_dag.filtering import dataset_jsonl, filter_dataset
from distill_dag.models import ModelResolutionError, load_model
from distill_dag.store import Store
from distill_dag.training.data import TrainingDataError, check_record
from resources import ProjectResource, RuntimeResource, StoreResource

STAGE_VERSION = "1"


def _write_exports(frame: pl.DataFrame, root: str) -> tuple[str, str]:
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


def _template_problems(tokenizer, records: list[list[dict]]) -> list[str]:
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


def _student_difficulty(context: dg.AssetExecutionContext, cfg: ProjectConfig, db: Store,
                        runtime: RuntimeResource, samples: pl.DataFrame, queries: pl.DataFrame,
                        chosen: list[str]) -> tuple[pl.DataFrame | None, dict]:
    """The base student's pass rate on each training query a chosen teacher answered correctly
    (the others cannot reach the dataset), and metadata; (None, {}) when the band is off."""
    difficulty = cfg.filtering.difficulty
    if not difficulty.enabled:
        return None, {}
    answered = samples.filter(pl.col("correct").fill_null(False))["query_id"].unique()
    train = queries.filter((pl.col("split") == "train")
                           & pl.col("query_id").is_in(answered.implode()))
    if train.is_empty():
        context.log.warning(f"difficulty: no training query has a correct sample from {chosen}; "
                            "the student was not run")
        return None, {}
    try:
        rates = student_pass_rates(cfg.student, difficulty, train, db, runtime.device,
                                   runtime.dtype, runtime.show_progress)
    except ModelResolutionError as exc:
        raise fail(f"filtered_dataset: student.model: {exc}") from exc
    pass_rates = rates.per_query
    db.write_table("student_difficulty", pass_rates)
    mean = float(pass_rates["student_pass_rate"].mean() or 0)
    context.log.info(f"difficulty: the base student answered {train.height} queries x "
                     f"{difficulty.num_samples} ({rates.generated} generated now, "
                     f"{rates.seconds:.1f} s); mean pass rate {mean:.3f}")
    solved = float((pass_rates["student_pass_rate"] > difficulty.max_pass_rate).mean() or 0)
    return pass_rates, {"student_pass_rate_mean": round(mean, 4),
                        "student_solved_share": round(solved, 4),
                        "difficulty_generated_now": rates.generated}


def build(project: ProjectConfig) -> list:
    @dg.asset(
        group_name="distill",
        automation_condition=stale_or_updated(),
        retry_policy=retry_policy(project),
        deps=["teacher_selection", "teacher_outputs", "provenance_scores"],
        code_version=f"{STAGE_VERSION}+{project.section_hash('filtering', 'student')}",
        kinds={"duckdb", "parquet"},
        # The difficulty band runs the student: then this step needs a GPU slot like eval.
        **({"pool": "gpu", "op_tags": project.orchestration.gpu_op_tags()}
           if project.filtering.difficulty.enabled else {}),
        check_specs=[
            dg.AssetCheckSpec("not_empty", asset="filtered_dataset", blocking=True,
                              description="At least one training record."),
            dg.AssetCheckSpec("no_eval_queries", asset="filtered_dataset", blocking=True,
                              description="No record comes from an eval query."),
            dg.AssetCheckSpec("removal_share", asset="filtered_dataset",
                              description="The difficulty band and the concise filter each "
                                          "removed at most filtering.warn_removed_share of what "
                                          "they were given."),
            dg.AssetCheckSpec("chat_schema", asset="filtered_dataset", blocking=True,
                              description="Every record ends with a user turn and a non-empty "
                                          "assistant turn, and the student's chat template "
                                          "renders both (in that order)."),
        ],
        description="Correct samples of the chosen teacher(s): optionally only queries in "
                    "the base student's pass-rate band and concise traces; best-of-N per query "
                    "by Teacher-sentence count (optionally filled with the most diverse), "
                    "length bounds and a budget; chat `messages` records (JSONL + Parquet) in "
                    "the student's zero-shot format. Incorrect samples go to the `negatives` "
                    "table.",
    )
    def filtered_dataset(context: dg.AssetExecutionContext, project: ProjectResource,
                         store: StoreResource, runtime: RuntimeResource):
        cfg = project.load()
        db = store.store()
        chosen = db.read_table("teacher_metrics", "chosen")["teacher"].to_list()
        queries = db.read_table("queries")
        # Verdicts and text come from teacher_outputs (current verifier); provenance adds the
        # sentence counts. A sample without provenance yet (e.g. k was raised) is reported.
        outputs = db.query(
            "SELECT teacher, request_key, query_id, sample_index, response, correct, "
            "finish_reason, completion_tokens FROM teacher_outputs "
            "WHERE list_contains(?, teacher)", [chosen])
        provenance = db.query(
            "SELECT teacher, request_key, n_sentences, n_teacher, teacher_fraction "
            "FROM provenance_samples WHERE list_contains(?, teacher)", [chosen])
        samples = outputs.join(provenance, on=["teacher", "request_key"], how="left")
        unscored = samples.filter(pl.col("n_sentences").is_null()).height
        if unscored:
            context.log.warning(f"{unscored} samples of {chosen} have no provenance scores yet "
                                "and are left out; materialize provenance_scores first")
        samples = samples.filter(pl.col("n_sentences").is_not_null())
        pass_rates, difficulty_meta = _student_difficulty(context, cfg, db, runtime, samples,
                                                          queries, chosen)
        result = filter_dataset(samples, queries, chosen, cfg.filtering, cfg.student.prompt,
                                pass_rates)
        for warning in result.warnings:
            context.log.warning(warning)
        if unscored:
            result.removed["no_provenance"] = unscored
        data = result.dataset
        db.write_table("filtered_dataset", data)
        db.write_table("negatives", result.negatives)
        jsonl, digest = _write_exports(data, store.artifact_dir("filtered_dataset"))
        eval_ids = set(queries.filter(pl.col("split") == "eval")["query_id"])
        leaked = int(data["query_id"].is_in(list(eval_ids)).sum()) if data.height else 0
        tokenizer = load_model(cfg.student.model, runtime.device, runtime.dtype).tokenizer
        template_problems = _template_problems(tokenizer, data["messages"].to_list())
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
                **{f"removed_share/{k}": round(v, 4) for k, v in result.removed_shares.items()},
                **difficulty_meta,
                "jsonl_path": dg.MetadataValue.path(jsonl),
                "jsonl_sha256": digest,
                "preview": preview(data, ["query_id", "teacher", "n_teacher", "response"]),
            },
            data_version=dg.DataVersion(digest[:16]),
            check_results=[
                dg.AssetCheckResult(check_name="not_empty", passed=data.height > 0,
                                    metadata={"rows": data.height, **result.removed}),
                dg.AssetCheckResult(check_name="no_eval_queries", passed=leaked == 0,
                                    metadata={"eval_records": leaked}),
                removal_share_check(result.removed_shares, cfg.filtering.warn_removed_share),
                dg.AssetCheckResult(check_name="chat_schema", passed=not template_problems,
                                    metadata={"bad_records": len(template_problems),
                                              "examples": "; ".join(template_problems[:5])}),
            ],
        )

    return [filtered_dataset]
