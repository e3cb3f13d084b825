"""Dagster resources that adapt the pure core (distill_dag/) to a run."""

from resources.project import ProjectResource, RuntimeResource, StoreResource

__all__ = ["ProjectResource", "RuntimeResource", "StoreResource"]
