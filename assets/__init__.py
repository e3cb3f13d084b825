"""Dagster assets: one module per stage, each thin over the pure core in distill_dag/."""

from __future__ import annotations

import dagster as dg

from assets import corpus, dataset, evaluation, provenance, selection, sources, teachers, training
from distill_dag.config import ProjectConfig

ASSET_ORDER = ["query_corpus", "teacher_outputs", "provenance_scores", "teacher_selection",
               "filtered_dataset", "distilled_checkpoint", "eval_report"]


def teacher_partitions(project: ProjectConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition([t.name for t in project.teachers])


def build_assets(project: ProjectConfig) -> list:
    partitions = teacher_partitions(project)
    return [
        *sources.build(project, partitions),
        *corpus.build(project),
        *teachers.build(project, partitions),
        *provenance.build(project, partitions),
        *selection.build(project),
        *dataset.build(project),
        *training.build(project),
        *evaluation.build(project),
    ]
