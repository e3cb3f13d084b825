"""The one module that touches Dagster's private API (dagster._core, dagster._time).

The stale engine needs what the web UI uses to decide that an asset is stale, and the inbox
sensor a backfill over chosen asset partitions; neither is public API in Dagster 1.13. Every use
is wrapped in a small function here, and tests/test_dagster_internals.py calls each of them on a
real instance, so an upgrade that moves or changes one fails a test named after the function.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.data_version import (
    DATA_VERSION_TAG,
    CachingStaleStatusResolver,
    StaleStatus,
)
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.defs_state.base import set_defs_state_storage
from dagster._time import get_current_datetime
from dagster_shared.check import CheckError

_FINISHED = {AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED}
MISSING = "missing"
STALE = "stale"
FRESH = "fresh"


class StaleResolver:
    """Staleness as the web UI computes it: per asset (partition), with causes."""

    def __init__(self, instance: dg.DagsterInstance, graph) -> None:
        view = AssetGraphView(
            temporal_context=TemporalContext(effective_dt=get_current_datetime(),
                                             last_event_id=None),
            instance=instance, asset_graph=graph)
        self._resolver = CachingStaleStatusResolver(instance, graph, view)

    def status(self, asset: str, partition: str | None) -> str:
        """"missing", "stale" or "fresh"."""
        status = self._resolver.get_status(dg.AssetKey(asset), partition)
        if status == StaleStatus.MISSING:
            return MISSING
        return STALE if status == StaleStatus.STALE else FRESH

    def causes(self, asset: str, partition: str | None) -> list[str]:
        """Why an asset (partition) is stale, one line per cause."""
        out = []
        for cause in self._resolver.get_stale_causes(dg.AssetKey(asset), partition):
            if cause.dependency is None:
                out.append(cause.reason)
                continue
            dep = cause.dependency.asset_key.to_user_string()
            part = cause.dependency.partition_key
            out.append(f"{cause.reason}: {dep}[{part}]" if part else f"{cause.reason}: {dep}")
        return out

    def data_version(self, asset: str, partition: str | None) -> str | None:
        """The current data version of an asset (partition), observed sources included."""
        return self._resolver.get_current_data_version(dg.AssetKey(asset), partition).value


def asset_graph(assets: Iterable) -> object:
    """The asset graph of asset definitions, built without a Definitions object: building one
    inside a running step would point Dagster's definitions-state context at the step's
    instance, which later code may find closed ("unable to open database file")."""
    return AssetGraph.from_assets(list(assets))


def step_asset_graph(context: dg.AssetExecutionContext):
    """The code location's asset graph of a running step (a run the daemon or the web UI
    launched), or None where the step has no repository (`dg.materialize` in process)."""
    try:
        return context.repository_def.asset_graph
    except CheckError:  # "No repository definition was set on the step context"
        return None


def check_results_of_run(instance: dg.DagsterInstance, asset: str, run_id: str,
                         names: Iterable[str]) -> list[dg.AssetCheckResult]:
    """The evaluations of an asset's named checks made in one run (the run of the
    materialization a step emits again when it finds its asset up to date), as results that
    can be emitted again. Checks of a partitioned asset are not partitioned here, so they are
    found by run, not by partition."""
    results = []
    for name in names:
        key = dg.AssetCheckKey(dg.AssetKey(asset), name)
        history = instance.event_log_storage.get_asset_check_execution_history(
            key, limit=50, status=_FINISHED)
        event = next((r.event for r in history if r.run_id == run_id and r.event), None)
        evaluation = event.dagster_event.event_specific_data if event and event.dagster_event \
            else None
        if evaluation is None:
            continue
        results.append(dg.AssetCheckResult(
            check_name=name, passed=evaluation.passed, severity=evaluation.severity,
            description=evaluation.description, metadata=dict(evaluation.metadata)))
    return results


def observation(asset: str, partition: str | None, version: str) -> dg.AssetObservation:
    """An observation that records `version` as the data version of a source asset."""
    return dg.AssetObservation(asset_key=asset, partition=partition,
                               tags={DATA_VERSION_TAG: version},
                               metadata={"observed_by": "distill-dag"})


def backfill_request(items: Iterable[tuple[str, str | None]], graph,
                     tags: dict[str, str]) -> dg.RunRequest:
    """One backfill over exactly these (asset, partition) pairs."""
    subset = AssetGraphSubset.from_asset_partition_set(
        {AssetKeyPartitionKey(dg.AssetKey(a), p) for a, p in items}, graph)
    return dg.RunRequest.for_asset_graph_subset(subset, tags=tags)


def requested_backfill_tags(instance: dg.DagsterInstance, limit: int = 20
                            ) -> list[dict[str, str]]:
    """The tags of the backfills that are still requested (unfinished)."""
    return [dict(b.tags) for b in instance.get_backfills(status=BulkActionStatus.REQUESTED,
                                                          limit=limit)]


def forget_entered_instances() -> None:
    """Clear the instance Dagster reads definitions' state from (the context variable that
    entering an instance sets). Entering and leaving instances out of order (pytest fixtures
    do), or an entered instance that the garbage collector finalizes later (its exit puts
    back the instance entered before it), can leave it pointing at a closed one; tests call
    this before each test."""
    import gc

    gc.collect()  # finalize such instances now, not in the middle of the next test
    set_defs_state_storage(None).__enter__()


@contextmanager
def instance_scope(instance: dg.DagsterInstance) -> Iterator[None]:
    """Load definitions for runs against `instance`: Dagster reads the definitions' state from
    whichever instance was last entered (a context variable), which may be one that a caller
    has since closed; materializing then fails with "undefined DagsterInstance weakref"."""
    with set_defs_state_storage(instance.defs_state_storage):
        yield
