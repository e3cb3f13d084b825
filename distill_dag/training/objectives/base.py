"""What a training objective is: the seam between the training cycle and what the student learns.

The cycle (training/train.py) owns everything objectives share: resolving and loading the
student, seeding, the optimizer and schedule settings, LoRA or full (`training.method`),
precision, data-parallel launch, resumable checkpoints, counting supervised tokens, merging and
saving the finished folder. An objective owns what differs: which store tables its records come
from, how a record is checked and tokenized, the trainer (or loss) that learns from it, and what
of it enters the run key.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from distill_dag.configbase import Config
from distill_dag.training.data import TokenizedDataset


@dataclass
class TrainerJob:
    """What an objective builds its trainer from; everything shared is decided already."""

    model: Any  # the student, fp32, loaded after seeding with training.seed
    tokenizer: Any  # the student's tokenizer (pad token set)
    data: TokenizedDataset  # what the objective's prepare() returned for the records
    # transformers TrainingArguments keywords every objective shares (output_dir, batch size,
    # learning rate and schedule, precision, seed, checkpoint and logging steps, ...).
    arguments: dict[str, Any]
    max_length: int  # tokens per example (with packing: per packed row)
    packing: bool  # training.packing with "auto" resolved for this model
    peft_config: Any | None  # LoRA adapters to add (method "lora"), None for full fine-tuning
    callbacks: list[Any] = field(default_factory=list)  # TrainerCallbacks to pass on
    settings: Config | None = None  # the objective's own settings (training.<name>)


@dataclass
class ObjectiveInputs:
    """What an objective gathers its records from: the store, the project's config, and where
    models run (kd's forward pass of a teacher for top-k log-probs it lacks)."""

    store: Any  # distill_dag.store.Store
    project: Any  # distill_dag.config.ProjectConfig
    student: str = ""  # the model this run trains (a checkpoint's folder after a first stage)
    round: int = 0  # which of the objective's rounds (on_policy samples anew each round)
    device: str = "auto"
    dtype: str = "auto"
    show_progress: bool = True
    log: Any = field(default_factory=lambda: logging.getLogger("distill_dag"))
    # Tables that stand in for the store's (by distill_dag.tables name): a trial distillation
    # trains on one teacher's records without writing filtered_dataset.
    tables: Mapping[str, Any] = field(default_factory=dict)

    def table(self, name: str) -> Any:
        """A store table (a polars DataFrame) by its distill_dag.tables name."""
        if name in self.tables:
            return self.tables[name]
        return self.store.read_table(name)

    def has_table(self, name: str) -> bool:
        """Whether table() has `name` (a stand-in, or the store's)."""
        return name in self.tables or self.store.table_exists(name)


@dataclass
class ObjectiveData:
    """An objective's records, and what they are."""

    records: list[Any]  # what prepare() and train_student take; JSON-serializable
    # What the records carry beyond filtered_dataset (whose version is in the run key already):
    # e.g. the teacher top-k's identity. None: nothing beyond it.
    version: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # for the stage's metadata


class Objective(ABC):
    """One way of training the student; a subclass is registered in objectives/__init__.py."""

    name: ClassVar[str]  # the value of training.objective that selects it
    # The store tables (distill_dag.tables names) its records are built from.
    reads: ClassVar[tuple[str, ...]]
    # Its own knobs, a Config at training.<name> (None: it has none).
    Settings: ClassVar[type[Config] | None] = None
    # Bump when how it trains changes: part of the run key (via versions()), so a finished
    # checkpoint built the old way is retrained, not reused.
    version: ClassVar[str] = "1"

    @abstractmethod
    def records(self, inputs: ObjectiveInputs, settings: Config | None) -> ObjectiveData:
        """The records train_student takes, from the tables in `reads` (inputs.table(name)).
        They must be JSON-serializable: data-parallel training hands them to its workers.
        Records that cannot be had raise a DistillError saying what to do."""

    @abstractmethod
    def prepare(self, tokenizer: Any, records: Sequence[Any], max_length: int) -> TokenizedDataset:
        """Check and tokenize the records (a TokenizedDataset, or a subclass carrying more per
        example); bad records raise TrainingDataError naming the record. Called once before
        data-parallel workers start, so they fail once and clearly, then in each process."""

    @abstractmethod
    def trainer(self, job: TrainerJob) -> Any:
        """A transformers Trainer (TRL's, or one with its own compute_loss) for the job: it
        must keep the job's arguments, model, callbacks and peft_config, and batches with a
        ``labels`` tensor (IGNORE_INDEX where there is no loss), which the cycle counts."""

    def first_stage(self, settings: Config | None) -> str | None:
        """An objective that continues another one's checkpoint (REDI after SFT) names it: the
        stage trains (or reuses) that objective's checkpoint first and starts from it."""
        return None

    def rounds(self, settings: Config | None) -> int:
        """How many times the stage trains with this objective, each round starting from the
        last one's checkpoint (on_policy samples from the current student each round)."""
        return 1

    def stage_config(self, cfg: Any) -> Any:
        """The TrainingConfig this objective's own stage trains with (REDI: its lower learning
        rate and one epoch); the shared one by default."""
        return cfg

    def versions(self, settings: Config | None) -> dict[str, Any]:
        """What this objective adds to the run key (training.fingerprint()): its name, version
        and settings that change outputs. Empty adds nothing."""
        return {"name": self.name, "version": self.version,
                "settings": settings.output_settings() if settings is not None else {}}
