"""Dagster assets: one module per stage, each thin over the pure core in distill_dag/."""

from __future__ import annotations

import dagster as dg

from assets import corpus, dataset, provenance, selection, teachers
from distill_dag.config import ProjectConfig

ASSET_ORDER = ["query_corpus", "teacher_outputs", "provenance_scores", "teacher_selection",
               "filtered_dataset"]


def teacher_partitions(project: ProjectConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition([t.name for t in project.teachers])


def build_assets(project: ProjectConfig) -> list:
    partitions = teacher_partitions(project)
    return [
        *corpus.build(project),
        *teachers.build(project, partitions),
        *provenance.build(project, partitions),
        *selection.build(project),
        *dataset.build(project),
    ]
