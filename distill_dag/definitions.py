"""The code location's entry point: `dagster dev -w workspace.yaml`, `dg dev` and
`dagster asset materialize -m distill_dag.definitions` load `defs` from here.

The one module of the core that reaches into the Dagster layer, and it only re-exports: the
definitions are built in orchestration/definitions.py (installed as
distill_dag.orchestration.definitions). This module keeps the code location's name stable.
"""

from distill_dag.orchestration.definitions import build_definitions

defs = build_definitions()
