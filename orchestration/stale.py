"""What is stale, and materializing exactly that.

Dagster knows per asset (and partition) whether it is missing or stale: its code version changed,
or an input's data version changed since it was last materialized. Two gaps remain, and this
module closes them for `distill-dag materialize --stale`, the backfill schedule and the inbox
sensor:

- Observed inputs (corpus files, teacher settings) only count once an observation is recorded:
  `record_observations` records one for every source whose content changed.
- Staleness is not transitive until an upstream asset re-runs. So `materialize_stale` goes stage
  by stage in DAG order, re-reading staleness after each one: a downstream stage runs only if an
  upstream re-run really changed its data version (content hashes, so a re-run that produced the
  same data stops the cascade). The schedule and the sensor launch runs for the daemon instead
  (see automation.py); the downstream stages in those runs are memoized.

Dagster's stale-status resolver and asset-graph view live in `dagster._core`: they are what the
web UI uses, but not public API, so they are imported in this one file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import (
    DATA_VERSION_TAG,
    CachingStaleStatusResolver,
    StaleStatus,
)
from dagster._time import get_current_datetime

from assets import ASSET_ORDER
from assets._common import WORK_PREFIX
from assets.sources import CORPUS_SOURCES, TEACHER_CONFIG
from distill_dag.config import ProjectConfig

PARTITIONED = ("teacher_outputs", "provenance_scores")


@dataclass(frozen=True)
class StaleItem:
    """One asset (partition) that must run, and why."""

    asset: str
    partition: str | None
    status: str  # "missing" or "stale"
    causes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.asset}[{self.partition}]" if self.partition else self.asset


@dataclass
class StaleRun:
    """What `materialize_stale` observed, ran and counted."""

    observed: list[str] = field(default_factory=list)
    ran: list[StaleItem] = field(default_factory=list)
    work: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    results: list[dg.ExecuteInProcessResult] = field(default_factory=list)


def current_observations(project: ProjectConfig) -> list[tuple[str, str | None, str]]:
    """(source asset, partition, data version) of every observed input, from the config now."""
    observed = [(CORPUS_SOURCES, None, project.corpus_sources_version())]
    observed += [(TEACHER_CONFIG, t.name, project.teacher_version(t.name))
                 for t in project.teachers]
    return observed


def _resolver(instance: dg.DagsterInstance, graph) -> CachingStaleStatusResolver:
    view = AssetGraphView(temporal_context=TemporalContext(effective_dt=get_current_datetime(),
                                                           last_event_id=None),
                          instance=instance, asset_graph=graph)
    return CachingStaleStatusResolver(instance, graph, view)


def record_observations(instance: dg.DagsterInstance, graph, project: ProjectConfig
                        ) -> list[str]:
    """Record an observation for each source whose content changed; describe each one."""
    resolver = _resolver(instance, graph)
    changed = []
    for asset, partition, version in current_observations(project):
        current = resolver.get_current_data_version(dg.AssetKey(asset), partition)
        if current.value == version:
            continue
        instance.report_runless_asset_event(dg.AssetObservation(
            asset_key=asset, partition=partition, tags={DATA_VERSION_TAG: version},
            metadata={"observed_by": "distill-dag"}))
        changed.append(f"{asset}[{partition}]" if partition else asset)
    return changed


def _cause_text(cause) -> str:
    if cause.dependency is None:
        return cause.reason
    dep = cause.dependency.asset_key.to_user_string()
    part = cause.dependency.partition_key
    return f"{cause.reason}: {dep}[{part}]" if part else f"{cause.reason}: {dep}"


def _partitions(graph, asset: str) -> list[str | None]:
    partitions_def = graph.get(dg.AssetKey(asset)).partitions_def
    return list(partitions_def.get_partition_keys()) if partitions_def else [None]


def stale_items(instance: dg.DagsterInstance, graph, assets: list[str] | None = None,
                teachers: list[str] | None = None) -> list[StaleItem]:
    """The missing or stale assets (partitions) now, in DAG order. Not transitive: what lies
    downstream of a stale asset is listed only once its inputs' data versions have changed."""
    resolver = _resolver(instance, graph)
    items = []
    for asset in assets or ASSET_ORDER:
        key = dg.AssetKey(asset)
        for partition in _partitions(graph, asset):
            if partition is not None and teachers is not None and partition not in teachers:
                continue
            status = resolver.get_status(key, partition)
            if status == StaleStatus.MISSING:
                items.append(StaleItem(asset, partition, "missing"))
            elif status == StaleStatus.STALE:
                causes = tuple(_cause_text(c) for c in resolver.get_stale_causes(key, partition))
                items.append(StaleItem(asset, partition, "stale", causes))
    return items


def downstream_closure(graph, items: list[StaleItem]) -> list[tuple[str, str | None]]:
    """The items and everything downstream of them (same teacher partition, or all of an
    unpartitioned asset's partitioned children), in DAG order: what a backfill must cover."""
    wanted = {(i.asset, i.partition) for i in items}
    for asset in ASSET_ORDER:  # DAG order: parents are complete before their children
        for parent, partition in list(wanted):
            if parent != asset:
                continue
            for child in graph.get(dg.AssetKey(parent)).child_keys:
                name = child.to_user_string()
                if name not in ASSET_ORDER:
                    continue
                if name in PARTITIONED:
                    targets = [partition] if partition else _partitions(graph, name)
                    wanted.update((name, p) for p in targets)
                else:
                    wanted.add((name, None))
    return sorted(wanted, key=lambda ap: (ASSET_ORDER.index(ap[0]), ap[1] or ""))


def work_done(results: list[dg.ExecuteInProcessResult]) -> dict[str, int]:
    """Sum of the work/... counters over every materialization in `results`."""
    totals: dict[str, int] = {}
    for result in results:
        for event in result.get_asset_materialization_events():
            for name, value in event.materialization.metadata.items():
                if name.startswith(WORK_PREFIX):
                    short = name[len(WORK_PREFIX):]
                    totals[short] = totals.get(short, 0) + int(value.value)
    return totals


def materialize_stale(definitions: dg.Definitions, instance: dg.DagsterInstance,
                      teachers: list[str] | None = None, log_level: str = "INFO",
                      tags: dict[str, str] | None = None,
                      on_step: Callable[[StaleItem], None] | None = None) -> StaleRun:
    """Materialize exactly what is missing or stale, stage by stage, and what that changes
    downstream. Raises on the first failing step (finished steps stay materialized)."""
    started = time.perf_counter()
    assets = list(definitions.assets or [])
    resources = dict(definitions.resources or {})
    project = resources["project"].load()
    for name in teachers or []:
        project.teacher(name)  # a clear KeyError for an unknown teacher before any work
    graph = definitions.resolve_asset_graph()
    run = StaleRun(observed=record_observations(instance, graph, project))
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    for asset in ASSET_ORDER:
        for item in stale_items(instance, graph, [asset], teachers):
            if on_step:
                on_step(item)
            run.results.append(dg.materialize(
                assets, selection=[asset], partition_key=item.partition, instance=instance,
                resources=resources, run_config=run_config,
                tags={"distill_dag/launched_by": "distill-dag materialize --stale",
                      **(tags or {})}))
            run.ran.append(item)
    run.work = work_done(run.results)
    run.seconds = time.perf_counter() - started
    return run
