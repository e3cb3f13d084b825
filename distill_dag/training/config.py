"""Knobs of the distilled_checkpoint stage: how the student is fine-tuned and where it is logged."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from distill_dag.configbase import Config, ConfigError, build_config, setting, stable_hash
from distill_dag.configbase import check_int as _positive_int
from distill_dag.configbase import check_number as _number
from distill_dag.training.monitor import MonitorConfig
from distill_dag.training.objectives import OBJECTIVES, get_objective

# transformers' SchedulerType values (checked against transformers in the tests): a typo fails
# when the config loads, not after the model is loaded and tokenized.
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                 "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau",
                 "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay")


@dataclass
class LoraSettings(Config):
    """LoRA adapter shape (used when ``method`` is "lora"); merged into the weights at the end."""

    WHERE: ClassVar[str] = "training.lora"

    r: int = setting(16, "Adapter rank (>= 1). Higher learns more, costs more.")
    alpha: int = setting(32, "Scaling numerator (>= 1); the update is scaled by alpha / r.")
    dropout: float = setting(0.0, "Dropout on the adapter input, in [0, 1).")
    target_modules: list[str] | str = setting(
        "all-linear", 'Which linear layers get adapters: "all-linear" or a list of module names '
        '(e.g. ["q_proj", "v_proj"]).')

    def __post_init__(self) -> None:
        _positive_int("lora.r", self.r)
        _positive_int("lora.alpha", self.alpha)
        _number("lora.dropout", self.dropout, 0.0, 0.999)
        if not (self.target_modules == "all-linear" or (
                isinstance(self.target_modules, list) and self.target_modules
                and all(isinstance(m, str) and m for m in self.target_modules))):
            raise ValueError("lora.target_modules must be 'all-linear' or a non-empty list of "
                             f"module names, got {self.target_modules!r}")


@dataclass
class TrainingConfig(Config):
    """How distilled_checkpoint fine-tunes the student: the objective (what it learns from the
    teachers; SFT: the loss on the assistant tokens only), LoRA or full, and the optimizer."""

    WHERE: ClassVar[str] = "training"
    # Added after stores existed: hashed only when set, so their code versions stay.
    HASHED_WHEN_SET: ClassVar[tuple[str, ...]] = ("monitor",)
    METHODS: ClassVar[tuple[str, ...]] = ("lora", "full")
    DTYPES: ClassVar[tuple[str, ...]] = ("auto", "bf16", "fp32")

    objective: str = setting(
        "sft", 'What the student learns from: "sft" (the teachers\' replies as targets, loss on '
        "the assistant tokens only). One of the registered objectives "
        "(distill_dag/training/objectives/).")
    settings: dict[str, Config] = setting(
        factory=dict, doc="Each objective's own settings, by objective name; written in the "
        "file as `training.<objective>: {...}` (sft has none). Only the selected objective's "
        "enter the fingerprint.")
    method: str = setting(
        "lora", '"lora" (adapters, merged into a full model at the end; the CPU default) or '
        '"full".')
    lora: LoraSettings = setting(factory=LoraSettings,
                                 doc='Adapter settings, used when method is "lora".')
    epochs: float = setting(3.0, "Passes over the dataset (> 0). Ignored when max_steps is set.")
    max_steps: int | None = setting(None, "Stop after this many optimizer steps (>= 1); "
                                          "overrides epochs.")
    learning_rate: float = setting(2e-4, "Peak AdamW learning rate (> 0). LoRA wants "
                                         "~1e-4..1e-3, full fine-tuning ~1e-5..5e-5.")
    lr_scheduler: str = setting("cosine", "A transformers scheduler name: cosine, linear, "
                                          "constant, constant_with_warmup, ...")
    warmup_ratio: float = setting(0.05, "Share of steps spent warming up the learning rate, in "
                                        "[0, 1).")
    weight_decay: float = setting(0.0, "AdamW weight decay (>= 0).")
    batch_size: int = setting(8, "Examples per device step (with packing: packed rows of up to "
                                 "max_length tokens).")
    gradient_accumulation_steps: int = setting(
        1, "Device steps per optimizer step (>= 1): effective batch = batch_size x this.")
    max_length: int = setting(
        512, "Maximum tokens per example (longer ones are dropped with a warning, never "
        "silently cut); with packing, the length of each packed row.")
    packing: bool | str = setting(
        "auto", "True packs examples best-fit-decreasing into padding-free rows of max_length "
        "tokens (position ids restart per example, so examples never attend to each other); "
        "False pads each batch to its longest example, batching examples of similar length "
        'together. "auto" packs only when the model runs a variable-length attention kernel '
        "(FlashAttention): without one the whole batch becomes one long row whose attention is "
        "quadratic in its length, measured 0.93x of padded batches' speed on CPU "
        "(benchmarks/bench_training.py).")
    dtype: str = setting(
        "auto", 'Compute precision: "auto" (bf16 where the hardware has it: CUDA with bf16, or a '
        'CPU with AVX512-BF16/AMX; else fp32), "bf16", or "fp32". Weights stay fp32 (mixed '
        "precision).")
    seed: int = setting(0, "Seeds the adapter initialisation, data order and dropout.")
    save_steps: int = setting(
        20, "Save a resumable checkpoint every this many optimizer steps (>= 1); a crashed run "
        "resumes from the last one.", output=False)
    logging_steps: int = setting(
        1, "Log loss and learning rate every this many optimizer steps (>= 1).", output=False)
    max_grad_norm: float = setting(1.0, "Gradient clipping norm (> 0).")
    num_processes: int = setting(
        1, "Data-parallel training processes (DistributedDataParallel). 1 trains inside the "
        "stage's process. N > 1 launches ``torchrun --nproc_per_node N`` from the stage: one "
        "process per GPU on a multi-GPU machine (NCCL), or N CPU workers (gloo). Each process "
        "takes batch_size examples per step, so the effective batch is batch_size x "
        "gradient_accumulation_steps x N (it changes the trained weights).")

    monitor: MonitorConfig = setting(
        factory=MonitorConfig, doc="The held-out monitor (training/monitor.py): every "
        "eval_steps, the distance to the teacher on a training sample (the proxy) and on "
        "queries held out of training, and greedy pass@1 on some of them; the teacher_hacking "
        "check warns when the held-out distance rises while the proxy falls. Off by default "
        "(eval_steps 0); on, it holds heldout_queries queries out of training.")

    def __post_init__(self) -> None:
        if isinstance(self.lora, Mapping):
            self.lora = build_config(LoraSettings, self.lora, "lora")
        get_objective(self.objective)
        self.settings = _objective_settings(self.objective, self.settings)
        if self.method not in self.METHODS:
            raise ValueError(f"method must be one of {list(self.METHODS)}, got {self.method!r}")
        if self.dtype not in self.DTYPES:
            raise ValueError(f"dtype must be one of {list(self.DTYPES)}, got {self.dtype!r}")
        _number("epochs", self.epochs, 1e-9)
        if self.max_steps is not None:
            _positive_int("max_steps", self.max_steps)
        _number("learning_rate", self.learning_rate, 1e-12)
        _number("warmup_ratio", self.warmup_ratio, 0.0, 0.999)
        _number("weight_decay", self.weight_decay, 0.0)
        _number("max_grad_norm", self.max_grad_norm, 1e-12)
        for name in ("batch_size", "gradient_accumulation_steps", "save_steps", "logging_steps",
                     "num_processes"):
            _positive_int(name, getattr(self, name))
        _positive_int("max_length", self.max_length, 8)
        _positive_int("seed", self.seed, 0)
        if not (isinstance(self.packing, bool) or self.packing == "auto"):
            raise ValueError(f"packing must be true, false or 'auto', got {self.packing!r}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler must be one of {list(LR_SCHEDULERS)}, "
                             f"got {self.lr_scheduler!r}")
        if isinstance(self.monitor, Mapping):
            self.monitor = build_config(MonitorConfig, self.monitor, "monitor")
        if self.monitor.enabled and self.num_processes > 1:
            raise ValueError("monitor.eval_steps needs num_processes 1: the monitor measures "
                             "inside the training process")
        self.epochs = float(self.epochs)  # 2 and 2.0 are the same run (and run key)

    def objective_settings(self) -> Config | None:
        """The selected objective's own settings (None for an objective without any)."""
        return self.settings.get(self.objective)

    def fingerprint(self, length: int = 16) -> str:
        """What decides the trained weights (with the data and the student): part of the run key.

        `output_settings()` with two adjustments that keep the keys of runs from before a knob
        existed: the objective enters as what it versions (sft versions nothing: every run
        before the knob was sft), num_processes only when it is not 1, the monitor only when
        it is on."""
        values = self.output_settings()
        del values["objective"], values["settings"]
        versions = get_objective(self.objective).versions(self.objective_settings())
        if versions:
            values["objective"] = versions
        if values["num_processes"] == 1:
            values.pop("num_processes")
        if not self.monitor.enabled:  # off changes nothing: the keys of older runs stay
            values.pop("monitor")
        return stable_hash(values, length)

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> TrainingConfig:  # type: ignore[override]
        """Build from the file's mapping; an objective's block (``sft: {...}``) is built by that
        objective's Settings, its errors under ``training.<objective>``."""
        where = where or cls.WHERE
        if isinstance(data, Mapping) and any(name in data for name in OBJECTIVES):
            settings = dict(data.get("settings") or {})
            for name in OBJECTIVES:
                if name in data:
                    settings[name] = _build_settings(name, data[name], f"{where}.{name}")
            data = {k: v for k, v in data.items() if k not in OBJECTIVES} | {"settings": settings}
        return build_config(cls, data, where)


