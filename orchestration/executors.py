"""The Dagster executor named by `orchestration.executor` in the project config."""

from __future__ import annotations

from typing import Any

import dagster as dg

from distill_dag.orchestration_config import OrchestrationConfig


def executor_def(cfg: OrchestrationConfig) -> Any:
    """The executor for the code location (None: Dagster's multiprocess default)."""
    if cfg.executor == "in_process":
        return dg.in_process_executor
    if cfg.executor == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as exc:
            raise ImportError(
                "orchestration.executor: k8s needs dagster-k8s, which is not installed: "
                "pip install 'distill-dag[k8s]'") from exc
        return k8s_job_executor
    return None
