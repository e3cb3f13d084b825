"""distilled_checkpoint: fine-tune the student on filtered_dataset; a Hugging Face folder."""


import contextlib
import os
import time

import dagster as dg
import polars as pl

from assets._common import fail, retry_policy, stale_or_updated, work_counters
from distill_dag.config import ProjectConfig
from distill_dag.configbase import ConfigError, stable_hash
from distill_dag.filtering import dataset_version as filtered_dataset_version
from distill_dag.models import ModelResolutionError, resolve_model
from distill_dag.tracking import TrackingUnavailableError, open_tracker, redact_uri
from distill_dag.training.data import TOKENIZATION_VERSION, TrainingDataError
from distill_dag.training.train import MARKER, train_student
from resources import ProjectResource, RuntimeResource, StoreResource

STAGE_VERSION = "1"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
                  MARKER)


def _flat_params(cfg, prefix: str = "") -> dict:
    out = {}
    for key, value in (cfg.__dict__ if hasattr(cfg, "__dict__") else cfg).items():
        if hasattr(value, "__dataclass_fields__"):
            out.update(_flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def build(project: ProjectConfig) -> list:
    @dg.asset(
        group_name="distill",
        automation_condition=stale_or_updated(),
        retry_policy=retry_policy(project),
        deps=["filtered_dataset"],
        code_version=f"{STAGE_VERSION}+{project.section_hash('training', 'student')}",
        kinds={"pytorch", "mlflow"},
        pool="gpu",
        op_tags=project.orchestration.gpu_op_tags(project.training.num_processes),
        check_specs=[
            dg.AssetCheckSpec("hf_folder", asset="distilled_checkpoint", blocking=True,
                              description="The checkpoint folder has weights (safetensors), "
                                          "config, tokenizer and chat template."),
            dg.AssetCheckSpec("loss_decreased", asset="distilled_checkpoint",
                              description="The training loss at the end is below the loss at "
                                          "the start (warns otherwise)."),
        ],
        description="The student fine-tuned on filtered_dataset (TRL SFTTrainer; loss on the "
                    "assistant tokens only; LoRA merged or full; packed; resumable). Written as "
                    "a Hugging Face folder under the artifact directory: weights never pass "
                    "through an IO manager. Logged to MLflow.",
    )
    def distilled_checkpoint(context: dg.AssetExecutionContext, project: ProjectResource,
                             store: StoreResource, runtime: RuntimeResource):
        cfg = project.load()
        db = store.store()
        if not db.table_exists("filtered_dataset"):
            raise fail("distilled_checkpoint: filtered_dataset has not been "
                       "materialized yet; materialize it first")
        data = db.read_table("filtered_dataset")
        if data.height == 0:
            raise fail("distilled_checkpoint: filtered_dataset has 0 rows, so "
                       "there is nothing to train on and no checkpoint was registered. "
                       "Loosen filtering, raise the teachers' num_samples, or add queries.")
        try:
            resolved = resolve_model(cfg.student.model)
        except ModelResolutionError as exc:
            raise fail(f"distilled_checkpoint: student: {exc}") from exc
        dataset_version = filtered_dataset_version(data)
        # Everything that decides the weights: a finished folder under this key is reused.
        run_key = stable_hash({"student": resolved.fingerprint, "data": dataset_version,
                               "training": cfg.training.fingerprint(), "stage": STAGE_VERSION,
                               "tokenization": TOKENIZATION_VERSION})
        run_dir = os.path.join(store.artifact_dir("distilled_checkpoint"), run_key)

        tracker = run = None
        finished = os.path.exists(os.path.join(run_dir, "model", MARKER))
        if not finished:
            try:
                tracker = open_tracker(cfg.tracking, store.home)
            except TrackingUnavailableError as exc:
                raise fail(f"distilled_checkpoint: {exc}") from exc
            if tracker is not None:
                if tracker.fallback_note:
                    context.log.warning(tracker.fallback_note)
                # A run killed mid-training resumes from its saved step, and into its MLflow run.
                run_id_file = os.path.join(run_dir, "mlflow_run_id")
                if os.path.exists(run_id_file):
                    with open(run_id_file) as handle:
                        run = tracker.resume_run(handle.read().strip())
                    if run is not None:
                        context.log.info(f"continuing MLflow run {run.run_id}")
                if run is None:
                    run = tracker.start_run(f"distilled_checkpoint {run_key}", tags={
                        "distill_dag.stage": "distilled_checkpoint",
                        "dagster.run_id": context.run.run_id,
                        "dataset_version": dataset_version})
                    os.makedirs(run_dir, exist_ok=True)
                    with open(run_id_file, "w") as handle:
                        handle.write(run.run_id)
                run.log_params({**_flat_params(cfg.training), "student.model": cfg.student.model,
                                "student.fingerprint": resolved.fingerprint,
                                "dataset_version": dataset_version, "records": data.height})
        last_log = [0.0]

        def on_log(entry: dict) -> None:
            if time.time() - last_log[0] <= 10:
                return
            if "loss" in entry:
                last_log[0] = time.time()
                context.log.info(f"step {entry['step']}: loss {entry['loss']:.4f}")
            elif "'loss'" in entry.get("output", ""):  # a data-parallel worker's log line
                last_log[0] = time.time()
                context.log.info(entry["output"].strip())

        try:
            result = train_student(
                data["messages"].to_list(), cfg.student.model, cfg.training, run_dir,
                info={"dataset_version": dataset_version, "run_key": run_key,
                      "mlflow_run_id": run.run_id if run else None,
                      "mlflow_tracking_uri": redact_uri(tracker.uri) if tracker else None},
                device=runtime.device, show_progress=runtime.show_progress, on_log=on_log)
        except (TrainingDataError, ConfigError) as exc:  # bad records, too few GPUs
            if run:
                run.end("FAILED")
            raise fail(f"distilled_checkpoint: {exc}") from exc
        except BaseException:
            if run:
                run.end("FAILED")
            raise

        losses = [h for h in result.loss_history if "loss" in h]
        if run is not None:
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
                run.end()
            except Exception as exc:  # the checkpoint is saved; losing the log must not lose it
                context.log.warning(f"MLflow logging after training failed ({exc}); the "
                                    f"checkpoint is kept. MLflow run {run.run_id} may be "
                                    "incomplete.")
                with contextlib.suppress(Exception):
                    run.end("FAILED")
        if result.resumed_from_step:
            context.log.info(f"resumed from saved step {result.resumed_from_step}")
        info = result.info
        missing = [f for f in REQUIRED_FILES if not os.path.exists(result.path / f)]
        if missing:
            raise fail(f"distilled_checkpoint: {result.path} lacks {missing}; "
                       "it was not registered")
        db.write_table("distilled_checkpoint", pl.DataFrame([{
            "path": str(result.path), "checkpoint_hash": result.checkpoint_hash,
            "dataset_version": dataset_version, "run_key": run_key,
            "base_model": cfg.student.model, "global_step": result.global_step,
            "mlflow_run_id": info.get("mlflow_run_id"),
            "mlflow_tracking_uri": info.get("mlflow_tracking_uri"),
            "created_at": time.time()}]))

        first, last = (losses[0]["loss"], losses[-1]["loss"]) if losses else (None, None)
        metadata = {
            "path": dg.MetadataValue.path(str(result.path)),
            "checkpoint_hash": result.checkpoint_hash,
            "dataset_version": dataset_version,
            "trained_now": result.trained_now,
            "method": cfg.training.method,
            "global_step": result.global_step,
            "steps_run_now": result.steps_run,
            "resumed_from_step": result.resumed_from_step,
            **work_counters(training_steps=result.steps_run if result.trained_now else 0),
            "examples": info.get("examples", result.examples),
            "load_with": dg.MetadataValue.md(
                f"```python\nfrom transformers import AutoModelForCausalLM\nmodel = "
                f"AutoModelForCausalLM.from_pretrained({str(result.path)!r})\n```"),
            "loss_curve": dg.MetadataValue.json(
                [{"step": int(h["step"]), "loss": round(h["loss"], 4)} for h in losses]),
        }
        if first is not None:
            metadata.update({"loss_first": first, "loss_last": last})
        if result.trained_now:
            metadata.update({"train_seconds": round(result.seconds, 1),
                             "supervised_tokens_per_s": round(result.supervised_tokens_per_s, 1),
                             "process_peak_rss_gb": round(result.peak_rss_gb, 2),
                             "precision": result.precision,
                             "dropped_too_long": result.dropped_too_long})
        if info.get("mlflow_run_id"):
            metadata["mlflow_run_id"] = info["mlflow_run_id"]
            metadata["mlflow_tracking_uri"] = str(info.get("mlflow_tracking_uri"))
        how = "trained" if result.trained_now else "reused"
        context.log.info(f"checkpoint {result.path} ({how}, {result.global_step} steps)")
        return dg.MaterializeResult(
            metadata=metadata,
            data_version=dg.DataVersion(result.checkpoint_hash),
            check_results=[
                dg.AssetCheckResult(check_name="hf_folder", passed=not missing,
                                    metadata={"missing": ", ".join(missing) or "none"}),
                dg.AssetCheckResult(
                    check_name="loss_decreased", severity=dg.AssetCheckSeverity.WARN,
                    passed=bool(losses) and last < first,
                    metadata={"loss_first": first or 0.0, "loss_last": last or 0.0}),
            ],
        )

    return [distilled_checkpoint]



