"""Declarations of teachers and the student.

A teacher is a named generation spec (model, backend, prompt template, sampling, the backend's
own settings): one Dagster partition, and one store folder of memoized samples, each. The
backend's settings sit under the key its module declares (teachers[].endpoint for openai,
teachers[].vllm for vllm; see generation/registry.py). The student is the model distilled into,
with the zero-shot prompt it trains and is evaluated in.

Every knob is documented where it is declared and validated on creation, so a bad config fails
at load time with the config path of the offending field (e.g. ``teachers[1].backend``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from distill_dag.configbase import (
    Config,
    ConfigError,
    build_config,
    check_number,
    setting,
    stable_hash,
)
from distill_dag.generation.registry import (
    KNOWN_BACKENDS,
    SETTINGS_KEYS,
    backend_class,
    backend_gpus,
    check_spec,
)
from distill_dag.generation.spec import (
    ALLOW_PICKLE_WEIGHTS_DOC,
    MODEL_ACCESS_SETTINGS,
    TRUST_REMOTE_CODE_DOC,
    GenerationSpec,
    PromptConfig,
    SamplingConfig,
    check_model_access,
)

# Re-exported: the names callers import from here.
__all__ = ["KNOWN_BACKENDS", "ConfigError", "GenerationSpec", "PromptConfig", "SamplingConfig",
           "StudentConfig", "TeacherConfig"]

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


@dataclass(kw_only=True)
class TeacherConfig(GenerationSpec):
    """One teacher: a generation spec with a name. One Dagster partition each."""

    name: str = setting(doc="Partition key and store folder of its samples: letters, digits, "
                            "_ . - (at most 64).")
    top_logprobs: int = setting(
        20, "Top-k log-probs stored per sampled token, for logit distillation (training "
        "objective kd): k (20 is the cap vLLM and OpenAI-compatible servers allow by default); "
        "0 stores none. Taken at sampling time where the backend returns them, else by one "
        "forward pass when kd first needs them. Not part of the request key.", output=False)
    price_per_hour: float = setting(
        0.0, "Price of one hour of one device a local backend generates on (a GPU-hour for "
        "vllm, a GPU- or CPU-hour for transformers), for the cost per accepted sample in "
        "teacher_selection: a sample costs its generation seconds x this x the GPUs the "
        "teacher uses (at least 1). Endpoints price tokens instead (endpoint.price_per_million_"
        "input / _output); both add up where both are set.", output=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ConfigError(f"name {self.name!r} must match {_NAME_RE.pattern}")
        super().__post_init__()
        check_number("price_per_hour", self.price_per_hour, 0.0)
        check_spec(self)  # a known backend; its settings, defaults filled in

    @property
    def label(self) -> str:
        return f"teacher {self.name!r}"

    def gpus(self) -> int:
        """GPUs a step generating or scoring with this teacher needs."""
        return backend_gpus(self)

    def prices(self) -> dict[str, float]:
        """What one sample costs per unit: per million prompt and completion tokens (an
        endpoint's prices), per generation second (price_per_hour x GPUs / 3600)."""
        settings = self.settings
        return {"per_million_input": float(getattr(settings, "price_per_million_input", 0.0)),
                "per_million_output": float(getattr(settings, "price_per_million_output", 0.0)),
                "per_second": self.price_per_hour * max(1, self.gpus()) / 3600.0}

    def version(self) -> str:
        """A hash of what changes this teacher's outputs (`output_settings()`: batch size and
        the backend's placement, speed, address and price settings stay out), in the layout of
        the hashes before the config mechanism so existing partitions keep their versions
        (pinned in tests/test_backend_interface.py): the backend's settings under their
        teachers[] key, and ``endpoint: None`` for a teacher without an endpoint."""
        plain = self.output_settings()
        settings = plain.pop("settings")
        plain["endpoint"] = None
        if settings is not None:
            plain[backend_class(self.backend).settings_key] = settings
        return stable_hash(plain, length=12)

    @classmethod
    def from_dict(cls, data: Any, where: str = "teacher") -> TeacherConfig:
        """A teacher from its config mapping; the backend settings come from the key their
        backend declares (``endpoint:``, ``vllm:``), built by that backend's settings class."""
        known = [f.name for f in fields(cls) if f.name != "settings"] + list(SETTINGS_KEYS)
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key(s) {unknown}; known keys: "
                              f"{', '.join(known)}")
        # An empty `prompt:`, `sampling:` or `vllm:` means the defaults, as an omitted one does.
        empty = ("prompt", "sampling", *SETTINGS_KEYS)
        data = {k: v for k, v in data.items() if v is not None or k not in empty}
        given = [key for key in SETTINGS_KEYS if key in data]
        if len(given) > 1:
            raise ConfigError(f"{where}: {' and '.join(given)} settings given; a teacher has one "
                              "backend")
        if given:
            owner = SETTINGS_KEYS[given[0]]
            assert owner.settings_class is not None
            data["settings"] = build_config(owner.settings_class, data.pop(given[0]),
                                            f"{where}.{given[0]}")
        return build_config(cls, data, where)


@dataclass
class StudentConfig(Config):
    """The student: what is distilled into; scored and evaluated zero-shot, in the prompt it
    will train on."""

    # Added after stores existed: hashed into code versions only when set.
    HASHED_WHEN_SET: ClassVar[tuple[str, ...]] = MODEL_ACCESS_SETTINGS

    model: str = setting("pkg:smollm2-135m-instruct", "Model reference of the original student.")
    prompt: PromptConfig = setting(factory=lambda: PromptConfig(style="chat"),
                                   doc="Its zero-shot prompt (style chat unless given).")
    trust_remote_code: bool = setting(False, TRUST_REMOTE_CODE_DOC + " Its distilled "
                                      "checkpoints load with it too.", output=False)
    allow_pickle_weights: bool = setting(False, ALLOW_PICKLE_WEIGHTS_DOC + " (Distilled "
                                         "checkpoints are written as safetensors.)", output=False)

    def __post_init__(self) -> None:
        check_model_access(self)
        if self.prompt.few_shot or self.prompt.exemplars:
            raise ConfigError("prompt: the student prompt is zero-shot: few_shot and exemplars "
                              "are not allowed")

    @classmethod
    def from_dict(cls, data: Any, where: str = "student") -> StudentConfig:
        if isinstance(data, Mapping):
            data = {k: v for k, v in data.items() if v is not None}
            if isinstance(data.get("prompt"), Mapping):  # the student's style defaults to chat
                data["prompt"] = {"style": "chat", **data["prompt"]}
        return build_config(cls, data, where)
