"""The redi objective: learn from the teachers' incorrect samples too (REDI, "Harnessing Negative
Signals", arXiv 2505.24850).

A second stage on top of another objective's checkpoint (``training.redi.after``: sft or kd,
trained or reused first), on (correct, incorrect) pairs of the same training query: the correct
reply from filtered_dataset, the incorrect one from the `negatives` table that filtered_dataset
keeps aside. Its loss is reference-free and length-normalized:

    loss = -log pi(y_w) / |y_w| + alpha * log pi(y_l) / |y_l|,   alpha = 0.8

(the reference code's loss_type "reinforce"): pull the correct reply's mean token log-prob up,
push the incorrect one's down, the push weighted less so the model does not collapse. Both
replies are masked like SFT's (the prompt never carries loss). A low learning rate: the paper
uses 1e-6 for full fine-tuning of a 1.5B model, one epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import polars as pl

from distill_dag import tables
from distill_dag.configbase import Config, check_int, check_number, setting, stable_hash
from distill_dag.errors import DistillError
from distill_dag.generation.prompts import chat_messages
from distill_dag.training.data import TokenizedDataset, TokenizedExample, tokenize_record
from distill_dag.training.objectives.base import (
    Objective,
    ObjectiveData,
    ObjectiveInputs,
    TrainerJob,
)
from distill_dag.training.objectives.loss_trainer import (
    build_loss_trainer,
    causal_batch,
    token_logprob_sums,
)

FIRST_STAGES = ("sft", "kd")


class NoPairsError(DistillError, ValueError):
    """No training query has both a correct and an incorrect sample."""


@dataclass
class REDISettings(Config):
    """REDI's own knobs (training.redi)."""

    WHERE: ClassVar[str] = "training.redi"

    after: str = setting("sft", 'The objective whose checkpoint REDI continues: "sft" or "kd" '
                                "(trained first, or reused when already trained).")
    alpha: float = setting(0.8, "Weight of the incorrect reply's term, in [0, 1] (the paper's "
                                "0.8; 0 is SFT on the correct replies).")
    learning_rate: float | None = setting(
        None, "REDI's learning rate (> 0). None: a tenth of training.learning_rate (the paper "
        "uses 1e-6 for full fine-tuning of 1.5B; LoRA on a small model needs more).")
    epochs: float = setting(1.0, "Passes over the pairs (> 0).")
    max_steps: int | None = setting(None, "Stop after this many optimizer steps (>= 1).")
    pairs_per_query: int = setting(2, "At most this many pairs per query (>= 1); each correct "
                                      "and each incorrect sample is used in at most one pair.")

    def __post_init__(self) -> None:
        if self.after not in FIRST_STAGES:
            raise ValueError(f"after must be one of {list(FIRST_STAGES)}, got {self.after!r}")
        check_number("alpha", self.alpha, 0.0, 1.0)
        if self.learning_rate is not None:
            check_number("learning_rate", self.learning_rate, 1e-12)
        check_number("epochs", self.epochs, 1e-9)
        if self.max_steps is not None:
            check_int("max_steps", self.max_steps)
        check_int("pairs_per_query", self.pairs_per_query)


def _messages(project: Any, prompt: str, reply: str) -> list[dict[str, str]]:
    return [*chat_messages(project.student.prompt, prompt), {"role": "assistant",
                                                             "content": reply}]


def pair_samples(correct: pl.DataFrame, incorrect: pl.DataFrame, per_query: int
                 ) -> tuple[pl.DataFrame, dict[str, int]]:
    """(query_id, chosen, rejected) pairs of the same query, and why the other queries have
    none. Both sides are taken in request-key order (stable across reruns)."""
    incorrect = incorrect.filter(pl.col("response").str.strip_chars().str.len_chars() > 0)
    good = correct.sort("request_key").group_by("query_id", maintain_order=True).agg(
        pl.col("response").alias("chosen"))
    bad = incorrect.sort("request_key").group_by("query_id", maintain_order=True).agg(
        pl.col("response").alias("rejected"))
    both = good.join(bad, on="query_id", how="inner").sort("query_id")
    rows = [{"query_id": q, "chosen": c, "rejected": r}
            for q, cs, rs in both.iter_rows()
            for c, r in list(zip(cs, rs, strict=False))[:per_query]]
    good_ids, bad_ids = set(good["query_id"]), set(bad["query_id"])
    reasons = {"queries_with_pairs": both.height,
               "queries_without_incorrect_sample": len(good_ids - bad_ids),
               "queries_without_correct_sample": len(bad_ids - good_ids)}
    schema = {"query_id": pl.Utf8, "chosen": pl.Utf8, "rejected": pl.Utf8}
    return pl.DataFrame(rows, schema=schema), reasons


@dataclass
class PairExample(TokenizedExample):
    """The chosen reply as input_ids/labels (what the cycle counts), the rejected one beside."""

    rejected_input_ids: list[int] = dataclasses.field(default_factory=list)
    rejected_labels: list[int] = dataclasses.field(default_factory=list)


