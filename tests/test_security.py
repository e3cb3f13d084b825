"""Safe by default (docs/security.md): no code from a model folder runs unless the teacher's or
the student's config sets trust_remote_code (vLLM engine settings included), weights are read
from safetensors only unless the config sets allow_pickle_weights, and the servers distill-dag
starts bind 127.0.0.1. Fast: the models here are tiny random folders, nothing is trained."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from distill_dag.config import ProjectConfig, load_project_config
from distill_dag.configbase import ConfigError
from distill_dag.generation.config import StudentConfig, TeacherConfig
from distill_dag.generation.vllm_backend import VLLMEngineConfig
from distill_dag.models import ModelResolutionError, load_model, model_access, resolve_model
from tests.conftest import SMOLLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "special_tokens_map.json")


def _tiny_folder(folder: Path, *, pickle: bool, safetensors: bool) -> Path:
    """A random 1-layer Llama with SmolLM2's tokenizer: `pytorch_model.bin` (torch.save)
    and/or `model.safetensors`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    source = resolve_model(SMOLLM).hf_dir
    folder.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, folder / name)
    config = LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=128, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if safetensors:
        model.save_pretrained(folder)  # config.json and model.safetensors
    else:
        config.save_pretrained(folder)
    if pickle:
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def pickle_only(tmp_path_factory) -> Path:
    return _tiny_folder(tmp_path_factory.mktemp("models") / "pickle_only", pickle=True,
                        safetensors=False)


@pytest.fixture(scope="module")
def safe_folder(tmp_path_factory) -> Path:
    return _tiny_folder(tmp_path_factory.mktemp("models") / "safe", pickle=False,
                        safetensors=True)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[dict[str, Any]]]:
    """The keyword arguments of every AutoTokenizer / AutoModelForCausalLM.from_pretrained,
    which still load (the recorder calls the real one)."""
    import transformers

    seen: dict[str, list[dict[str, Any]]] = {"tokenizer": [], "model": []}
    for kind, cls in (("tokenizer", transformers.AutoTokenizer),
                      ("model", transformers.AutoModelForCausalLM)):
        original = cls.from_pretrained

        def record(path, *args, _original=original, _kind=kind, **kwargs):
            seen[_kind].append({"path": str(path), **kwargs})
            return _original(path, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", record)
    return seen


def _project(teacher: dict, student: dict | None = None) -> ProjectConfig:
    return ProjectConfig.from_dict({
        "corpus": {"generator": {"n": 8, "seed": 1, "levels": [1]}, "eval_fraction": 0.25},
        "teachers": [teacher], **({"student": student} if student else {})})


# -- trust_remote_code ----------------------------------------------------------------------------

def test_trust_remote_code_in_vllm_engine_args_fails_naming_the_teacher_setting(tmp_path: Path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"teachers": [{
        "name": "big", "model": SMOLLM, "backend": "vllm",
        "vllm": {"engine_args": {"trust_remote_code": True}}}]}))
    with pytest.raises(ConfigError) as info:
        load_project_config(path)
    message = str(info.value)
    assert "teachers[0].vllm" in message and "engine_args must not set trust_remote_code" in message
    assert "teachers[].trust_remote_code" in message  # the field to use instead
    with pytest.raises(ConfigError, match="trust_remote_code"):  # whatever its value
        VLLMEngineConfig(engine_args={"trust_remote_code": False})


def test_trust_remote_code_and_pickle_weights_are_off_unless_a_config_sets_them():
    cfg = _project({"name": "t", "model": SMOLLM})
    assert model_access(cfg.teacher("t")) == model_access(cfg.student) == {
        "trust_remote_code": False, "allow_pickle_weights": False}
    asked = _project({"name": "t", "model": SMOLLM, "trust_remote_code": True},
                     {"allow_pickle_weights": True})
    assert model_access(asked.teacher("t")) == {"trust_remote_code": True,
                                                "allow_pickle_weights": False}
    assert model_access(asked.student) == {"trust_remote_code": False,
                                           "allow_pickle_weights": True}
    assert model_access(None) == {"trust_remote_code": False, "allow_pickle_weights": False}
    for bad in ({"name": "t", "model": SMOLLM, "trust_remote_code": "yes"},
                {"name": "t", "model": SMOLLM, "allow_pickle_weights": 1}):
        with pytest.raises(ConfigError, match=r"teachers\[0\].*must be true or false"):
            _project(bad)
    with pytest.raises(ConfigError, match=r"student.*trust_remote_code must be true or false"):
        _project({"name": "t", "model": SMOLLM}, {"trust_remote_code": "yes"})


