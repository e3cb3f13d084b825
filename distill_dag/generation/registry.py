"""The generation backends by name, and building one for a spec.

Each backend module owns everything about its backend: the class (a `Backend` subclass), its
settings class and the teachers[] key they sit under, what of them changes outputs (the settings'
`setting(output=...)` fields), the GPUs it needs and its errors (BackendError subclasses). The
config (teacher validation, versions, GPU counts) reads all of that from here.

Adding a backend: write generation/<name>_backend.py, then add its class to BACKENDS below.
"""

from __future__ import annotations

from dataclasses import MISSING, fields

from distill_dag.configbase import ConfigError
from distill_dag.generation.backend import Backend, GenerationBackend
from distill_dag.generation.openai_backend import OpenAIBackend
from distill_dag.generation.spec import GenerationSpec
from distill_dag.generation.transformers_backend import TransformersBackend
from distill_dag.generation.vllm_backend import VLLMBackend

BACKENDS: dict[str, type[Backend]] = {cls.name: cls for cls in (
    TransformersBackend,
    VLLMBackend,
    OpenAIBackend,
)}
KNOWN_BACKENDS = tuple(BACKENDS)
# teachers[].<key> -> the backend whose settings sit under it
SETTINGS_KEYS: dict[str, type[Backend]] = {cls.settings_key: cls for cls in BACKENDS.values()
                                           if cls.settings_key}


def backend_class(name: str, where: str = "") -> type[Backend]:
    """The class registered under `name`, or a ConfigError listing the known ones."""
    try:
        return BACKENDS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown backend {name!r}{f' for {where}' if where else ''}; "
                          f"known backends: {', '.join(KNOWN_BACKENDS)}") from None


def check_spec(spec: GenerationSpec) -> None:
    """A known backend with settings of its own class; omitted settings get the backend's
    defaults (where it has defaults; a backend with required settings fails)."""
    cls = backend_class(spec.backend, spec.label)
    settings = spec.settings
    if settings is not None and not (cls.settings_class and isinstance(settings,
                                                                       cls.settings_class)):
        owner = next((b for b in BACKENDS.values()
                      if b.settings_class and isinstance(settings, b.settings_class)), None)
        what = owner.settings_key if owner else type(settings).__name__
        need = f"backend {owner.name!r}" if owner else "no backend here"
        raise ConfigError(f"{spec.label}: {what} settings need {need}, not {spec.backend!r}")
    if settings is None and cls.settings_class is not None:
        if cls.settings_required:
            required = [f.name for f in fields(cls.settings_class)
                        if f.default is MISSING and f.default_factory is MISSING]
            key = cls.settings_key or "settings"
            article = "an" if key[0] in "aeiou" else "a"
            raise ConfigError(f"{spec.label}: backend {spec.backend!r} needs {article} {key} "
                              f"{{{', '.join(required)}, ...}}, and only it takes one")
        spec.settings = cls.settings_class()


def backend_gpus(spec: GenerationSpec) -> int:
    """GPUs one step generating or scoring with `spec` needs (vLLM: tensor_parallel_size)."""
    return backend_class(spec.backend, spec.label).gpus(spec.settings)


def make_backend(spec: GenerationSpec, device: str = "auto", dtype: str = "auto"
                 ) -> GenerationBackend:
    """The backend that generates (and scores) for `spec`; device and dtype place in-process
    models (transformers, an HTTP teacher's local copy)."""
    check_spec(spec)
    return backend_class(spec.backend, spec.label)(spec, device=device, dtype=dtype)
