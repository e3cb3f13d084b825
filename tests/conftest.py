"""Shared fixtures: offline hub settings and the real SmolLM2 model (loaded once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests must never reach a hub; models come from PyPI packages (DESIGN.md section 5).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SMOLLM = "pkg:smollm2-135m-instruct"
TESTS = Path(__file__).parent
TINY_CONFIG = TESTS / "configs" / "tiny.yaml"


@pytest.fixture(autouse=True)
def _no_instance_left_entered():
    """Each test starts with no Dagster instance entered: one a previous test closed would
    otherwise be where Dagster reads definitions' state ("undefined DagsterInstance weakref")."""
    from distill_dag.orchestration.dagster_internals import forget_entered_instances

    forget_entered_instances()


@pytest.fixture(scope="session")
def smollm_fp32():
    """SmolLM2-135M-Instruct in fp32: exact arithmetic for comparisons."""
    from distill_dag.models import load_model

    return load_model(SMOLLM, "cpu", "fp32")
