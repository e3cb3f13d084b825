"""The Dagster code location: the one module in distill_dag/ that imports Dagster.

`dagster dev -w workspace.yaml` and `dagster asset materialize -m distill_dag.definitions` both
load `defs` from here. The project config ($DISTILL_DAG_CONFIG or the embedded default) is read
at load time because its teachers are the partitions of the teacher assets.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from assets import build_assets
from distill_dag.config import config_path, load_project_config
from orchestration.automation import build_automation
from orchestration.executors import executor_def
from orchestration.stale import record_observations
from resources import ProjectResource, RuntimeResource, StoreResource
from resources.project import default_home


def build_definitions(config: str | Path | None = None, home: str | None = None,
                      device: str | None = None, dtype: str | None = None,
                      show_progress: bool = True) -> dg.Definitions:
    path = Path(config) if config else config_path()
    project = load_project_config(path)
    sensors, schedules = build_automation(project.orchestration)
    return dg.Definitions(
        assets=build_assets(project),
        sensors=sensors,
        schedules=schedules,
        executor=executor_def(project.orchestration),
        resources={
            "project": ProjectResource(config_path=str(path.resolve()),
                                       loaded_fingerprint=project.fingerprint()),
            "store": StoreResource(home=os.path.abspath(home or default_home())),
            "runtime": RuntimeResource(device=device or os.environ.get("DISTILL_DAG_DEVICE",
                                                                       "auto"),
                                       dtype=dtype or os.environ.get("DISTILL_DAG_DTYPE", "auto"),
                                       show_progress=show_progress),
        },
    )


defs = build_definitions()


def materialize_all(definitions: dg.Definitions, instance: dg.DagsterInstance,
                    teachers: list[str] | None = None, log_level: str = "INFO"
                    ) -> list[dg.ExecuteInProcessResult]:
    """Materialize the whole DAG in dependency order: the corpus, each teacher partition
    (generation, then provenance), then selection, the dataset, training and evaluation.
    Raises on the first failure.

    One run per step group, because a Dagster run covers one partition of the partitioned
    assets; runs are recorded in `instance`, so the web UI shows them."""
    assets = list(definitions.assets or [])
    resources = dict(definitions.resources or {})
    project = resources["project"].load()
    names = teachers or [t.name for t in project.teachers]
    for name in names:
        project.teacher(name)  # a clear KeyError for an unknown teacher before any work
    # Record the inputs' versions first, so that later staleness compares against them.
    record_observations(instance, definitions.resolve_asset_graph(), project)
    plan: list[tuple[list[str], str | None]] = [(["query_corpus"], None)]
    plan += [(["teacher_outputs", "provenance_scores"], name) for name in names]
    plan += [(["teacher_selection", "filtered_dataset", "distilled_checkpoint", "eval_report"],
              None)]
    results = []
    for selection, partition in plan:
        results.append(dg.materialize(assets, selection=selection, partition_key=partition,
                                      instance=instance, resources=resources,
                                      run_config={"loggers": {"console": {"config": {
                                          "log_level": log_level}}}},
                                      tags={"distill_dag/launched_by": "distill-dag materialize",
                                            **project.orchestration.run_tags()}))
    return results


def dagster_instance(home: str) -> dg.DagsterInstance:
    """The persistent instance under $DAGSTER_HOME (default: <home>/dagster)."""
    dagster_home = os.environ.setdefault("DAGSTER_HOME", os.path.abspath(
        os.path.join(home, "dagster")))
    os.makedirs(dagster_home, exist_ok=True)
    settings = os.path.join(dagster_home, "dagster.yaml")
    if not os.path.exists(settings):
        # No network here: no telemetry. Run monitoring lets the daemon (dagster dev) fail runs
        # that exceed their dagster/max_runtime tag and detect runs whose process died.
        with open(settings, "w") as handle:
            handle.write("telemetry:\n  enabled: false\n"
                         "run_monitoring:\n  enabled: true\n  start_timeout_seconds: 300\n"
                         "  poll_interval_seconds: 60\n")
    return dg.DagsterInstance.get()