def test_the_load_settings_change_no_fingerprint_and_hash_only_when_set():
    """Off (the default, given or not) hashes as before the settings existed, so nothing turns
    stale (test_config and test_backend_interface pin those values); on, they enter the
    config's code-version hashes but never a teacher's version or a request key."""
    plain = _project({"name": "t", "model": SMOLLM})
    spelled = _project({"name": "t", "model": SMOLLM, "trust_remote_code": False,
                        "allow_pickle_weights": False},
                       {"trust_remote_code": False, "allow_pickle_weights": False})
    on = _project({"name": "t", "model": SMOLLM, "trust_remote_code": True,
                   "allow_pickle_weights": True},
                  {"trust_remote_code": True, "allow_pickle_weights": True})
    assert spelled.fingerprint() == plain.fingerprint()
    assert spelled.section_hash("teachers", "student") == plain.section_hash("teachers",
                                                                             "student")
    assert on.section_hash("teachers") != plain.section_hash("teachers")
    assert on.section_hash("student") != plain.section_hash("student")
    assert on.teacher_version("t") == plain.teacher_version("t")
    assert on.teacher("t").fingerprint() == plain.teacher("t").fingerprint()
    assert on.student.fingerprint() == plain.student.fingerprint()


def test_vllm_gets_trust_remote_code_from_the_teacher_and_safetensors_only(
        monkeypatch: pytest.MonkeyPatch):
    from distill_dag.generation import vllm_backend
    from distill_dag.generation.vllm_backend import VLLMBackend, engine_kwargs

    kwargs = engine_kwargs(VLLMEngineConfig())
    assert kwargs["trust_remote_code"] is False and kwargs["load_format"] == "safetensors"
    assert engine_kwargs(VLLMEngineConfig(), trust_remote_code=True)["trust_remote_code"] is True
    assert "load_format" not in engine_kwargs(VLLMEngineConfig(), allow_pickle_weights=True)
    with pytest.raises(ConfigError, match="allow_pickle_weights"):
        engine_kwargs(VLLMEngineConfig(engine_args={"load_format": "pt"}))
    with pytest.raises(ConfigError, match=r"teacher 'big'.*allow_pickle_weights"):
        VLLMBackend(TeacherConfig(name="big", model=SMOLLM, backend="vllm",
                                  settings=VLLMEngineConfig(engine_args={"load_format": "pt"})))

    # What reaches vllm.LLM: a stand-in module records it (vllm itself is not needed).
    built: list[dict[str, Any]] = []

    class FakeVLLM:
        __version__ = "fake"

        class LLM:
            def __init__(self, **kwargs):
                built.append(kwargs)

    monkeypatch.setattr(vllm_backend, "import_vllm", lambda: FakeVLLM)
    monkeypatch.setattr(vllm_backend, "_check_engine_settings", lambda vllm, cfg: None)
    monkeypatch.setattr(vllm_backend, "_on_cpu", lambda: False)
    monkeypatch.setattr(vllm_backend, "_engine", None)
    for trust in (False, True):
        teacher = TeacherConfig(name="big", model=SMOLLM, backend="vllm", trust_remote_code=trust)
        VLLMBackend(teacher).engine()
        assert built[-1]["trust_remote_code"] is trust
        assert built[-1]["load_format"] == "safetensors"
        assert built[-1]["model"] == str(resolve_model(SMOLLM).hf_dir)
    monkeypatch.setattr(vllm_backend, "_engine", None)


def test_the_teachers_setting_reaches_every_from_pretrained_of_its_model(
        safe_folder: Path, calls: dict):
    from distill_dag.generation.transformers_backend import TransformersBackend

    for trust in (False, True):
        teacher = TeacherConfig(name="t", model=str(safe_folder), trust_remote_code=trust)
        backend = TransformersBackend(teacher, device="cpu", dtype="fp32")
        _ = backend.loaded.model
        tokenizer, model = calls["tokenizer"][-1], calls["model"][-1]
        assert tokenizer["path"] == model["path"] == str(safe_folder)
        assert tokenizer["trust_remote_code"] is trust and model["trust_remote_code"] is trust
        assert model["use_safetensors"] is True


