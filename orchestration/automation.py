"""Sensors, the backfill schedule and Declarative Automation: stale work runs without a person.

- `corpus_inbox_sensor` watches `corpus.inbox`. A new, changed or removed file is recorded as an
  observation of `corpus_files` and launches one backfill of query_corpus and everything
  downstream (all teacher partitions, then the tail). Stored samples are reused, so only the new
  queries are generated. If that backfill fails, the schedule picks the stale work up again.
- `stale_backfill_schedule` records observations (config edits, file changes) and launches the
  earliest stale stage: the corpus, else every stale or missing teacher partition (generation
  and scoring in one run each), else the stale tail. A step in these runs whose asset is up to
  date does no work (assets/stage_asset.py). Both skip a tick while a run or backfill
  either launched is unfinished, so ticks never pile up GPU runs.
- `distill_automation` evaluates the assets' automation conditions: once upstream work lands,
  the downstream stages follow within a tick instead of waiting for the schedule.

All three start stopped: GPU work begins only when someone turns them on (web UI, Automation
tab). `dagster dev` runs the daemon that ticks them.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from distill_dag.orchestration.dagster_internals import backfill_request, requested_backfill_tags
from distill_dag.orchestration.stale import (
    downstream_closure,
    partitioned_names,
    record_observations,
    stage_names,
    stale_items,
)
from distill_dag.orchestration_config import OrchestrationConfig
from distill_dag.resources import ProjectResource

LAUNCHED_BY = "distill_dag/launched_by"
DISTILL_ASSETS = dg.AssetSelection.groups("distill")


LAUNCHERS = ["stale_backfill_schedule", "corpus_inbox_sensor"]


def _in_flight(instance: dg.DagsterInstance) -> bool:
    """Whether a run or backfill that the schedule or the inbox sensor launched is unfinished:
    neither launches more work on top of it (the same partition twice, GPU runs piling up)."""
    runs = instance.get_runs(filters=dg.RunsFilter(
        tags={LAUNCHED_BY: LAUNCHERS},
        statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                  dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]), limit=1)
    if runs:
        return True
    return any(tags.get(LAUNCHED_BY) in LAUNCHERS for tags in requested_backfill_tags(instance))


def next_stale_requests(instance: dg.DagsterInstance, graph, tags: dict[str, str],
                        tick: str = "") -> list[dg.RunRequest]:
    """Run requests for the earliest stale stage (see the module docstring); `tick` makes
    their run keys unique per schedule tick."""
    items = stale_items(instance, graph)
    if not items:
        return []
    first = items[0].asset
    partitioned = partitioned_names()
    if first == stage_names()[0]:
        return [dg.RunRequest(asset_selection=[dg.AssetKey(first)], tags=tags)]
    if first in partitioned:
        partitions = sorted({i.partition for i in items if i.asset in partitioned})
        requests = []
        for p in partitions:
            # Each partition runs from its first stale stage on (fresh outputs with stale
            # scores: score only), its partitioned stages in one run.
            stale_here = [partitioned.index(i.asset) for i in items
                          if i.asset in partitioned and i.partition == p]
            assets = partitioned[min(stale_here):]
            requests.append(dg.RunRequest(asset_selection=[dg.AssetKey(a) for a in assets],
                                          partition_key=p, tags=tags, run_key=f"{tick}:{p}"))
        return requests
    # The tail runs in one run from the first stale asset on; a stage whose inputs came out
    # unchanged finds itself up to date and does no work.
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
        if _in_flight(context.instance):
            return dg.SkipReason("a run launched by the schedule or the inbox sensor is still "
                                 "in progress")
        graph = context.repository_def.asset_graph
        cfg = project.load()
        observed = record_observations(context.instance, graph, cfg)
        if observed:
            context.log.info(f"recorded new versions of {', '.join(observed)}")
        when = context.scheduled_execution_time
        requests = next_stale_requests(context.instance, graph,
                                       {LAUNCHED_BY: "stale_backfill_schedule",
                                        **cfg.orchestration.run_tags()},
                                       tick=(when or datetime.now(UTC)).isoformat())
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
        if _in_flight(context.instance):  # the cursor stays: the change is picked up after it
            return dg.SkipReason("a run launched by the schedule or the inbox sensor is still "
                                 "in progress")
        graph = context.repository_def.asset_graph
        record_observations(context.instance, graph, cfg)
        items = stale_items(context.instance, graph, ["query_corpus"])
        if not items:
            return dg.SensorResult(skip_reason="query_corpus is up to date", cursor=version)
        request = backfill_request(downstream_closure(graph, items), graph, tags={
            LAUNCHED_BY: "corpus_inbox_sensor", **cfg.orchestration.run_tags()})
        return dg.SensorResult(run_requests=[request], cursor=version)

    automation = dg.AutomationConditionSensorDefinition(
        "distill_automation", target=DISTILL_ASSETS,
        default_status=dg.DefaultSensorStatus.STOPPED, run_tags=settings.run_tags(),
        description="Evaluates the distill assets' automation conditions (stale_or_updated).")
    return [corpus_inbox_sensor, automation], [stale_backfill_schedule]
