"""distilled_checkpoint: fine-tune the student on filtered_dataset into a Hugging Face folder."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from distill_dag import tables
from distill_dag.cards import model_card, write_model_card
from distill_dag.configbase import stable_hash
from distill_dag.errors import DistillError, StageError
from distill_dag.filtering import dataset_version as filtered_dataset_version
from distill_dag.mlflow_model import LoggedStudent, log_student, run_url, ui_base, version_url
from distill_dag.models import model_access, resolve_model
from distill_dag.stage import (
    WARN,
    Check,
    Json,
    Markdown,
    PathValue,
    StageContext,
    StageOutput,
    Url,
)
from distill_dag.tracking import (
    TrackedRun,
    flat_params,
    open_tracker,
    redact_uri,
    start_or_resume_run,
)
from distill_dag.training.config import TrainingConfig
from distill_dag.training.data import TOKENIZATION_VERSION
from distill_dag.training.monitor import (
    PLOT,
    MonitorData,
    best_entry,
    kept_step,
    make_callback,
    monitor_entries,
    plot_monitor,
    split_heldout,
    teacher_hacking,
)
from distill_dag.training.objectives import ObjectiveInputs, get_objective
from distill_dag.training.train import MARKER, TrainingResult, train_student

STAGE_VERSION = "1"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
                  MARKER)


def training_records(ctx: StageContext) -> pl.DataFrame:
    """filtered_dataset's rows, or a StageError saying what to do when there are none."""
    if not ctx.store.table_exists(tables.FILTERED_DATASET):
        raise StageError("distilled_checkpoint: filtered_dataset has not been materialized yet; "
                         "materialize it first")
    data = ctx.store.read_table(tables.FILTERED_DATASET)
    if data.height == 0:
        raise StageError("distilled_checkpoint: filtered_dataset has 0 rows, so there is "
                         "nothing to train on and no checkpoint was registered. Loosen "
                         "filtering, raise the teachers' num_samples, or add queries.")
    return data


def run_key(student_fingerprint: str, dataset_version: str, training: TrainingConfig,
            records_version: str | None = None) -> str:
    """Everything that decides the weights: a finished folder under this key is reused. (An
    objective whose records carry nothing beyond filtered_dataset, sft, adds nothing, so the
    keys of runs from before objectives stay.)"""
    parts = {"student": student_fingerprint, "data": dataset_version,
             "training": training.fingerprint(), "stage": STAGE_VERSION,
             "tokenization": TOKENIZATION_VERSION}
    if records_version is not None:
        parts["records"] = records_version
    return stable_hash(parts)


def _log_progress(ctx: StageContext):
    def on_log(entry: dict) -> None:  # one line per logged step (training.logging_steps)
        if "loss" in entry:
            ctx.log.info(f"step {entry['step']}: loss {entry['loss']:.4f}")

    return on_log


def _log_result(ctx: StageContext, run: TrackedRun, result: TrainingResult) -> None:
    try:
        run.log_history((int(h["step"]), {k: v for k, v in h.items() if k != "step"})
                        for h in result.loss_history)
        run.log_metrics({"train_seconds": result.seconds,
                         "supervised_tokens_per_s": result.supervised_tokens_per_s,
                         "process_peak_rss_gb": result.peak_rss_gb,
                         "examples": result.examples}, step=result.global_step)
        run.set_tags({"checkpoint_hash": result.checkpoint_hash,
                      "checkpoint_path": str(result.path)})
        run.log_artifact(result.path / MARKER)
        run.log_artifact(os.path.join(result.path, "chat_template.jinja"))
        if (result.path.parent / PLOT).exists():
            run.log_artifact(result.path.parent / PLOT)
        run.end()
    except Exception as exc:  # the checkpoint is saved; losing the log must not lose it
        ctx.log.warning(f"MLflow logging after training failed ({exc}); the checkpoint is "
                        f"kept. MLflow run {run.run_id} may be incomplete.")
        with contextlib.suppress(Exception):
            run.end("FAILED")


@dataclass
class Trained:
    """One trained (or reused) checkpoint of the stage."""

    result: TrainingResult
    run_key: str
    objective: str
    metadata: dict[str, Any]  # what the objective's records said about themselves


