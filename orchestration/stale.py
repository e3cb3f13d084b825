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
  same data stops the cascade). Runs that the web UI, a backfill, the schedule or the sensor
  launch get the same answer step by step: each stage step makes this check itself before any
  work (assets/stage_asset.py, replay_if_up_to_date), so they recompute exactly what
  `--stale` recomputes.

Dagster's stale-status resolver is not public API: it is reached through
orchestration/dagster_internals.py, the one module that imports dagster._core. The order of the
stages and which of them are partitioned come from the declared stage list
(distill_dag/stages/__init__.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dagster as dg

from distill_dag.assets.stage_asset import WORK_PREFIX
from distill_dag.orchestration.dagster_internals import (
    MISSING,
    STALE,
    StaleResolver,
    instance_scope,
)
from distill_dag.orchestration.observations import (  # noqa: F401 (re-exported)
    current_observations,
    record_observations,
)
from distill_dag.stage import Stage, in_order
from distill_dag.stages import STAGES


def stage_names(stages: Sequence[Stage] = STAGES) -> list[str]:
    """The stages' asset names in dependency order."""
    return [s.name for s in in_order(stages)]


def partitioned_names(stages: Sequence[Stage] = STAGES) -> list[str]:
    """The teacher-partitioned stages, in dependency order."""
    return [s.name for s in in_order(stages) if s.partitioned]


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


def _partitions(graph, asset: str) -> list[str | None]:
    partitions_def = graph.get(dg.AssetKey(asset)).partitions_def
    return list(partitions_def.get_partition_keys()) if partitions_def else [None]


def stale_items(instance: dg.DagsterInstance, graph, assets: list[str] | None = None,
                teachers: list[str] | None = None, stages: Sequence[Stage] = STAGES
                ) -> list[StaleItem]:
    """The missing or stale assets (partitions) now, in DAG order. Not transitive: what lies
    downstream of a stale asset is listed only once its inputs' data versions have changed."""
    resolver = StaleResolver(instance, graph)
    items = []
    for asset in assets or stage_names(stages):
        for partition in _partitions(graph, asset):
            if partition is not None and teachers is not None and partition not in teachers:
                continue
            status = resolver.status(asset, partition)
            if status == MISSING:
                items.append(StaleItem(asset, partition, "missing"))
            elif status == STALE:
                items.append(StaleItem(asset, partition, "stale",
                                       tuple(resolver.causes(asset, partition))))
    return items


def downstream_closure(graph, items: list[StaleItem], stages: Sequence[Stage] = STAGES
                       ) -> list[tuple[str, str | None]]:
    """The items and everything downstream of them (same teacher partition, or all of an
    unpartitioned asset's partitioned children), in DAG order: what a backfill must cover."""
    order = stage_names(stages)
    partitioned = partitioned_names(stages)
    wanted = {(i.asset, i.partition) for i in items}
    for asset in order:  # DAG order: parents are complete before their children
        for parent, partition in list(wanted):
            if parent != asset:
                continue
            for child in graph.get(dg.AssetKey(parent)).child_keys:
                name = child.to_user_string()
                if name not in order:
                    continue
                if name in partitioned:
                    targets = [partition] if partition else _partitions(graph, name)
                    wanted.update((name, p) for p in targets)
                else:
                    wanted.add((name, None))
    return sorted(wanted, key=lambda ap: (order.index(ap[0]), ap[1] or ""))


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


def work_done_in_runs(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, int]:
    """Sum of the work/... counters over the materializations of runs the daemon launched."""
    totals: dict[str, int] = {}
    for run_id in run_ids:
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            metadata = entry.asset_materialization.metadata
            for name, value in metadata.items():
                if name.startswith(WORK_PREFIX):
                    short = name[len(WORK_PREFIX):]
                    totals[short] = totals.get(short, 0) + int(value.value)
    return totals


def materialize_stale(definitions: dg.Definitions, instance: dg.DagsterInstance,
                      teachers: list[str] | None = None, log_level: str = "INFO",
                      tags: dict[str, str] | None = None,
                      on_step: Callable[[StaleItem], None] | None = None,
                      stages: Sequence[Stage] = STAGES) -> StaleRun:
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
    for asset in stage_names(stages):
        for item in stale_items(instance, graph, [asset], teachers, stages):
            if on_step:
                on_step(item)
            with instance_scope(instance):
                run.results.append(dg.materialize(
                    assets, selection=[asset], partition_key=item.partition,
                    instance=instance, resources=resources, run_config=run_config,
                    tags={"distill_dag/launched_by": "distill-dag materialize --stale",
                          **(tags or {})}))
            run.ran.append(item)
    run.work = work_done(run.results)
    run.seconds = time.perf_counter() - started
    return run
