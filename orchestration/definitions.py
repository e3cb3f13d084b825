"""The Dagster Definitions of the code location, and the in-process runner behind
`distill-dag materialize`.

`distill_dag.definitions` (what `dagster dev -w workspace.yaml`, `dg dev` and `dagster asset
materialize -m distill_dag.definitions` load) re-exports `defs` from here. The project config
($DISTILL_DAG_CONFIG or the embedded default) is read at load time because its teachers are
the partitions of the teacher assets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import groupby
from pathlib import Path

import dagster as dg

from distill_dag.assets import build_assets
from distill_dag.config import config_path, load_project_config
from distill_dag.orchestration.automation import build_automation
from distill_dag.orchestration.dagster_internals import instance_scope
from distill_dag.orchestration.executors import executor_def
from distill_dag.orchestration.stale import record_observations
from distill_dag.resources import ProjectResource, RuntimeResource, StoreResource
from distill_dag.resources.project import default_home
from distill_dag.stage import Stage, in_order
from distill_dag.stages import STAGES


def build_definitions(config: str | Path | None = None, home: str | None = None,
                      device: str | None = None, dtype: str | None = None,
                      show_progress: bool = True, stages: Sequence[Stage] | None = None
                      ) -> dg.Definitions:
    """The code location for a project config; `stages` defaults to the declared STAGES."""
    path = Path(config) if config else config_path()
    project = load_project_config(path)
    sensors, schedules = build_automation(project.orchestration)
    return dg.Definitions(
        assets=build_assets(project, list(stages or STAGES)),
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


def run_plan(stages: Sequence[Stage], teachers: list[str]) -> list[tuple[list[str], str | None]]:
    """(asset selection, partition) of each run that materializes everything: consecutive
    stages of the same kind share a run, the partitioned ones once per teacher."""
    plan: list[tuple[list[str], str | None]] = []
    for partitioned, group in groupby(in_order(stages), key=lambda s: s.partitioned):
        names = [s.name for s in group]
        plan += [(names, t) for t in teachers] if partitioned else [(names, None)]
    return plan


def materialize_all(definitions: dg.Definitions, instance: dg.DagsterInstance,
                    teachers: list[str] | None = None, log_level: str = "INFO",
                    stages: Sequence[Stage] | None = None) -> list[dg.ExecuteInProcessResult]:
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
    results = []
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    tags = {"distill_dag/launched_by": "distill-dag materialize",
            **project.orchestration.run_tags()}
    for selection, partition in run_plan(stages or STAGES, names):
        with instance_scope(instance):
            results.append(dg.materialize(assets, selection=selection, partition_key=partition,
                                          instance=instance, resources=resources,
                                          run_config=run_config, tags=tags))
    return results


def dagster_instance(home: str) -> dg.DagsterInstance:
    """The persistent instance under $DAGSTER_HOME (default: <home>/dagster)."""
    dagster_home = os.environ.setdefault("DAGSTER_HOME", os.path.abspath(
        os.path.join(home, "dagster")))
    os.makedirs(dagster_home, exist_ok=True)
    write_instance_settings(os.path.join(dagster_home, "dagster.yaml"))
    return dg.DagsterInstance.get()


def write_instance_settings(path: str) -> None:
    """The dagster.yaml of a new instance; an older one of ours gains the settings it lacks.

    No network here: no telemetry. No "Join the Dagster community" dialog (nux), which would
    cover every page of the web UI until a first-time user clicks Skip. Run monitoring lets the
    daemon (dagster dev) fail runs that exceed their dagster/max_runtime tag and detect runs
    whose process died.
    """
    blocks = {"telemetry": "telemetry:\n  enabled: false\n",
              "nux": "nux:\n  enabled: false\n",
              "run_monitoring": "run_monitoring:\n  enabled: true\n  start_timeout_seconds: 300\n"
                                "  poll_interval_seconds: 60\n"}
    existing = ""
    if os.path.exists(path):
        with open(path) as handle:
            existing = handle.read()
    keys = {line.split(":", 1)[0] for line in existing.splitlines()
            if line and not line[0].isspace() and not line.startswith("#")}
    missing = [text for key, text in blocks.items() if key not in keys]
    if missing:
        with open(path, "a") as handle:
            if existing and not existing.endswith("\n"):
                handle.write("\n")
            handle.write("".join(missing))
