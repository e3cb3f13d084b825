"""A transformers Trainer for objectives with a loss of their own (kd, redi): batching, LoRA and
the shared arguments, so an objective writes only its loss.

SFT trains through TRL's SFTTrainer; an objective whose loss TRL does not ship on our data
(stored teacher top-k, REDI's reference-free pair loss) subclasses ``LossTrainer`` and implements
``objective_loss(model, batch)``. Everything else stays the training cycle's: the arguments
(output dir, schedule, precision, checkpoints), resume, counting supervised tokens (every batch
has ``labels``), merging and saving. Batches are padded to their longest example (no packing: the
extra per-token tensors would have to be packed alike), examples of similar length batched
together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from distill_dag.training.data import IGNORE_INDEX
from distill_dag.training.objectives.base import TrainerJob


def pad_rows(rows: Sequence[Sequence[Any]], value: Any, width: int, dtype: Any) -> Any:
    """Right-pad `rows` (lists, or lists of lists) to `width` with `value` as one tensor."""
    import torch

    out = []
    for row in rows:
        tensor = torch.as_tensor(row, dtype=dtype)
        missing = width - tensor.shape[0]
        if missing:
            pad = torch.full((missing, *tensor.shape[1:]), value, dtype=dtype)
            tensor = torch.cat([tensor, pad])
        out.append(tensor)
    return torch.stack(out)


def causal_batch(examples: Sequence[dict[str, Any]], pad_id: int, prefix: str = "") -> dict:
    """input_ids, attention_mask and labels (IGNORE_INDEX on padding) of `examples`, each with
    `<prefix>input_ids` and `<prefix>labels`, right-padded to the longest."""
    import torch

    ids = [e[f"{prefix}input_ids"] for e in examples]
    width = max(len(i) for i in ids)
    return {
        f"{prefix}input_ids": pad_rows(ids, pad_id, width, torch.long),
        f"{prefix}attention_mask": pad_rows([[1] * len(i) for i in ids], 0, width, torch.long),
        f"{prefix}labels": pad_rows([e[f"{prefix}labels"] for e in examples], IGNORE_INDEX,
                                    width, torch.long),
    }


def shifted(logits: Any, labels: Any) -> tuple[Any, Any]:
    """(logits that predict a supervised token [N, vocab], those tokens [N]): position t's logits
    predict token t + 1; prompt and padding (IGNORE_INDEX) are dropped."""
    targets = labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    return logits[:, :-1][supervised], targets[supervised]


def token_logprob_sums(model: Any, input_ids: Any, attention_mask: Any,
                       labels: Any) -> tuple[Any, Any]:
    """Per sequence: the sum of its supervised tokens' log-probs and their count."""
    import torch

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets = labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * supervised).sum(-1), supervised.sum(-1)


class ExampleList:
    """A map-style dataset over the tokenized examples (dicts), which the trainer samples."""

    def __init__(self, examples: list[dict[str, Any]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index]


def _trainer_class():
    from transformers import Trainer

    class LossTrainer(Trainer):
        """compute_loss is the objective's `loss(trainer, model, batch)`; it returns a mean over
        this batch, so the Trainer scales it for gradient accumulation."""

        objective_loss: Callable[[Any, Any, dict], Any]
        loss_is_scaled_for_ga = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = type(self).objective_loss(self, model, inputs)
            return (loss, None) if return_outputs else loss

    return LossTrainer


def build_loss_trainer(job: TrainerJob, examples: list[dict[str, Any]],
                       collate: Callable[[list[dict]], dict],
                       loss: Callable[[Any, Any, dict], Any], **arguments: Any) -> Any:
    """A Trainer for `job` whose loss is `loss(trainer, model, batch)` on batches `collate`
    builds (they must carry ``labels``). `arguments` override the shared TrainingArguments."""
    from transformers import TrainingArguments

    model = job.model
    if job.peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, job.peft_config)
    args = TrainingArguments(**{**job.arguments, "remove_unused_columns": False,
                                "train_sampling_strategy": "group_by_length", **arguments})
    trainer_class = type("ObjectiveTrainer", (_trainer_class(),), {"objective_loss": loss})
    return trainer_class(model=model, args=args, train_dataset=ExampleList(examples),
                         data_collator=collate, processing_class=job.tokenizer,
                         callbacks=job.callbacks or None)