def test_the_students_setting_reaches_its_loads(safe_folder: Path, calls: dict, tmp_path: Path):
    from distill_dag.difficulty import DifficultyConfig
    from distill_dag.training.config import TrainingConfig
    from distill_dag.training.train import train_student

    student = StudentConfig(model=str(safe_folder), trust_remote_code=True)
    spec = DifficultyConfig(num_samples=2).spec(student)  # its samples for the difficulty band
    assert spec.trust_remote_code is True and spec.allow_pickle_weights is False

    class Loaded(Exception):
        pass

    import transformers

    def stop(path, **kwargs):  # record the training load, then stop before training
        calls["model"].append({"path": str(path), **kwargs})
        raise Loaded

    records = [[{"role": "user", "content": "What is 2 + 2?"},
                {"role": "assistant", "content": "The answer is 4."}]]  # sft: chat messages
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", stop)
        with pytest.raises(Loaded):
            train_student(records, str(safe_folder), TrainingConfig(), tmp_path / "run",
                          device="cpu", show_progress=False, **model_access(student))
    assert calls["tokenizer"][-1]["trust_remote_code"] is True
    assert calls["model"][-1]["trust_remote_code"] is True
    assert calls["model"][-1]["use_safetensors"] is True


def test_gguf_and_packaged_models_load_as_before(calls: dict):
    """The embedded model: no remote code, safetensors (its converted folder)."""
    loaded = load_model(SMOLLM, "cpu", "fp32")
    assert load_model(SMOLLM, "cpu", "fp32", trust_remote_code=False) is loaded  # one memo entry
    assert (loaded.resolved.hf_dir / "model.safetensors").exists()
    assert not loaded.trust_remote_code and not loaded.allow_pickle_weights


# -- pickle weights -------------------------------------------------------------------------------

def test_a_pickle_only_folder_is_refused_naming_the_folder_and_the_setting(pickle_only: Path):
    with pytest.raises(ModelResolutionError) as info:
        resolve_model(str(pickle_only))
    message = str(info.value)
    assert str(pickle_only) in message and "pytorch_model.bin" in message
    assert "allow_pickle_weights: true" in message
    with pytest.raises(ModelResolutionError, match="allow_pickle_weights"):
        load_model(str(pickle_only), "cpu", "fp32")
    from distill_dag.generation.transformers_backend import TransformersBackend

    with pytest.raises(ModelResolutionError, match="allow_pickle_weights"):
        TransformersBackend(TeacherConfig(name="t", model=str(pickle_only)), device="cpu")


def test_a_pickle_only_folder_loads_where_the_config_allows_it(pickle_only: Path, calls: dict):
    import torch

    from distill_dag.generation.transformers_backend import TransformersBackend

    assert resolve_model(str(pickle_only), allow_pickle_weights=True).hf_dir == pickle_only
    teacher = TeacherConfig(name="t", model=str(pickle_only), allow_pickle_weights=True)
    loaded = TransformersBackend(teacher, device="cpu", dtype="fp32").loaded
    model = loaded.model
    assert "use_safetensors" not in calls["model"][-1]  # transformers' own choice: the .bin
    assert calls["model"][-1]["trust_remote_code"] is False
    saved = torch.load(pickle_only / "pytorch_model.bin", weights_only=True)
    name = "model.embed_tokens.weight"
    assert torch.equal(model.state_dict()[name], saved[name])


def test_a_folder_with_safetensors_beside_pickles_reads_the_safetensors(tmp_path: Path,
                                                                        calls: dict):
    both = _tiny_folder(tmp_path / "both", pickle=True, safetensors=True)
    assert resolve_model(str(both)).hf_dir == both
    _ = load_model(str(both), "cpu", "fp32").model
    assert calls["model"][-1]["use_safetensors"] is True


# -- servers bind 127.0.0.1 -----------------------------------------------------------------------

def test_the_llama_cpp_server_binds_127_0_0_1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    import requests

    from distill_dag.generation import local_server
    from distill_dag.generation.local_server import LlamaCppServer

    started: list[list[str]] = []

    class Proc:
        pid, returncode = 0, None

        def poll(self):
            return None

    def popen(command, **kwargs):
        started.append(command)
        return Proc()

    class Ok:
        ok = True

    monkeypatch.setattr(local_server.subprocess, "Popen", popen)
    monkeypatch.setattr(requests, "get", lambda url, timeout: Ok())
    server = LlamaCppServer(model=tmp_path / "m.gguf")
    server.start()
    command = started[-1]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
    elsewhere = LlamaCppServer(model=tmp_path / "m.gguf", host="0.0.0.0")  # only when told
    assert elsewhere.command()[elsewhere.command().index("--host") + 1] == "0.0.0.0"


@pytest.mark.slow
def test_the_running_llama_cpp_server_listens_on_loopback_only():
    """The real server (the llamacpp extra), its listening socket read from the OS."""
    pytest.importorskip("llama_cpp.server")
    import psutil

    from distill_dag.generation.local_server import LlamaCppServer

    with LlamaCppServer() as server:
        assert server.proc is not None
        listening = [c.laddr for c in psutil.Process(server.proc.pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