def train(ctx: StageContext, data: pl.DataFrame,
          stand_ins: Mapping[str, pl.DataFrame] | None = None,
          purpose: str = "distilled_checkpoint") -> tuple[Trained, str]:
    """Train (or reuse) the checkpoint for `data` (filtered_dataset's rows): (the final stage,
    dataset version). An objective that continues another's checkpoint (REDI) trains, or
    reuses, that one first. `stand_ins` replace other store tables the objective reads (a
    trial's negatives); `purpose` tags the MLflow runs (distilled_checkpoint, or a trial)."""
    stand_ins = {tables.FILTERED_DATASET: data, **(stand_ins or {})}
    training = ctx.project.training
    objective = get_objective(training.objective)
    dataset_version = filtered_dataset_version(data)
    monitor = None
    if training.monitor.enabled:  # held-out queries leave the data every objective reads
        kept, heldout = split_heldout(data, training.monitor)
        stand_ins[tables.FILTERED_DATASET] = kept
        queries = stand_ins.get(tables.QUERIES)
        monitor = MonitorData.build(kept, heldout, ctx.store.read_table(tables.QUERIES)
                                    if queries is None else queries, training.monitor)
        ctx.log.info(f"monitor: {heldout['query_id'].n_unique()} queries ({heldout.height} "
                     f"records) held out of training, measured every "
                     f"{training.monitor.eval_steps} steps")
    student = ctx.project.student.model
    first = objective.first_stage(training.objective_settings())
    before: Trained | None = None
    if first is not None:
        ctx.log.info(f"{training.objective}: training on top of the {first} checkpoint")
        before = train_one(ctx, dataclasses.replace(training, objective=first), student,
                           dataset_version, stand_ins=stand_ins, purpose=purpose,
                           monitor=monitor)
        student = str(before.result.path)
    rounds = objective.rounds(training.objective_settings())
    for round_ in range(rounds):
        if rounds > 1:
            ctx.log.info(f"{training.objective}: round {round_ + 1} of {rounds}")
        trained = train_one(ctx, objective.stage_config(training), student, dataset_version,
                            round_, stand_ins=stand_ins, purpose=purpose, monitor=monitor)
        student = str(trained.result.path)
    if before is not None:
        trained.metadata.update({f"{first}_checkpoint": PathValue(str(before.result.path)),
                                 f"{first}_trained_now": before.result.trained_now})
    return trained, dataset_version


def train_one(ctx: StageContext, training: TrainingConfig, student: str,
              dataset_version: str, round_: int = 0,
              stand_ins: Mapping[str, pl.DataFrame] | None = None,
              purpose: str = "distilled_checkpoint",
              monitor: MonitorData | None = None) -> Trained:
    """One checkpoint: `student` trained by training.objective, logged to MLflow; with
    `monitor`, the held-out monitor measures it during training."""
    cfg = ctx.project
    objective = get_objective(training.objective)
    resolved = resolve_model(student, allow_pickle_weights=cfg.student.allow_pickle_weights)
    inputs = ObjectiveInputs(ctx.store, cfg, student, round_, device=ctx.device, dtype=ctx.dtype,
                             show_progress=ctx.show_progress, log=ctx.log,
                             tables=dict(stand_ins or {}))
    try:
        data = objective.records(inputs, training.objective_settings())
    except DistillError as exc:
        raise StageError(f"distilled_checkpoint ({training.objective}): {exc}",
                         retryable=exc.retryable) from exc
    key = run_key(resolved.fingerprint, dataset_version, training, data.version)
    run_dir = ctx.artifact_dir("distilled_checkpoint", key)
    tracker = run = None
    if not (run_dir / "model" / MARKER).exists():
        tracker = open_tracker(cfg.tracking, ctx.home)
        if tracker is not None and tracker.fallback_note:
            ctx.log.warning(tracker.fallback_note)
        # A run killed mid-training resumes from its saved step, and into its MLflow run.
        run, resumed = start_or_resume_run(
            tracker, run_dir, f"{purpose} {key}",
            tags={"distill_dag.stage": purpose,
                  "distill_dag.objective": training.objective,
                  "dagster.run_id": ctx.run_id or "", "dataset_version": dataset_version})
        if run is not None:
            if resumed:
                ctx.log.info(f"continuing MLflow run {run.run_id}")
            run.log_params({**flat_params(training), "student.model": student,
                            "student.fingerprint": resolved.fingerprint,
                            "dataset_version": dataset_version, "records": len(data.records)})
    try:
        result = train_student(
            data.records, student, training, run_dir,
            info={"dataset_version": dataset_version, "run_key": key,
                  "mlflow_run_id": run.run_id if run else None,
                  "mlflow_tracking_uri": redact_uri(tracker.uri) if tracker else None},
            device=ctx.device, show_progress=ctx.show_progress, on_log=_log_progress(ctx),
            **model_access(cfg.student),
            callbacks=[make_callback(training.monitor, monitor, run_dir, training.max_length)]
            if monitor is not None else ())
    except BaseException as exc:
        if run:
            run.end("FAILED")
        if isinstance(exc, DistillError):  # bad records, too few GPUs
            raise StageError(f"distilled_checkpoint: {exc}", retryable=exc.retryable) from exc
        raise
    # Drawn again for a reused run too: its history is in the finished folder's marker.
    plot_monitor(result.loss_history, run_dir / PLOT,
                 teacher_hacking(result.loss_history, training.monitor.patience))
    if run is not None:
        _log_result(ctx, run, result)
    return Trained(result, key, training.objective, data.metadata)


