"""The example configs under examples/ load with the current config classes."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill_dag.config import load_project_config

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path: Path) -> None:
    cfg = load_project_config(path)
    assert cfg.source == str(path) and cfg.teachers


def test_gpu_deployment_example_says_what_it_shows() -> None:
    cfg = load_project_config(next(p for p in EXAMPLES if p.name == "gpu_deployment.yaml"))
    backends = {t.name: t.backend for t in cfg.teachers}
    assert backends == {"qwen_math_7b": "vllm", "r1_distill_7b": "openai"}
    assert cfg.teacher_gpus() == 2  # qwen_math_7b's tensor parallelism
    assert cfg.training.num_processes == 2 and cfg.orchestration.executor == "k8s"
