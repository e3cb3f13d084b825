"""eval_report: base vs distilled student on the held-out split, with intervals and provenance."""


import base64
import os
import time
from pathlib import Path

import dagster as dg
import polars as pl

from assets._common import fail, retry_policy, stale_or_updated, work_counters
from distill_dag.config import ProjectConfig
from distill_dag.configbase import stable_hash
from distill_dag.evaluation.report import verdict_line, write_report
from distill_dag.evaluation.run import (
    BASE,
    DISTILLED,
    category_shares,
    compare,
    eval_queries,
    evaluate_model,
    score_test_time_provenance,
)
from distill_dag.tracking import TrackingUnavailableError, open_tracker, redact_uri
from resources import ProjectResource, RuntimeResource, StoreResource

STAGE_VERSION = "1"


def _embedded_png(path: str, title: str) -> str:
    with open(path, "rb") as handle:
        data = base64.b64encode(handle.read()).decode()
    return f"**{title}**\n\n![{title}](data:image/png;base64,{data})\n"


def build(project: ProjectConfig) -> list:
    @dg.asset(
        group_name="distill",
        automation_condition=stale_or_updated(),
        retry_policy=retry_policy(project),
        deps=["distilled_checkpoint", "teacher_selection", "query_corpus"],
        code_version=f"{STAGE_VERSION}+"
                     f"{project.section_hash('evaluation', 'student', 'provenance')}",
        kinds={"pytorch", "mlflow"},
        pool="gpu",
        op_tags=project.orchestration.gpu_op_tags(),
        check_specs=[
            dg.AssetCheckSpec("distilled_beats_base", asset="eval_report",
                              description="The distilled student's greedy pass@1 gain over the "
                                          "base student has a bootstrap interval above 0 "
                                          "(warns otherwise)."),
        ],
        description="Base vs distilled student on the held-out queries, same prompt and token "
                    "budget: greedy pass@1, pass@k and mean@k (unbiased, n samples), answer-"
                    "extraction failures, output length, a paired bootstrap interval of the "
                    "gain, and the test-time provenance (Teacher / Student / Shared / Boosted) "
                    "of the distilled student's own answers. Markdown + PNG report, MLflow run.",
    )
    def eval_report(context: dg.AssetExecutionContext, project: ProjectResource,
                    store: StoreResource, runtime: RuntimeResource):
        cfg = project.load()
        ecfg = cfg.evaluation
        db = store.store()
        checkpoint = db.read_table("distilled_checkpoint") \
            if db.table_exists("distilled_checkpoint") else None
        if checkpoint is None or checkpoint.height == 0:
            raise fail("eval_report: no distilled checkpoint is registered; "
                       "materialize distilled_checkpoint first")
        ckpt = checkpoint.row(0, named=True)
        if not os.path.exists(ckpt["path"]):
            raise fail(f"eval_report: the registered checkpoint folder "
                       f"{ckpt['path']} is gone; rematerialize "
                       "distilled_checkpoint")
        try:
            queries = eval_queries(db.read_table("queries"), ecfg)
        except ValueError as exc:
            raise fail(f"eval_report: {exc}") from exc
        tracker = None
        if cfg.tracking.enabled:
            try:
                tracker = open_tracker(cfg.tracking, store.home)
            except TrackingUnavailableError as exc:
                raise fail(f"eval_report: {exc}") from exc

        teacher = None
        if ecfg.provenance:  # resolve the teacher before minutes of generation, not after
            teacher_name = ecfg.provenance_teacher
            if teacher_name is None:
                ranked = db.read_table("teacher_metrics") \
                    if db.table_exists("teacher_metrics") else None
                teacher_name = ranked.sort("rank")["teacher"][0] if ranked is not None \
                    and ranked.height else cfg.teachers[0].name
            try:
                teacher = cfg.teacher(teacher_name)
            except KeyError as exc:
                raise fail(f"eval_report: evaluation.provenance_teacher: "
                           f"{exc.args[0]}") from exc
        common = dict(store=db, device=runtime.device, dtype=runtime.dtype,
                      show_progress=runtime.show_progress)
        started = time.perf_counter()
        base = evaluate_model(BASE, cfg.student.model, cfg.student.prompt, queries, ecfg,
                              **common)
        distilled = evaluate_model(DISTILLED, ckpt["path"], cfg.student.prompt, queries, ecfg,
                                   **common)
        cmp = compare(base, distilled, ecfg)

        shares = sentences = None
        if teacher is not None:
            sentences = score_test_time_provenance(distilled.greedy, queries, teacher, cfg.student,
                                             ckpt["path"], cfg.provenance, **common)
            shares = category_shares(sentences)
            db.write_table("eval_sentences", sentences)
        answers = pl.concat([
            frame.with_columns(pl.lit(ev.label).alias("model"), pl.lit(kind).alias("decoding"))
            for ev in (base, distilled)
            for kind, frame in (("greedy", ev.greedy), ("sampled", ev.sampled))
            if frame is not None], how="diagonal_relaxed").drop(
                "token_ids", "token_logprobs", "token_starts", strict=False)
        db.write_table("eval_answers", answers)

        report_key = stable_hash({"checkpoint": ckpt["checkpoint_hash"],
                                  "eval": ecfg.fingerprint(), "metrics": cmp.metrics,
                                  "gain": str(cmp.gain)})
        out_dir = os.path.join(store.artifact_dir("eval_report"), report_key)
        header = {"student": cfg.student.model, "distilled checkpoint": ckpt["path"],
                  "checkpoint hash": ckpt["checkpoint_hash"],
                  "trained on": f"filtered_dataset {ckpt['dataset_version']}",
                  "held-out queries": str(cmp.queries),
                  "decoding": f"greedy + {ecfg.num_samples} samples at T={ecfg.temperature}, "
                              f"max {ecfg.max_new_tokens} new tokens, same prompt for both",
                  "provenance teacher": teacher.name if teacher else "not computed"}
        report = write_report(Path(out_dir), cmp, base, distilled, shares, queries, header,
                              ecfg.max_new_tokens)
        seconds = time.perf_counter() - started

        numeric: dict[str, float] = {}
        for label in (BASE, DISTILLED):
            for name, value in cmp.metrics[label].items():
                numeric[f"{label}/{name}"] = round(value, 4)
        numeric.update({"gain/pass@1": round(cmp.gain.estimate, 4),
                        "gain/pass@1_ci_low": round(cmp.gain.low, 4),
                        "gain/pass@1_ci_high": round(cmp.gain.high, 4),
                        "gain/pass@1_lenient": round(cmp.gain_lenient.estimate, 4),
                        "gain/pass@1_lenient_ci_low": round(cmp.gain_lenient.low, 4)})
        for k, iv in cmp.gains_at_k.items():
            numeric[f"gain/pass@{k}_sampled"] = round(iv.estimate, 4)
        if shares is not None:
            for row in shares.iter_rows(named=True):
                for group in ("correct", "incorrect", "all"):
                    value = row[group]
                    if value == value:  # not NaN
                        numeric[f"provenance/{row['category']}_{group}"] = round(value, 4)

        mlflow_meta = {}
        if tracker is not None:
            run = tracker.start_run(f"eval_report {ckpt['checkpoint_hash']}", tags={
                "distill_dag.stage": "eval_report", "dagster.run_id": context.run.run_id,
                "checkpoint_hash": ckpt["checkpoint_hash"]})
            run.log_params({f"evaluation.{k}": v for k, v in ecfg.__dict__.items()}
                           | {"checkpoint_path": ckpt["path"], "queries": cmp.queries})
            run.log_metrics({k.replace("@", "_at_"): v for k, v in numeric.items()})
            for name in os.listdir(out_dir):
                run.log_artifact(os.path.join(out_dir, name), "eval_report")
            run.end()
            mlflow_meta = {"mlflow_run_id": run.run_id,
                           "mlflow_tracking_uri": redact_uri(tracker.uri)}
            if ckpt.get("mlflow_run_id"):
                mlflow_meta["mlflow_training_run_id"] = ckpt["mlflow_run_id"]

        plots = "\n".join(_embedded_png(os.path.join(out_dir, name), title) for name, title in
                          (("accuracy.png", "Accuracy"),
                           ("provenance_categories.png", "Test-time provenance"),
                           ("output_lengths.png", "Output lengths"))
                          if os.path.exists(os.path.join(out_dir, name)))
        context.log.info(verdict_line(cmp))
        gain = cmp.gain
        return dg.MaterializeResult(
            metadata={
                "report_path": dg.MetadataValue.path(str(report)),
                "report": dg.MetadataValue.md(report.read_text()),
                "plots": dg.MetadataValue.md(plots),
                "verdict": verdict_line(cmp),
                "queries": cmp.queries,
                "generated_now": base.generated + distilled.generated,
                "tokens_generated_now": base.tokens_generated + distilled.tokens_generated,
                "seconds": round(seconds, 1),
                **work_counters(eval_generations=base.generated + distilled.generated,
                                eval_tokens_generated=base.tokens_generated
                                + distilled.tokens_generated),
                "checkpoint_hash": ckpt["checkpoint_hash"],
                **numeric,
                **mlflow_meta,
            },
            data_version=dg.DataVersion(report_key),
            check_results=[dg.AssetCheckResult(
                check_name="distilled_beats_base", severity=dg.AssetCheckSeverity.WARN,
                passed=gain.low > 0,
                description=verdict_line(cmp),
                metadata={"gain": gain.estimate, "ci_low": gain.low, "ci_high": gain.high})],
        )

    return [eval_report]