def run(ctx: StageContext) -> StageOutput:
    cfg = ctx.project
    data = training_records(ctx)
    trained, dataset_version = train(ctx, data)
    result, key = trained.result, trained.run_key
    if result.resumed_from_step:
        ctx.log.info(f"resumed from saved step {result.resumed_from_step}")
    info = result.info
    missing = [f for f in REQUIRED_FILES if not os.path.exists(result.path / f)]
    if missing:
        raise StageError(f"distilled_checkpoint: {result.path} lacks {missing}; "
                         "it was not registered")
    registered = pl.DataFrame([{
        "path": str(result.path), "checkpoint_hash": result.checkpoint_hash,
        "dataset_version": dataset_version, "run_key": key, "base_model": cfg.student.model,
        "global_step": result.global_step, "mlflow_run_id": info.get("mlflow_run_id"),
        "mlflow_tracking_uri": info.get("mlflow_tracking_uri"), "created_at": time.time()}])
    ctx.store.write_table(tables.DISTILLED_CHECKPOINT, registered)
    training = cfg.training
    write_model_card(result.path, model_card(
        base_model=cfg.student.model, objective=training.objective,
        training_method=f"LoRA r={training.lora.r}" if training.method == "lora"
        else "full fine-tune", data_version=dataset_version,
        teachers=sorted(set(data["teacher"])) if "teacher" in data.columns else [],
        license=cfg.filtering.license), replace=False)  # eval_report adds its table
    ctx.log.info(f"checkpoint {result.path} ("
                 f"{'trained' if result.trained_now else 'reused'}, {result.global_step} steps)")
    return StageOutput(
        tables={tables.DISTILLED_CHECKPOINT: registered},
        metadata={**_metadata(ctx, result, dataset_version), **_monitor_metadata(result),
                  **trained.metadata, **_model_metadata(ctx, result, dataset_version)},
        work={"training_steps": result.steps_run if result.trained_now else 0},
        data_version=result.checkpoint_hash,
        checks=_checks(ctx, result, missing),
    )


def _losses(result: TrainingResult) -> list[dict]:
    return [h for h in result.loss_history if "loss" in h]


def _metadata(ctx: StageContext, result: TrainingResult, dataset_version: str) -> dict[str, Any]:
    losses, info = _losses(result), result.info
    metadata: dict[str, Any] = {
        "path": PathValue(str(result.path)),
        "checkpoint_hash": result.checkpoint_hash,
        "dataset_version": dataset_version,
        "trained_now": result.trained_now,
        "objective": ctx.project.training.objective,
        "method": ctx.project.training.method,
        "global_step": result.global_step,
        "steps_run_now": result.steps_run,
        "resumed_from_step": result.resumed_from_step,
        "examples": info.get("examples", result.examples),
        "load_with": Markdown(f"```python\nfrom transformers import AutoModelForCausalLM\nmodel = "
                              f"AutoModelForCausalLM.from_pretrained({str(result.path)!r})\n```"),
        "loss_curve": Json([{"step": int(h["step"]), "loss": round(h["loss"], 4)}
                            for h in losses]),
    }
    if losses:
        metadata.update({"loss_first": losses[0]["loss"], "loss_last": losses[-1]["loss"]})
    if result.trained_now:
        metadata.update({"train_seconds": round(result.seconds, 1),
                         "supervised_tokens_per_s": round(result.supervised_tokens_per_s, 1),
                         "process_peak_rss_gb": round(result.peak_rss_gb, 2),
                         "precision": result.precision,
                         "dropped_too_long": result.dropped_too_long})
    if info.get("mlflow_run_id"):
        metadata["mlflow_run_id"] = info["mlflow_run_id"]
        metadata["mlflow_tracking_uri"] = str(info.get("mlflow_tracking_uri"))
    return metadata


