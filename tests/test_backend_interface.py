"""The backend interface on the CPU stack: every backend generates and scores; the vLLM backend's
settings are validated and, where vllm does not import, fail with a clear way to get it.

The vLLM engine itself is tested in tests/test_vllm_backend.py, in .venv-vllm."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
import yaml

from distill_dag.config import ProjectConfig, load_project_config
from distill_dag.generation.backend import make_backend
from distill_dag.generation.config import (
    ConfigError,
    EndpointConfig,
    TeacherConfig,
    VLLMEngineConfig,
)
from distill_dag.provenance.scoring import LocalScorer, score_responses
from tests.conftest import SMOLLM

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _vllm_teacher(**engine) -> dict:
    return {"name": "big", "model": SMOLLM, "backend": "vllm", **({"vllm": engine} if engine
                                                                  else {})}


def _project(teacher: dict) -> ProjectConfig:
    return ProjectConfig.from_dict({
        "corpus": {"generator": {"n": 8, "seed": 1, "levels": [1]}, "eval_fraction": 0.25},
        "teachers": [teacher]})


# -- config ---------------------------------------------------------------------------------------

def test_a_vllm_teacher_gets_default_engine_settings_and_only_it_takes_them():
    teacher = _project(_vllm_teacher()).teacher("big")
    assert teacher.vllm == VLLMEngineConfig()
    with pytest.raises(ConfigError, match=r"teachers\[0\].*vllm settings need backend 'vllm'"):
        _project({"name": "t", "model": SMOLLM, "vllm": {"tensor_parallel_size": 2}})


@pytest.mark.parametrize(("engine", "field"), [
    ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
    ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    ({"max_model_len": -3}, "max_model_len"),
    ({"dtype": "int4"}, "dtype"),
    ({"kv_cache_gb": 0}, "kv_cache_gb"),
    ({"enforce_eager": "yes"}, "enforce_eager"),
    ({"engine_args": {"seed": 3}}, "engine_args"),
    ({"tensor_paralel_size": 2}, "tensor_paralel_size"),
])
def test_bad_engine_settings_name_the_field(tmp_path: Path, engine: dict, field: str):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"teachers": [_vllm_teacher(**engine)]}))
    with pytest.raises(ConfigError) as info:
        load_project_config(path)
    assert str(path) in str(info.value) and "teachers[0].vllm" in str(info.value)
    assert field in str(info.value)


def test_engine_settings_reach_vllm_as_llm_arguments():
    kwargs = VLLMEngineConfig(tensor_parallel_size=4, max_model_len=8192, kv_cache_gb=2.5,
                              engine_args={"quantization": "awq"}).llm_kwargs()
    assert kwargs["tensor_parallel_size"] == 4 and kwargs["max_model_len"] == 8192
    assert kwargs["kv_cache_memory_bytes"] == int(2.5 * 2**30)
    assert kwargs["quantization"] == "awq"
    assert kwargs["generation_config"] == "vllm"  # a folder's defaults never change sampling
    assert "max_num_seqs" not in kwargs  # unset: vLLM's own default


def test_gpu_placement_settings_leave_the_teacher_version_alone():
    base = _project(_vllm_teacher()).teacher_version("big")
    moved = _project(_vllm_teacher(tensor_parallel_size=8, gpu_memory_utilization=0.5,
                                   max_num_seqs=64, enforce_eager=True, kv_cache_gb=4,
                                   enable_prefix_caching=False)).teacher_version("big")
    assert moved == base
    # What can change the samples: numerics, where completions are cut, passed-through args.
    for changed in ({"dtype": "float16"}, {"max_model_len": 2048},
                    {"engine_args": {"quantization": "fp8"}}):
        assert _project(_vllm_teacher(**changed)).teacher_version("big") != base, changed


def test_output_settings_are_in_the_vllm_request_keys():
    from distill_dag.generation.vllm_backend import VLLMBackend

    def fingerprint(**engine) -> str:
        return VLLMBackend(_project(_vllm_teacher(**engine)).teacher("big")).model_fingerprint

    base = fingerprint()
    assert fingerprint(tensor_parallel_size=4, gpu_memory_utilization=0.5) == base
    assert fingerprint(dtype="float16") != base
    assert fingerprint(engine_args={"quantization": "fp8"}) != base


def test_other_backends_keep_their_teacher_versions():
    """Adding the vllm section must not make every existing teacher stale: the versions below
    were computed by the code before it (commit 2880d41)."""
    assert _project({"name": "small", "model": SMOLLM}).teacher_version("small") == "402faee3e702"
    assert _project({"name": "small", "model": SMOLLM, "sampling": {"temperature": 0.5}}
                    ).teacher_version("small") == "b6421f564119"


# -- the interface ------------------------------------------------------------------------------

def test_transformers_backend_scores_with_its_own_model(smollm_fp32):
    teacher = TeacherConfig(name="t", model=SMOLLM)
    backend = make_backend(teacher, device="cpu", dtype="fp32")
    scorer = backend.scorer()
    assert isinstance(scorer, LocalScorer) and scorer.loaded is backend.loaded
    prompt = backend.render("What is 2 + 3?")
    [scored] = scorer.score([prompt], ["2 + 3 = 5. The answer is 5."])
    [direct] = score_responses(smollm_fp32, [prompt], ["2 + 3 = 5. The answer is 5."])
    np.testing.assert_allclose(scored.logprobs, direct.logprobs, atol=1e-5)
    assert scorer.cache_identity == {"model": smollm_fp32.fingerprint,
                                     "dtype": str(smollm_fp32.dtype)}


def test_an_http_teacher_scores_with_its_local_copy():
    teacher = TeacherConfig(name="remote", model=SMOLLM, backend="openai",
                            endpoint=EndpointConfig(base_url="http://127.0.0.1:9/v1",
                                                    model="served-name"))
    scorer = make_backend(teacher, device="cpu", dtype="fp32").scorer()
    assert isinstance(scorer, LocalScorer)
    assert scorer.loaded.resolved.reference == SMOLLM


@pytest.mark.skipif(HAS_VLLM, reason="vllm imports here: tests/test_vllm_backend.py runs it")
def test_without_vllm_a_vllm_teacher_fails_saying_how_to_get_it(tmp_path: Path):
    from distill_dag.generation.run import generate_teacher_outputs
    from distill_dag.generation.vllm_backend import VLLMUnavailable
    from distill_dag.store import Store

    teacher = TeacherConfig(name="big", model=SMOLLM, backend="vllm")
    backend = make_backend(teacher)  # builds (tokenizer, fingerprint) without importing vllm
    assert backend.render("What is 2 + 3?").endswith("assistant\n")
    with pytest.raises(VLLMUnavailable, match=r"scripts/setup_vllm\.sh"):
        backend.scorer()  # provenance asks for it up front, where setup errors are expected
    queries = pl.DataFrame({"query_id": ["q"], "prompt": ["What is 2 + 3?"]})
    with pytest.raises(VLLMUnavailable, match=r"scripts/setup_vllm\.sh"):
        generate_teacher_outputs(teacher, queries, Store(tmp_path), backend=backend,
                                 show_progress=False)
    assert not (tmp_path / "chunks").exists() or not any((tmp_path / "chunks").rglob("*.parquet"))


@pytest.mark.skipif(HAS_VLLM, reason="vllm imports here: tests/test_vllm_backend.py runs it")
def test_without_vllm_the_asset_fails_without_retrying(tmp_path: Path):
    from distill_dag.definitions import build_definitions

    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump({
        "corpus": {"generator": {"n": 8, "seed": 1, "levels": [1]}, "eval_fraction": 0.25},
        "teachers": [_vllm_teacher()]}))
    defs = build_definitions(config, home=str(tmp_path / "home"), show_progress=False)
    with dg.instance_for_test() as instance:
        dg.materialize(list(defs.assets), selection=["query_corpus"], instance=instance,
                       resources=defs.resources)
        result = dg.materialize(list(defs.assets), selection=["teacher_outputs"],
                                partition_key="big", instance=instance,
                                resources=defs.resources, raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure and "setup_vllm.sh" in str(failure[0].event_specific_data.error)
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
