"""eval_report: base vs distilled student on the held-out split, with intervals and provenance."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import polars as pl

from distill_dag import tables
from distill_dag.cards import with_evaluation, write_model_card
from distill_dag.configbase import stable_hash
from distill_dag.errors import StageError
from distill_dag.evaluation.report import PLOTS, verdict_line, write_report
from distill_dag.evaluation.run import (
    BASE,
    DISTILLED,
    Comparison,
    category_shares,
    compare,
    eval_queries,
    evaluate_model,
    score_test_time_provenance,
)
from distill_dag.generation.config import TeacherConfig
from distill_dag.mlflow_model import LoggedStudent, record_eval, run_url, ui_base, version_url
from distill_dag.models import model_access
from distill_dag.selection import cost_per_kept_sample
from distill_dag.stage import WARN, Check, Markdown, PathValue, StageContext, StageOutput, Url
from distill_dag.tracking import open_tracker, redact_uri

PLOT_TITLES = {"accuracy.png": "Accuracy", "provenance_categories.png": "Test-time provenance",
               "output_lengths.png": "Output lengths"}


def registered_checkpoint(ctx: StageContext) -> dict[str, Any]:
    """The checkpoint distilled_checkpoint registered, or a StageError saying what to do."""
    db = ctx.store
    found = db.read_table(tables.DISTILLED_CHECKPOINT) \
        if db.table_exists(tables.DISTILLED_CHECKPOINT) else None
    if found is None or found.height == 0:
        raise StageError("eval_report: no distilled checkpoint is registered; materialize "
                         "distilled_checkpoint first")
    ckpt = found.row(0, named=True)
    if not os.path.exists(ckpt["path"]):
        raise StageError(f"eval_report: the registered checkpoint folder {ckpt['path']} is "
                         "gone; rematerialize distilled_checkpoint")
    return ckpt


def provenance_teacher(ctx: StageContext) -> TeacherConfig | None:
    """The teacher whose view the test-time provenance takes: evaluation.provenance_teacher,
    else the best ranked, else the first configured; None when provenance is off."""
    cfg = ctx.project
    if not cfg.evaluation.provenance:
        return None
    name = cfg.evaluation.provenance_teacher
    if name is None:
        db = ctx.store
        ranked = db.read_table(tables.TEACHER_METRICS) \
            if db.table_exists(tables.TEACHER_METRICS) else None
        name = ranked.sort("rank")["teacher"][0] if ranked is not None and ranked.height \
            else cfg.teachers[0].name
    try:
        return cfg.teacher(name)
    except KeyError as exc:
        raise StageError(f"eval_report: evaluation.provenance_teacher: {exc.args[0]}") from exc


def numeric_metrics(cmp: Comparison, shares: pl.DataFrame | None) -> dict[str, float]:
    """The report's numbers as flat metadata (trend plots in the web UI, MLflow metrics)."""
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
    for row in shares.iter_rows(named=True) if shares is not None else []:
        for group in ("correct", "incorrect", "all"):
            if row[group] == row[group]:  # not NaN
                numeric[f"provenance/{row['category']}_{group}"] = round(row[group], 4)
    return numeric


def embedded_plots(out_dir: Path) -> Markdown:
    """The report's PNG plots inlined as data URIs: the web UI renders them in place."""
    parts = []
    for name in PLOTS:
        path = out_dir / name
        if path.exists():
            data = base64.b64encode(path.read_bytes()).decode()
            title = PLOT_TITLES.get(name, name)
            parts.append(f"**{title}**\n\n![{title}](data:image/png;base64,{data})\n")
    return Markdown("\n".join(parts))


def _card_table(numeric: dict[str, float], cmp: Comparison) -> list[dict[str, Any]]:
    """The model card's evaluation table: each pass@ metric for base, distilled and the gain."""
    rows = []
    for key in sorted(k for k in numeric if k.startswith("distilled/pass@")):
        metric = key.split("/", 1)[1]
        rows.append({"metric": metric, "base student": numeric.get(f"base/{metric}"),
                     "distilled": numeric[key]})
    rows.append({"metric": f"held-out queries: {cmp.queries}", "base student": "",
                 "distilled": verdict_line(cmp)})
    return rows


def _log_mlflow(ctx: StageContext, tracker, ckpt: dict, cmp: Comparison,
                numeric: dict[str, float], out_dir: Path) -> dict[str, str]:
    run = tracker.start_run(f"eval_report {ckpt['checkpoint_hash']}", tags={
        "distill_dag.stage": "eval_report", "dagster.run_id": ctx.run_id or "",
        "checkpoint_hash": ckpt["checkpoint_hash"]})
    run.log_params({f"evaluation.{k}": v for k, v in ctx.project.evaluation.__dict__.items()}
                   | {"checkpoint_path": ckpt["path"], "queries": cmp.queries})
    run.log_metrics({k.replace("@", "_at_"): v for k, v in numeric.items()})
    for name in os.listdir(out_dir):
        run.log_artifact(out_dir / name, "eval_report")
    run.end()
    base = ui_base(tracker, ctx.project.tracking.ui_url)
    meta: dict[str, Any] = {"mlflow_run_id": run.run_id,
                            "mlflow_tracking_uri": redact_uri(tracker.uri),
                            "mlflow_run_url": Url(run_url(base, tracker.experiment_id,
                                                          run.run_id))}
    if ckpt.get("mlflow_run_id"):
        meta["mlflow_training_run_id"] = ckpt["mlflow_run_id"]
    logged = LoggedStudent.load(Path(ckpt["path"]).parent)
    if logged is not None:  # the registered student gets its scores
        try:
            record_eval(tracker, logged, run.run_id, numeric)
        except Exception as exc:
            ctx.log.warning(f"MLflow: tagging the registered model with the eval metrics "
                            f"failed ({exc})")
        else:
            if logged.version:
                meta["mlflow_model_version_url"] = Url(version_url(
                    base, logged.registered_name, logged.version))
    return meta