def _model_metadata(ctx: StageContext, result: TrainingResult,
                    dataset_version: str) -> dict[str, Any]:
    """The final checkpoint as an MLflow model in its training run, registered, with links.
    Logged once (a reused checkpoint finds it in mlflow_model.json, or is logged now if it
    never was); a failure to log costs the links, never the checkpoint."""
    cfg = ctx.project.tracking
    run_id = result.info.get("mlflow_run_id")
    if not (cfg.enabled and run_id):
        return {}
    try:
        tracker = open_tracker(cfg, ctx.home)
        logged = LoggedStudent.load(result.path.parent)
        if logged is None and cfg.log_model:
            ctx.log.info(f"MLflow: logging the student as a model in run {run_id}"
                         + (f", registered as {cfg.registered_model}"
                            if cfg.registered_model else ""))
            logged = log_student(tracker, run_id, result.path, cfg.registered_model, tags={
                "dagster.run_id": ctx.run_id or "", "dataset_version": dataset_version,
                "checkpoint_hash": result.checkpoint_hash,
                "base_model": ctx.project.student.model,
                "objective": ctx.project.training.objective})
            logged.save(result.path.parent)
    except Exception as exc:  # the checkpoint is saved; losing the model log must not lose it
        ctx.log.warning(f"MLflow: logging the student as a model failed ({exc}); the "
                        "checkpoint is saved and registered in the store")
        return {}
    base = ui_base(tracker, cfg.ui_url)
    metadata: dict[str, Any] = {"mlflow_run_url": Url(run_url(base, tracker.experiment_id,
                                                                 run_id))}
    if logged is not None:
        metadata["mlflow_model_uri"] = logged.model_uri
        if logged.version:
            metadata.update({
                "mlflow_registered_model": f"{logged.registered_name} version {logged.version}",
                "mlflow_model_version_url": Url(version_url(base, logged.registered_name,
                                                            logged.version))})
    return metadata


def _monitor_metadata(result: TrainingResult) -> dict[str, Any]:
    entries = monitor_entries(result.loss_history)
    if not entries:
        return {}
    best, kept = best_entry(result.loss_history), kept_step(result.loss_history)
    metadata: dict[str, Any] = {
        "monitor_curve": Json([{k: round(v, 4) if k != "step" else int(v) for k, v in h.items()}
                               for h in entries]),
        "monitor_best_step": int(best["step"]),
        "monitor_best_heldout": round(best["monitor_heldout"], 4),
        "monitor_weights": f"held-out evaluation step {kept} (training.monitor.keep_best)"
                           if kept is not None else f"the last step, {result.global_step}",
    }
    plot = result.path.parent / PLOT
    if plot.exists():
        data = base64.b64encode(plot.read_bytes()).decode()
        metadata["monitor_plot"] = Markdown(f"![held-out monitor](data:image/png;base64,{data})")
    return metadata


def _checks(ctx: StageContext, result: TrainingResult, missing: list[str]) -> list[Check]:
    losses = _losses(result)
    first, last = (losses[0]["loss"], losses[-1]["loss"]) if losses else (None, None)
    monitor = ctx.project.training.monitor
    hacking = teacher_hacking(result.loss_history, monitor.patience)
    if not monitor_entries(result.loss_history):
        hacking_meta = {"note": "the held-out monitor is off (training.monitor.eval_steps: 0)"}
    elif hacking is None:
        hacking_meta = {"note": f"no {monitor.patience} consecutive held-out rises with the "
                                "proxy falling"}
    else:
        hacking_meta = {"note": f"held-out distance rose {monitor.patience} evaluations in a "
                                f"row (steps {hacking['from_step']}-{hacking['to_step']}) while "
                                "the proxy fell: teacher hacking; consider fewer steps or "
                                "training.monitor.keep_best", **hacking}
    return [
        Check("hf_folder", passed=not missing, metadata={"missing": ", ".join(missing) or "none"}),
        Check("loss_decreased", severity=WARN, passed=bool(losses) and last < first,
              metadata={"loss_first": first or 0.0, "loss_last": last or 0.0}),
        Check("teacher_hacking", severity=WARN, passed=hacking is None, metadata=hacking_meta),
    ]
