"""One Dagster asset per declared stage: read the config, call the core, return the result.

Everything about an asset (deps, code version, partitions, pool, checks, description) comes from
its Stage declaration in distill_dag/stages/__init__.py; the stage function does the work. This
module only translates: StageContext in, StageOutput -> MaterializeResult out, DistillError ->
dg.Failure (retried only when the error says a retry can help).

One rerun mechanism: every step first records the observed inputs and asks the instance whether
its asset (partition) is up to date, as `distill-dag materialize --stale` does. If it is (code
version and every input's data version unchanged since its last materialization), the step does
no work: it emits the last materialization again (same data version, metadata and check
results, work counters 0), so downstream steps of the same run see unchanged inputs and skip
too. A run launched from the web UI, a backfill, the schedule and the inbox sensor therefore
recompute exactly what `--stale` recomputes. The run tag `distill_dag/force: true` runs the
stage regardless (its memoized work is still reused).
"""


from pathlib import Path

import dagster as dg

from distill_dag.config import ProjectConfig
from distill_dag.errors import DistillError
from distill_dag.orchestration.dagster_internals import (
    FRESH,
    StaleResolver,
    asset_graph,
    check_results_of_run,
    step_asset_graph,
)
from distill_dag.orchestration.observations import record_observations
from distill_dag.resources import ProjectResource, RuntimeResource, StoreResource
from distill_dag.stage import (
    ERROR,
    Check,
    Json,
    Markdown,
    PathValue,
    Stage,
    StageContext,
    StageOutput,
    Url,
)
from distill_dag.stage import upstream as upstream_stages
from distill_dag.stages import CORPUS_FILES, TEACHER_CONFIG

WORK_PREFIX = "work/"
FORCE_TAG = "distill_dag/force"
UP_TO_DATE = "distill_dag/up_to_date"
GROUP = "distill"
_SOURCES = {CORPUS_FILES, TEACHER_CONFIG}


def metadata_value(value):
    """A core metadata value as Dagster's: markdown, paths and JSON keep their kind."""
    if isinstance(value, Markdown):
        return dg.MetadataValue.md(str(value))
    if isinstance(value, PathValue):
        return dg.MetadataValue.path(str(value))
    if isinstance(value, Url):
        return dg.MetadataValue.url(str(value))
    if isinstance(value, Json):
        return dg.MetadataValue.json(value.value)
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    if value is None:
        return dg.MetadataValue.null()
    return dg.MetadataValue.text(str(value))


def check_result(check: Check) -> dg.AssetCheckResult:
    severity = dg.AssetCheckSeverity.ERROR if check.severity == ERROR \
        else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(check_name=check.name, passed=bool(check.passed),
                               severity=severity, description=check.description,
                               metadata={k: metadata_value(v) for k, v in check.metadata.items()})


def materialize_result(output: StageOutput) -> dg.MaterializeResult:
    metadata = {k: metadata_value(v) for k, v in output.metadata.items()}
    if output.row_count is not None:
        metadata["dagster/row_count"] = dg.MetadataValue.int(output.row_count)
    metadata.update({WORK_PREFIX + k: dg.MetadataValue.int(int(v))
                     for k, v in output.work.items()})
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(output.data_version),
                                check_results=[check_result(c) for c in output.checks])


