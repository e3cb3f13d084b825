"""Dagster resources that adapt the pure core (distill_dag/) to a run. Installed as
distill_dag.resources."""

from distill_dag.resources.project import ProjectResource, RuntimeResource, StoreResource

__all__ = ["ProjectResource", "RuntimeResource", "StoreResource"]