def teacher_costs(ctx: StageContext) -> pl.DataFrame:
    """Per teacher: tokens, seconds and money per verified-correct sample and per sample that
    reached filtered_dataset (selection.cost_per_kept_sample), at the configured prices."""
    db, names = ctx.store, [t.name for t in ctx.project.teachers]
    outputs = db.query("SELECT teacher, correct, prompt_tokens, completion_tokens, latency_s "
                       f"FROM {tables.TEACHER_OUTPUTS} WHERE list_contains(?, teacher)", [names])
    kept = db.query(f"SELECT teacher FROM {tables.FILTERED_DATASET}")
    return cost_per_kept_sample(outputs, kept, {t.name: t.prices() for t in ctx.project.teachers})


def run(ctx: StageContext) -> StageOutput:
    cfg, db = ctx.project, ctx.store
    ecfg = cfg.evaluation
    ckpt = registered_checkpoint(ctx)
    try:
        queries = eval_queries(db.read_table(tables.QUERIES), ecfg)
    except ValueError as exc:
        raise StageError(f"eval_report: {exc}") from exc
    tracker = open_tracker(cfg.tracking, ctx.home) if cfg.tracking.enabled else None
    teacher = provenance_teacher(ctx)  # resolved before minutes of generation, not after
    common = dict(store=db, device=ctx.device, dtype=ctx.dtype, show_progress=ctx.show_progress)
    access = model_access(cfg.student)
    started = time.perf_counter()
    base = evaluate_model(BASE, cfg.student.model, cfg.student.prompt, queries, ecfg, **common,
                          **access)
    distilled = evaluate_model(DISTILLED, ckpt["path"], cfg.student.prompt, queries, ecfg,
                               **common, **access)
    cmp = compare(base, distilled, ecfg)
    shares = None
    if teacher is not None:
        sentences = score_test_time_provenance(distilled.greedy, queries, teacher, cfg.student,
                                               ckpt["path"], cfg.provenance, **common)
        shares = category_shares(sentences)
        db.write_table(tables.EVAL_SENTENCES, sentences)
    answers = pl.concat([
        frame.with_columns(pl.lit(ev.label).alias("model"), pl.lit(kind).alias("decoding"))
        for ev in (base, distilled)
        for kind, frame in (("greedy", ev.greedy), ("sampled", ev.sampled))
        if frame is not None], how="diagonal_relaxed").drop(
            "token_ids", "token_logprobs", "token_starts", strict=False)
    db.write_table(tables.EVAL_ANSWERS, answers)

    report_key = stable_hash({"checkpoint": ckpt["checkpoint_hash"], "eval": ecfg.fingerprint(),
                              "metrics": cmp.metrics, "gain": str(cmp.gain)})
    out_dir = ctx.artifact_dir("eval_report", report_key)
    header = {"student": cfg.student.model, "distilled checkpoint": ckpt["path"],
              "checkpoint hash": ckpt["checkpoint_hash"],
              "trained on": f"filtered_dataset {ckpt['dataset_version']}",
              "held-out queries": str(cmp.queries),
              "decoding": f"greedy + {ecfg.num_samples} samples at T={ecfg.temperature}, "
                          f"max {ecfg.max_new_tokens} new tokens, same prompt for both",
              "provenance teacher": teacher.name if teacher else "not computed"}
    costs = teacher_costs(ctx)
    report = write_report(out_dir, cmp, base, distilled, shares, queries, header,
                          ecfg.max_new_tokens, costs=costs)
    seconds = time.perf_counter() - started
    numeric = numeric_metrics(cmp, shares)
    card = with_evaluation(ckpt["path"], _card_table(numeric, cmp))
    if card is not None:  # the checkpoint's model card gets this report's table
        write_model_card(ckpt["path"], card)
    mlflow_meta = _log_mlflow(ctx, tracker, ckpt, cmp, numeric, out_dir) if tracker else {}
    verdict = verdict_line(cmp)
    ctx.log.info(verdict)
    generated = base.generated + distilled.generated
    tokens = base.tokens_generated + distilled.tokens_generated
    return StageOutput(
        tables={tables.EVAL_ANSWERS: answers},
        metadata={"report_path": PathValue(str(report)), "report": Markdown(report.read_text()),
                  "plots": embedded_plots(out_dir), "verdict": verdict, "queries": cmp.queries,
                  "generated_now": generated, "tokens_generated_now": tokens,
                  "seconds": round(seconds, 1), "checkpoint_hash": ckpt["checkpoint_hash"],
                  **numeric, **mlflow_meta,
                  **{f"{row['teacher']}/{field}": float(row[field])
                     for row in costs.iter_rows(named=True)
                     for field in ("cost_per_correct", "cost_per_kept", "seconds_per_kept")
                     if row[field] is not None}},
        work={"eval_generations": generated, "eval_tokens_generated": tokens},
        data_version=report_key,
        checks=[Check("distilled_beats_base", severity=WARN, passed=cmp.gain.low > 0,
                      description=verdict,
                      metadata={"gain": cmp.gain.estimate, "ci_low": cmp.gain.low,
                                "ci_high": cmp.gain.high})],
    )
