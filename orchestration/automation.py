"""Sensors, the backfill schedule and Declarative Automation: stale work runs without a person.

- `corpus_inbox_sensor` watches `corpus.inbox`. A new, changed or removed file is recorded as an
  observation of `corpus_files` and launches one backfill of query_corpus and everything
  downstream (all teacher partitions, then the tail). Stored samples are reused, so only the new
  queries are generated.
- `stale_backfill_schedule` records observations (config edits, file changes) and launches the
  earliest stale stage: the corpus, else every stale or missing teacher partition (generation
  and scoring in one run each), else the stale tail. It skips a tick while its last launch is
  still running, so ticks never pile up GPU runs.
- `distill_automation` evaluates the assets' automation conditions: once upstream work lands,
  the downstream stages follow within a tick instead of waiting for the schedule.

All three start stopped: GPU work begins only when someone turns them on (web UI, Automation
tab). `dagster dev` runs the daemon that ticks them.
"""

from __future__ import annotations

import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.events import AssetKeyPartitionKey

from assets import ASSET_ORDER
from distill_dag.orchestration_config import OrchestrationConfig
from orchestration.stale import (
    PARTITIONED,
    downstream_closure,
    record_observations,
    stale_items,
)
from resources import ProjectResource

LAUNCHED_BY = "distill_dag/launched_by"
DISTILL_ASSETS = dg.AssetSelection.assets(*ASSET_ORDER)


def _in_flight(instance: dg.DagsterInstance, launched_by: str) -> bool:
    runs = instance.get_runs(filters=dg.RunsFilter(
        tags={LAUNCHED_BY: launched_by},
        statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                  dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]), limit=1)
    return bool(runs)


def next_stale_requests(instance: dg.DagsterInstance, graph, tags: dict[str, str],
                        tick: str = "") -> list[dg.RunRequest]:
    """Run requests for the earliest stale stage (see the module docstring); `tick` makes
    their run keys unique per schedule tick."""
    items = stale_items(instance, graph)
    if not items:
        return []
    first = items[0].asset
    if first == "query_corpus":
        return [dg.RunRequest(asset_selection=[dg.AssetKey("query_corpus")], tags=tags)]
    if first in PARTITIONED:
        partitions = sorted({i.partition for i in items if i.asset in PARTITIONED})
        return [dg.RunRequest(asset_selection=[dg.AssetKey(a) for a in PARTITIONED],
                              partition_key=p, tags=tags, run_key=f"{tick}:{p}")
                for p in partitions]
    tail = [a for a, _ in downstream_closure(graph, [i for i in items if i.asset == first])]
    return [dg.RunRequest(asset_selection=[dg.AssetKey(a) for a in tail], tags=tags)]


def build_automation(settings: OrchestrationConfig) -> tuple[list, list]:
    """(sensors, schedules) for the code location."""

    @dg.schedule(name="stale_backfill_schedule", cron_schedule=settings.backfill_cron,
                 target=DISTILL_ASSETS, default_status=dg.DefaultScheduleStatus.STOPPED,
                 description="Backfills missing or stale partitions and stages, earliest stage "
                             "first (see orchestration/automation.py).")
    def stale_backfill_schedule(context: dg.ScheduleEvaluationContext,
                                project: ProjectResource):
        if _in_flight(context.instance, "stale_backfill_schedule"):
            return dg.SkipReason("the previous backfill run is still in progress")
        graph = context.repository_def.asset_graph
        cfg = project.load()
        observed = record_observations(context.instance, graph, cfg)
        if observed:
            context.log.info(f"recorded new versions of {', '.join(observed)}")
        when = context.scheduled_execution_time
        requests = next_stale_requests(context.instance, graph,
                                       {LAUNCHED_BY: "stale_backfill_schedule",
                                        **cfg.orchestration.run_tags()},
                                       tick=when.isoformat() if when else "")
        return requests or dg.SkipReason("nothing is missing or stale")

    @dg.sensor(name="corpus_inbox_sensor", minimum_interval_seconds=30,
               asset_selection=DISTILL_ASSETS, default_status=dg.DefaultSensorStatus.STOPPED,
               description="Notices new, changed or removed files in corpus.inbox and backfills "
                           "query_corpus and everything downstream of it.")
    def corpus_inbox_sensor(context: dg.SensorEvaluationContext, project: ProjectResource):
        cfg = project.load()
        if cfg.corpus.inbox is None:
            return dg.SkipReason("corpus.inbox is not set in the project config")
        version = cfg.corpus_sources_version()
        if context.cursor == version:
            return dg.SkipReason(f"no change in {cfg.corpus.inbox.folder}")
        graph = context.repository_def.asset_graph
        record_observations(context.instance, graph, cfg)
        items = [i for i in stale_items(context.instance, graph, ["query_corpus"])]
        if not items:
            return dg.SensorResult(skip_reason="query_corpus is up to date", cursor=version)
        wanted = downstream_closure(graph, items)
        subset = AssetGraphSubset.from_asset_partition_set(
            {AssetKeyPartitionKey(dg.AssetKey(a), p) for a, p in wanted}, graph)
        request = dg.RunRequest.for_asset_graph_subset(
            subset, tags={LAUNCHED_BY: "corpus_inbox_sensor", **cfg.orchestration.run_tags()})
        return dg.SensorResult(run_requests=[request], cursor=version)

    automation = dg.AutomationConditionSensorDefinition(
        "distill_automation", target=DISTILL_ASSETS,
        default_status=dg.DefaultSensorStatus.STOPPED, run_tags=settings.run_tags(),
        description="Evaluates the distill assets' automation conditions (stale_or_updated).")
    return [corpus_inbox_sensor, automation], [stale_backfill_schedule]
