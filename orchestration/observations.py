"""The observed inputs (corpus files, teacher settings) and recording their versions.

Dagster counts a change of an observed source only once an observation is recorded. Every path
that decides what is stale records them first: `distill-dag materialize --stale`, the schedule,
the inbox sensor, and each stage step before its up-to-date check (assets/stage_asset.py), so a
run launched from the web UI after a config edit sees the edit.
"""

from __future__ import annotations

import dagster as dg

from distill_dag.config import ProjectConfig
from distill_dag.orchestration.dagster_internals import StaleResolver, observation
from distill_dag.stages import CORPUS_FILES, TEACHER_CONFIG


def current_observations(project: ProjectConfig) -> list[tuple[str, str | None, str]]:
    """(source asset, partition, data version) of every observed input, from the config now."""
    observed = [(CORPUS_FILES, None, project.corpus_sources_version())]
    observed += [(TEACHER_CONFIG, t.name, project.teacher_version(t.name))
                 for t in project.teachers]
    return observed


def record_observations(instance: dg.DagsterInstance, graph, project: ProjectConfig
                        ) -> list[str]:
    """Record an observation for each source whose content changed; describe each one."""
    resolver = StaleResolver(instance, graph)
    changed = []
    for asset, partition, version in current_observations(project):
        if resolver.data_version(asset, partition) == version:
            continue
        instance.report_runless_asset_event(observation(asset, partition, version))
        changed.append(f"{asset}[{partition}]" if partition else asset)
    return changed