class REDI(Objective):
    """Reference-free, length-normalized pair loss on correct vs incorrect replies."""

    name = "redi"
    reads = (tables.FILTERED_DATASET, tables.NEGATIVES, tables.QUERIES)
    Settings = REDISettings

    def first_stage(self, settings: Config | None) -> str | None:
        assert isinstance(settings, REDISettings)
        return settings.after

    def stage_config(self, cfg: Any) -> Any:
        settings = cfg.objective_settings()
        rate = settings.learning_rate or cfg.learning_rate / 10
        return dataclasses.replace(cfg, learning_rate=rate, epochs=settings.epochs,
                                   max_steps=settings.max_steps)

    def records(self, inputs: ObjectiveInputs, settings: Config | None) -> ObjectiveData:
        assert isinstance(settings, REDISettings)
        correct = inputs.table(tables.FILTERED_DATASET)
        if not inputs.has_table(tables.NEGATIVES):
            raise NoPairsError("redi: the negatives table is missing; rematerialize "
                               "filtered_dataset")
        negatives = inputs.table(tables.NEGATIVES)
        pairs, reasons = pair_samples(correct, negatives, settings.pairs_per_query)
        metadata = {"redi_pairs": pairs.height, **{f"redi_{k}": v for k, v in reasons.items()}}
        if not pairs.height:
            raise NoPairsError(
                f"redi: no training query has both a correct sample (filtered_dataset) and an "
                f"incorrect one (negatives): {reasons}. Raise the teachers' num_samples, or "
                "train with sft or kd")
        queries = inputs.table(tables.QUERIES)
        prompts = dict(zip(queries["query_id"], queries["prompt"], strict=True))
        inputs.log.info(f"redi: {pairs.height} pairs from {reasons['queries_with_pairs']} "
                        f"queries ({reasons})")
        records = [{"query_id": q, "chosen": _messages(inputs.project, prompts[q], c),
                    "rejected": _messages(inputs.project, prompts[q], r)}
                   for q, c, r in pairs.iter_rows()]
        # Negatives are not part of filtered_dataset's version: the pairs enter the run key.
        return ObjectiveData(records, stable_hash(records), metadata)

    def prepare(self, tokenizer: Any, records: Sequence[Any], max_length: int
                ) -> TokenizedDataset:
        from distill_dag.training.data import TrainingDataError

        if not records:
            raise TrainingDataError("redi: 0 pairs; there is nothing to train on")
        out = TokenizedDataset(examples=[])
        for index, record in enumerate(records):
            where = f"redi pair {index} (query {record.get('query_id')})"
            chosen = tokenize_record(tokenizer, record.get("chosen"), f"{where}, chosen")
            rejected = tokenize_record(tokenizer, record.get("rejected"), f"{where}, rejected")
            if max(len(chosen.input_ids), len(rejected.input_ids)) > max_length:
                out.dropped_too_long.append(index)
                continue
            out.examples.append(PairExample(chosen.input_ids, chosen.labels,
                                            rejected.input_ids, rejected.labels))
            out.tokens += len(chosen.input_ids) + len(rejected.input_ids)
            out.supervised_tokens += chosen.supervised_tokens + rejected.supervised_tokens
        if not out.examples:
            raise TrainingDataError(f"redi: all {len(records)} pairs are longer than "
                                    f"training.max_length={max_length} tokens; raise it")
        return out

    def trainer(self, job: TrainerJob) -> Any:
        import torch

        settings = job.settings
        assert isinstance(settings, REDISettings)
        alpha, pad = settings.alpha, job.tokenizer.pad_token_id
        examples = [dataclasses.asdict(e) for e in job.data.examples]

        def collate(batch: list[dict]) -> dict:
            return {**causal_batch(batch, pad), **causal_batch(batch, pad, "rejected_")}

        def loss(trainer: Any, model: Any, batch: dict) -> Any:
            # One forward pass over chosen and rejected rows together, padded to one width.
            chosen, rejected = batch["input_ids"], batch["rejected_input_ids"]
            width = max(chosen.shape[1], rejected.shape[1])

            def widen(t, value):
                return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

            ids = torch.cat([widen(chosen, pad), widen(rejected, pad)])
            mask = torch.cat([widen(batch["attention_mask"], 0),
                              widen(batch["rejected_attention_mask"], 0)])
            labels = torch.cat([widen(batch["labels"], -100),
                                widen(batch["rejected_labels"], -100)])
            sums, counts = token_logprob_sums(model, ids, mask, labels)
            if bool((counts == 0).any()):
                raise ValueError("redi: a reply without supervised tokens reached the loss")
            means = sums / counts
            n = chosen.shape[0]
            return (-means[:n] + alpha * means[n:]).mean()

        return build_loss_trainer(job, examples, collate, loss)
