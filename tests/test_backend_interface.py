"""The backend interface on the CPU stack: every backend generates and scores; the registry is
the one place a backend is declared (its settings, versions, GPUs and errors follow from it); the
vLLM backend's settings are validated and, where vllm does not import, fail with a clear way to
get it.

The vLLM engine itself is tested in tests/test_vllm_backend.py, in .venv-vllm."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
import yaml

from distill_dag.config import ProjectConfig, load_project_config
from distill_dag.configbase import Config, setting
from distill_dag.generation.backend import Backend
from distill_dag.generation.config import ConfigError, TeacherConfig
from distill_dag.generation.openai_backend import EndpointConfig
from distill_dag.generation.registry import make_backend
from distill_dag.generation.vllm_backend import VLLMEngineConfig
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
    assert teacher.settings == VLLMEngineConfig()
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


def test_vllm_and_http_teachers_keep_their_teacher_versions():
    """Settings moved into their backend modules hash as before (versions computed by the code
    before the backend registry, commit 095b8e1), so no partition turns stale."""
    assert _project(_vllm_teacher()).teacher_version("big") == "541a9d0be53e"
    big2 = {**_vllm_teacher(tensor_parallel_size=4, dtype="float16", max_model_len=2048,
                            engine_args={"quantization": "awq"}), "name": "big2"}
    assert _project(big2).teacher_version("big2") == "5c396f15f984"
    remote = {"name": "remote", "model": SMOLLM, "backend": "openai",
              "endpoint": {"base_url": "http://x:1/v1", "model": "served", "api": "completions",
                           "max_concurrency": 3, "logprobs": False}}
    assert _project(remote).teacher_version("remote") == "8fdfec58fe98"
    moved = {**remote, "endpoint": {**remote["endpoint"], "base_url": "https://y/v1",
                                    "max_retries": 0, "price_per_million_output": 3.0}}
    assert _project(moved).teacher_version("remote") == "8fdfec58fe98"


# -- the registry ---------------------------------------------------------------------------------

def test_the_registry_is_where_backends_their_settings_and_gpus_come_from():
    from distill_dag.generation import registry
    from distill_dag.generation.openai_backend import OpenAIBackend
    from distill_dag.generation.vllm_backend import VLLMBackend

    assert registry.KNOWN_BACKENDS == ("transformers", "vllm", "openai")
    assert {"vllm": VLLMBackend, "endpoint": OpenAIBackend} == registry.SETTINGS_KEYS
    assert _project({"name": "t", "model": SMOLLM}).teacher_gpus() == 1
    wide = ProjectConfig.from_dict({
        "corpus": {"generator": {"n": 8, "seed": 1, "levels": [1]}},
        "teachers": [{"name": "t", "model": SMOLLM}, _vllm_teacher(tensor_parallel_size=4)]})
    assert wide.teacher_gpus() == 4
    endpoint = {"base_url": "http://h/v1", "model": "m"}
    with pytest.raises(ConfigError, match=r"teachers\[0\]: .*endpoint settings need backend "
                                          r"'openai', not 'vllm'"):
        _project({**_vllm_teacher(), "endpoint": endpoint})
    with pytest.raises(ConfigError, match=r"teachers\[0\]: vllm and endpoint settings given"):
        _project({**_vllm_teacher(dtype="float16"), "endpoint": endpoint})


def test_backend_errors_are_one_type_that_says_whether_a_retry_helps():
    from distill_dag.errors import DistillError
    from distill_dag.generation.backend import BackendError
    from distill_dag.generation.openai_backend import EndpointError
    from distill_dag.generation.vllm_backend import VLLMSetupError, VLLMUnavailable

    for error in (EndpointError, VLLMUnavailable, VLLMSetupError):
        assert issubclass(error, BackendError) and issubclass(error, DistillError)
    assert issubclass(VLLMUnavailable, ImportError) and issubclass(VLLMSetupError, ValueError)
    assert not EndpointError("HTTP 401").retryable
    assert EndpointError("gave up", retryable=True).retryable
    assert not VLLMUnavailable("no vllm").retryable


@dataclasses.dataclass
class _ToySettings(Config):
    shout: bool = setting(False, "Upper-case the answer (changes outputs).")
    workers: int = setting(1, "GPUs it spreads over (changes no output).", output=False)


class _ToyBackend(Backend):
    """A backend in a few lines: answers every query with a fixed text."""

    name = "toy"
    settings_key = "toy"
    settings_class = _ToySettings

    @classmethod
    def gpus(cls, settings):
        return settings.workers

    def __init__(self, spec, device="auto", dtype="auto"):
        self.spec = spec
        self.model_fingerprint = f"toy-{spec.settings.fingerprint()}"

    def render(self, query):
        return f"Q: {query}"

    def generate(self, requests, progress=None):
        from distill_dag.generation.backend import GenerationResult

        text = "THE ANSWER IS 5." if self.spec.settings.shout else "The answer is 5."
        yield [GenerationResult(r.key, r.query_id, r.sample_index, text, [], [], [], 3, 5,
                                "stop", 0.0) for r in requests]


def test_a_new_backend_is_its_module_plus_one_registration(tmp_path: Path, monkeypatch):
    """Registered (the one line in registry.py, done here by the test), a backend's settings
    key is a teacher key, its output settings version the teacher, its GPUs count, and the
    generation path stores its samples: nothing else names it."""
    from distill_dag.generation import registry
    from distill_dag.generation.run import generate_teacher_outputs
    from distill_dag.store import Store

    monkeypatch.setitem(registry.BACKENDS, "toy", _ToyBackend)
    monkeypatch.setitem(registry.SETTINGS_KEYS, "toy", _ToyBackend)
    toy = {"name": "toy", "model": SMOLLM, "backend": "toy", "toy": {"workers": 2}}
    project = _project(toy)
    teacher = project.teacher("toy")
    assert teacher.settings == _ToySettings(workers=2) and project.teacher_gpus() == 2
    assert _project({**toy, "toy": {"workers": 8}}).teacher_version("toy") == \
        project.teacher_version("toy")
    assert _project({**toy, "toy": {"shout": True}}).teacher_version("toy") != \
        project.teacher_version("toy")
    with pytest.raises(ConfigError, match=r"teachers\[0\]\.toy\.speed: unknown key"):
        _project({**toy, "toy": {"speed": 3}})
    queries = pl.DataFrame({"query_id": ["a", "b"], "prompt": ["2 + 3?", "1 + 4?"]})
    summary = generate_teacher_outputs(teacher, queries, Store(tmp_path), show_progress=False)
    assert summary.generated == 4 and set(summary.outputs["response"]) == {"The answer is 5."}
    assert isinstance(make_backend(teacher), _ToyBackend)


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
                            settings=EndpointConfig(base_url="http://127.0.0.1:9/v1",
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
    from distill_dag.orchestration.definitions import build_definitions

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
