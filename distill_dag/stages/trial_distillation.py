"""Trial distillation for teacher_selection (DED): train the student briefly on each teacher's
data at an equal budget and score it on a dev slice of the training split.

It goes through the stages' own core functions: filtered_dataset's filter (one best record per
query) for each teacher's data, distilled_checkpoint's `train` (memoized by run key: the same
teacher data, student and settings reuse the finished checkpoint) and evaluation's
`evaluate_model` (memoized generations), so there is no second training loop to keep in step.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np
import polars as pl

from distill_dag import tables
from distill_dag.errors import DistillError, StageError
from distill_dag.evaluation.metrics import bootstrap_mean
from distill_dag.evaluation.run import evaluate_model
from distill_dag.filtering import filter_dataset
from distill_dag.models import model_access
from distill_dag.selection import TrialConfig
from distill_dag.stage import StageContext
from distill_dag.stages.distilled_checkpoint import train
from distill_dag.stages.filtered_dataset import chosen_samples
from distill_dag.training.monitor import MonitorConfig

TRIAL_PURPOSE = "teacher_selection.trial"


@dataclass
class TrialResult:
    """The trial's scores per teacher and what it ran."""

    table: pl.DataFrame  # teacher, trial_pass_at_1, trial_low, trial_high, trial_records, ...
    dev_queries: int
    base_pass_at_1: float  # the untrained student on the same dev slice
    steps_run: int  # optimizer steps trained now (0: every trial reused)
    generated: int  # dev-slice answers generated now


def dev_slice(queries: pl.DataFrame, cfg: TrialConfig) -> pl.DataFrame:
    """`cfg.dev_queries` training-split queries chosen by a seeded hash of their ids (stable:
    adding queries never moves one in or out unless it displaces it by hash order)."""
    train_split = queries.filter(pl.col("split") == "train")
    order = [hashlib.sha256(f"{q}|trial|{cfg.seed}".encode()).hexdigest()
             for q in train_split["query_id"]]
    return (train_split.with_columns(pl.Series("_order", order)).sort("_order")
            .head(cfg.dev_queries).drop("_order").sort("query_id"))


def teacher_records(ctx: StageContext, teacher: str, queries: pl.DataFrame,
                    dev: pl.DataFrame, cfg: TrialConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One teacher's trial data: filtered_dataset's filter on its samples outside the dev
    slice, at most cfg.queries records (a seeded subset), and its negatives (for redi)."""
    samples, _ = chosen_samples(ctx.store, [teacher])
    samples = samples.filter(~pl.col("query_id").is_in(dev["query_id"].implode()))
    filtering = dataclasses.replace(ctx.project.filtering, per_query=1, budget=cfg.queries,
                                    seed=cfg.seed, diversity="none")
    result = filter_dataset(samples, queries, [teacher], filtering, ctx.project.student.prompt,
                            None)
    return result.dataset, result.negatives


def run_trials(ctx: StageContext, teachers: list[str], cfg: TrialConfig) -> TrialResult:
    """Train and score one trial per teacher; a teacher with no usable record gets a null score
    and its reason in ``trial_note``."""
    project = ctx.project
    queries = ctx.store.read_table(tables.QUERIES)
    dev = dev_slice(queries, cfg)
    if dev.is_empty():
        raise StageError("teacher_selection: trial distillation needs training queries for its "
                         "dev slice and the split has none")
    # A trial is short and scored on its own dev slice: no held-out monitor inside it.
    training = dataclasses.replace(project.training, objective=cfg.objective, max_steps=cfg.steps,
                                   monitor=MonitorConfig())
    trial_ctx = dataclasses.replace(ctx, project=dataclasses.replace(project, training=training))
    evaluation = dataclasses.replace(project.evaluation, num_samples=0, pass_k=[1])
    ci = {"confidence": evaluation.confidence, "resamples": evaluation.bootstrap_resamples,
          "seed": evaluation.seed}

    def greedy(label: str, model: str) -> tuple[np.ndarray, int]:
        ev = evaluate_model(label, model, project.student.prompt, dev, evaluation, ctx.store,
                            device=ctx.device, dtype=ctx.dtype, show_progress=ctx.show_progress,
                            **model_access(project.student))
        return ev.per_query.sort("query_id")["greedy_correct"].to_numpy(), ev.generated

    base, generated = greedy("trial-base", project.student.model)
    rows, steps_run = [], 0
    for teacher in teachers:
        data, negatives = teacher_records(ctx, teacher, queries, dev, cfg)
        row = {"teacher": teacher, "trial_records": data.height, "trial_steps": cfg.steps,
               "trial_pass_at_1": None, "trial_low": None, "trial_high": None,
               "trial_note": ""}
        if data.is_empty():
            row["trial_note"] = "no correct sample outside the dev slice"
            rows.append(row)
            continue
        ctx.log.info(f"trial distillation: {teacher}, {data.height} records, {cfg.steps} steps")
        chosen = pl.DataFrame({"teacher": [teacher], "rank": [1], "chosen": [True]})
        try:
            trained, _ = train(trial_ctx, data, purpose=TRIAL_PURPOSE,
                               stand_ins={tables.NEGATIVES: negatives,
                                          tables.TEACHER_METRICS: chosen})
        except DistillError as exc:
            if exc.retryable:
                raise StageError(f"teacher_selection: trial of {teacher}: {exc}",
                                 retryable=True) from exc
            # This teacher cannot be trialed (kd with another vocabulary, redi without pairs):
            # a finding for the table, not a reason to rank nobody.
            row["trial_note"] = str(exc)
            rows.append(row)
            continue
        result = trained.result
        if result.trained_now:
            steps_run += result.steps_run
        scores, new = greedy(f"trial-{teacher}", str(result.path))
        generated += new
        acc = bootstrap_mean(scores, **ci)
        row.update({"trial_pass_at_1": acc.estimate, "trial_low": acc.low,
                    "trial_high": acc.high})
        rows.append(row)
    schema = {"teacher": pl.String, "trial_records": pl.Int64, "trial_steps": pl.Int64,
              "trial_pass_at_1": pl.Float64, "trial_low": pl.Float64, "trial_high": pl.Float64,
              "trial_note": pl.String}
    return TrialResult(pl.DataFrame(rows, schema=schema), dev.height, float(base.mean()),
                       steps_run, generated)