def _build_settings(name: str, data: Any, where: str) -> Config:
    settings_class = get_objective(name).Settings
    if settings_class is None:
        raise ConfigError(f"{where}: objective {name!r} has no settings")
    if isinstance(data, Config):
        return data
    return settings_class.from_dict(data or {}, where)


def _objective_settings(selected: str, given: Any) -> dict[str, Config]:
    """`given` (objective name -> settings or their mapping) built and checked, with the
    selected objective's defaults where the file gives none."""
    if not isinstance(given, Mapping):
        raise ConfigError(f"settings must be a mapping of objective name to settings, "
                          f"got {type(given).__name__}")
    out = {}
    for name, data in given.items():
        if name not in OBJECTIVES:
            raise ConfigError(f"settings: unknown objective {name!r}; known objectives: "
                              f"{', '.join(sorted(OBJECTIVES))}")
        out[name] = _build_settings(name, data, name)
    default = get_objective(selected).Settings
    if default is not None and selected not in out:
        out[selected] = default()
    return out


@dataclass
class TrackingConfig(Config):
    """Where MLflow runs go (experiment tracking for training and evaluation). None of it changes
    a weight or a table: it says where the record of a run is kept."""

    WHERE: ClassVar[str] = "tracking"
    UNREACHABLE_CHOICES: ClassVar[tuple[str, ...]] = ("error", "local")
    HASHED_WHEN_SET: ClassVar[tuple[str, ...]] = ("log_model", "registered_model", "ui_url")

    tracking_uri: str | None = setting(
        None, "Any MLflow tracking URI (http://host:5000, databricks, sqlite:///path.db). None: "
        "the MLFLOW_TRACKING_URI environment variable if set, else a local SQLite database "
        "under the run home (``<home>/mlflow/mlflow.db``).", output=False)
    experiment: str = setting("distill-dag", "MLflow experiment name.", output=False)
    enabled: bool = setting(True, "False turns MLflow logging off (the Dagster metadata still "
                                  "records everything).", output=False)
    on_unreachable: str = setting(
        "error", 'What to do when a remote tracking server does not answer: "error" (fail the '
        'step with a clear message before any training starts) or "local" (log to the local '
        "SQLite database and say so in the step's log and metadata).", output=False)
    timeout_s: float = setting(5.0, "How long to wait for a remote tracking server's health "
                                    "check, in seconds (> 0).", output=False)
    log_model: bool = setting(
        True, "Log the distilled student as an MLflow model (transformers flavor, from its "
        "folder, with a text-in/text-out signature) in its training run.", output=False)
    registered_model: str | None = setting(
        "distill-dag-student", "Register the logged student under this name in the MLflow "
        "model registry; eval_report tags the version with its metrics. None: log only.",
        output=False)
    ui_url: str | None = setting(
        None, "The MLflow UI's address for the links in the Dagster metadata. None: the "
        "tracking server itself when tracking_uri is http(s), else http://127.0.0.1:5000 "
        "(what `mlflow ui` serves).", output=False)

    def __post_init__(self) -> None:
        if self.tracking_uri is not None and (not isinstance(self.tracking_uri, str)
                                              or not self.tracking_uri.strip()):
            raise ValueError(f"tracking_uri must be a non-empty string or null, "
                             f"got {self.tracking_uri!r}")
        if not isinstance(self.experiment, str) or not self.experiment.strip():
            raise ValueError(f"experiment must be a non-empty string, got {self.experiment!r}")
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be true or false, got {self.enabled!r}")
        if self.on_unreachable not in self.UNREACHABLE_CHOICES:
            raise ValueError(f"on_unreachable must be one of {list(self.UNREACHABLE_CHOICES)}, "
                             f"got {self.on_unreachable!r}")
        _number("timeout_s", self.timeout_s, 1e-3)
        if not isinstance(self.log_model, bool):
            raise ValueError(f"log_model must be true or false, got {self.log_model!r}")
        for name in ("registered_model", "ui_url"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{name} must be a non-empty string or null, got {value!r}")