def retry_policy(project: ProjectConfig) -> dg.RetryPolicy | None:
    """Retries for transient failures (orchestration.retries); errors in config or data are
    raised as non-retryable and fail at once."""
    cfg = project.orchestration
    if not cfg.retries:
        return None
    return dg.RetryPolicy(max_retries=cfg.retries, delay=cfg.retry_delay_s,
                          backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def stale_or_updated() -> dg.AutomationCondition:
    """Declarative Automation for every stage: request an asset (partition) when it is missing,
    its code version changed, or an input's data version changed (a rerun that produced the
    same content pulls nothing along); wait while an input is missing or running, and never run
    it twice at once. Evaluated by the distill_automation sensor."""
    return (
        (dg.AutomationCondition.newly_missing()
         | dg.AutomationCondition.code_version_changed()
         | dg.AutomationCondition.any_deps_match(
             dg.AutomationCondition.data_version_changed())).since_last_handled()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("stale_or_updated")


_GRAPHS: dict[str, object] = {}


def _asset_graph(project: ProjectConfig):
    """The asset graph of the project's assets, for a step run in process (dg.materialize
    gives a step only its own job's assets); built once per config."""
    from distill_dag.assets import build_assets

    key = project.fingerprint()
    if key not in _GRAPHS:
        _GRAPHS[key] = asset_graph(build_assets(project))
    return _GRAPHS[key]


def _nothing_now(value: dg.MetadataValue) -> dg.MetadataValue:
    return dg.MetadataValue.bool(False) if isinstance(value.value, bool) \
        else dg.MetadataValue.int(0)


def replay_if_up_to_date(stage: Stage, context: dg.AssetExecutionContext,
                         project: ProjectConfig) -> dg.MaterializeResult | None:
    """The last materialization again when the asset (partition) is up to date, else None."""
    if context.run.tags.get(FORCE_TAG, "").lower() == "true":
        return None
    partition = context.partition_key if context.has_partition_key else None
    instance, graph = context.instance, step_asset_graph(context) or _asset_graph(project)
    if not graph.has(dg.AssetKey(stage.name)):  # a stage list other than the declared one
        return None
    record_observations(instance, graph, project)
    resolver = StaleResolver(instance, graph)
    if resolver.status(stage.name, partition) != FRESH:
        return None
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(stage.name),
                              asset_partitions=[partition] if partition else None), limit=1)
    if not records.records:
        return None
    last_record = records.records[0]
    last = last_record.asset_materialization
    # What that materialization did is not what this step did: work counters and the stages'
    # "..._now" figures (generated_now, trained_now, ...) say nothing was done now.
    metadata = {k: _nothing_now(v) if k.startswith(WORK_PREFIX) or k.endswith("_now") else v
                for k, v in last.metadata.items()}
    metadata[UP_TO_DATE] = dg.MetadataValue.text(
        "code version and inputs unchanged since the last materialization: not recomputed "
        f"(run tag {FORCE_TAG}=true recomputes)")
    checks = check_results_of_run(instance, stage.name, last_record.run_id,
                                  [c.name for c in stage.checks])
    if len(checks) != len(stage.checks):  # a check never finished: run the stage to evaluate it
        return None
    label = f"{stage.name}[{partition}]" if partition else stage.name
    context.log.info(f"{label} is up to date (code version and inputs unchanged): nothing to "
                     "recompute, its last materialization stands")
    return dg.MaterializeResult(
        metadata=metadata,
        data_version=dg.DataVersion(resolver.data_version(stage.name, partition)),
        check_results=checks)


def run_stage(stage: Stage, context: dg.AssetExecutionContext, project: ProjectResource,
              store: StoreResource, runtime: RuntimeResource) -> dg.MaterializeResult:
    """The body of every stage asset."""
    config = project.load()
    replayed = replay_if_up_to_date(stage, context, config)
    if replayed is not None:
        return replayed
    ctx = StageContext(project=config, store=store.store(), home=Path(store.home),
                       device=runtime.device, dtype=runtime.dtype,
                       show_progress=runtime.show_progress,
                       partition=context.partition_key if context.has_partition_key else None,
                       run_id=context.run.run_id, log=context.log)
    try:
        output = stage.run(ctx)
    except DistillError as exc:
        message = str(exc) if str(exc).startswith(stage.name) else f"{stage.name}: {exc}"
        raise dg.Failure(description=message, allow_retries=exc.retryable) from exc
    return materialize_result(output)


def build_stage_asset(stage: Stage, stages: list[Stage], project: ProjectConfig,
                      teachers: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    gpus = stage.gpus(project)

    @dg.asset(
        name=stage.name,
        group_name=GROUP,
        description=stage.description,
        deps=[*stage.observes, *upstream_stages(stage, stages)],
        code_version=stage.code_version(project),
        partitions_def=teachers if stage.partitioned else None,
        automation_condition=stale_or_updated(),
        retry_policy=retry_policy(project),
        kinds=set(stage.kinds) or None,
        **({"pool": "gpu", "op_tags": project.orchestration.gpu_op_tags(gpus)} if gpus else {}),
        check_specs=[dg.AssetCheckSpec(c.name, asset=stage.name, description=c.description,
                                       blocking=c.blocking) for c in stage.checks],
        metadata={"distill_dag/stage": stage.name,
                  "distill_dag/writes": ", ".join(stage.writes) or "none"},
    )
    def stage_asset(context: dg.AssetExecutionContext, project: ProjectResource,
                    store: StoreResource, runtime: RuntimeResource) -> dg.MaterializeResult:
        return run_stage(stage, context, project, store, runtime)

    return stage_asset
