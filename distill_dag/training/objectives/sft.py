"""The sft objective: supervised fine-tuning on the chosen teachers' replies, with TRL's SFTTrainer.

Records are filtered_dataset's chat `messages`, tokenized by training/data.py (loss on the
assistant reply only) and handed to SFTTrainer as ``input_ids`` + ``labels``, which TRL packs
best-fit-decreasing into padding-free rows when packing is on (position ids restart per example,
so examples never attend to each other), or pads per batch of similar-length examples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from distill_dag.configbase import Config
from distill_dag.tables import FILTERED_DATASET
from distill_dag.training.data import TokenizedDataset, tokenize_records
from distill_dag.training.objectives.base import (
    Objective,
    ObjectiveData,
    ObjectiveInputs,
    TrainerJob,
)


def sft_config(arguments: Mapping[str, Any], max_length: int, packing: bool, **overrides: Any):
    """The SFTConfig: the shared TrainingArguments keywords plus SFT's own (also used by the
    benchmark, which overrides parts)."""
    from trl import SFTConfig

    kwargs: dict[str, Any] = dict(
        arguments,
        max_length=max_length,
        packing=packing,
        packing_strategy="bfd",
        # Unpacked: batch examples of similar length together, so little compute pads.
        train_sampling_strategy="random" if packing else "group_by_length",
    )
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def to_dataset(tokenized: TokenizedDataset):
    """The tokenized examples as the datasets.Dataset SFTTrainer takes."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [e.input_ids for e in tokenized.examples],
                              "labels": [e.labels for e in tokenized.examples]})


class SFT(Objective):
    """Cross-entropy on the teacher's reply tokens (the assistant turn), prompt tokens masked."""

    name = "sft"
    reads = (FILTERED_DATASET,)

    def records(self, inputs: ObjectiveInputs, settings: Config | None) -> ObjectiveData:
        return ObjectiveData(inputs.table(FILTERED_DATASET)["messages"].to_list())

    def prepare(self, tokenizer: Any, records: Sequence[Any], max_length: int) -> TokenizedDataset:
        return tokenize_records(tokenizer, records, max_length)

    def trainer(self, job: TrainerJob) -> Any:
        from trl import SFTTrainer

        return SFTTrainer(
            model=job.model, args=sft_config(job.arguments, job.max_length, job.packing),
            train_dataset=to_dataset(job.data), processing_class=job.tokenizer,
            peft_config=job.peft_config, callbacks=job.callbacks or None)

    def versions(self, settings: Config | None) -> dict[str, Any]:
        # Every run key from before training.objective existed is an sft run's: sft adds
        # nothing, so those finished checkpoints are reused. (To retrain every sft run after a
        # change to how it trains, return {"version": "2"}.)
        return {}
