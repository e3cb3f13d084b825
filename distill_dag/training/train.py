"""Fine-tune the student with TRL's SFTTrainer: LoRA or full, packed, mixed precision, resumable.

The core of distilled_checkpoint, free of Dagster. Records are tokenized here (``data``: loss on
the assistant reply only, with the checks TRL does not make) and handed to SFTTrainer as
``input_ids`` + ``labels``, which TRL packs best-fit-decreasing into padding-free rows (position
ids restart per example, so examples never attend to each other). Checkpoints land in
``<run_dir>/trainer`` every ``save_steps``; a rerun after a crash resumes from the last one. The
result is a plain Hugging Face folder (LoRA merged into the weights) that
``AutoModelForCausalLM.from_pretrained(path)`` loads in one line.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill_dag.models import cpu_supports_bf16, hf_folder_fingerprint, pick_device, resolve_model
from distill_dag.training.config import TrainingConfig
from distill_dag.training.data import IGNORE_INDEX, TokenizedDataset, tokenize_records
from distill_dag.training.launch import WORKER_ENV, train_distributed

MARKER = "distill_dag_checkpoint.json"  # written last: its presence means the folder is complete
log = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    path: Path  # the Hugging Face folder of the distilled student
    checkpoint_hash: str  # content hash of its weights, tokenizer and chat template
    trained_now: bool  # False when the finished folder already existed (nothing trained)
    global_step: int = 0  # optimizer steps of the finished run
    resumed_from_step: int = 0  # the saved step this call resumed from (0: a fresh start)
    steps_run: int = 0  # optimizer steps run in this call
    loss_history: list[dict[str, float]] = field(default_factory=list)  # {step, loss, lr, ...}
    examples: int = 0
    dropped_too_long: int = 0
    tokens_per_epoch: int = 0  # all tokens of the kept examples
    supervised_tokens_per_epoch: int = 0  # tokens with loss (the assistant replies)
    seconds: float = 0.0  # wall time of trainer.train() in this call
    supervised_tokens_trained: int = 0  # loss-carrying tokens the model trained on in this call
    supervised_tokens_per_s: float = 0.0  # the same per second of trainer.train()
    peak_rss_gb: float = 0.0  # the process's peak RSS (includes earlier steps of an in-process run)
    precision: str = "fp32"
    info: dict[str, Any] = field(default_factory=dict)  # the marker file's content
    model: Any = None  # the trained model in memory, only with train_student(keep_model=True)


def use_bf16(cfg: TrainingConfig, device: str) -> bool:
    if cfg.dtype != "auto":
        return cfg.dtype == "bf16"
    if device.startswith("cuda"):
        import torch

        return torch.cuda.is_bf16_supported()
    return cpu_supports_bf16()


def use_packing(cfg: TrainingConfig, model: Any) -> bool:
    """Resolve packing "auto": padding-free packing pays only with a varlen attention kernel."""
    if cfg.packing != "auto":
        return bool(cfg.packing)
    implementation = str(getattr(model.config, "_attn_implementation", "") or "")
    return "flash" in implementation


def sft_config(cfg: TrainingConfig, output_dir: Path, device: str, show_progress: bool,
               packing: bool, **overrides: Any):
    """The SFTConfig for our settings (also used by the benchmark, which overrides parts)."""
    from trl import SFTConfig

    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps is not None else -1,
        max_length=cfg.max_length,
        packing=packing,
        packing_strategy="bfd",
        # Unpacked: batch examples of similar length together, so little compute pads.
        train_sampling_strategy="random" if packing else "group_by_length",
        # Small students train fastest without recomputation; TRL turns checkpointing on by default.
        gradient_checkpointing=False,
        bf16=use_bf16(cfg, device),
        fp16=False,
        use_cpu=not device.startswith("cuda"),
        seed=cfg.seed,
        data_seed=cfg.seed,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        logging_steps=cfg.logging_steps,
        report_to="none",
        disable_tqdm=not show_progress,
        dataloader_num_workers=0,
        # With num_processes > 1 (DDP): LoRA and full fine-tuning use every trainable parameter,
        # and the search for unused ones costs an extra autograd traversal per step.
        ddp_find_unused_parameters=False,
        remove_unused_columns=True,
    )
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def _lora_config(cfg: TrainingConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")


def to_dataset(tokenized: TokenizedDataset):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [e.input_ids for e in tokenized.examples],
                              "labels": [e.labels for e in tokenized.examples]})


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def last_complete_checkpoint(trainer_dir: Path) -> str | None:
    """The newest checkpoint-N folder that was saved completely, deleting newer partial ones.

    transformers writes trainer_state.json last; a folder without it is what a kill during a
    save leaves behind, and resuming from it would fail on every rerun."""
    from transformers.trainer_utils import get_last_checkpoint

    while (last := get_last_checkpoint(str(trainer_dir))) is not None:
        state = Path(last) / "trainer_state.json"
        try:
            json.loads(state.read_text())
            return last
        except (OSError, json.JSONDecodeError):
            log.warning("training: %s was not saved completely (killed mid-save?); deleting it "
                        "and resuming from the one before", last)
            shutil.rmtree(last)
    return None


def _count_supervised(collator, counter: dict[str, int]):
    """Wrap a collator to count the loss-carrying tokens it hands to the model."""

    def wrapped(examples):
        batch = collator(examples)
        counter["supervised"] += int((batch["labels"] != IGNORE_INDEX).sum())
        return batch

    return wrapped


def _sum_over_ranks(value: int, device) -> int:
    import torch
    import torch.distributed as dist

    total = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(total)
    return int(total.item())


def finished_result(final: Path) -> TrainingResult | None:
    """The result of a run whose folder is already complete (nothing is trained), or None."""
    done = read_finished(final)
    if done is None:
        return None
    return TrainingResult(final, done["checkpoint_hash"], False,
                          global_step=done.get("global_step", 0),
                          loss_history=done.get("loss_history", []),
                          examples=done.get("examples", 0), info=done)


def _tokenizer(resolved):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved.hf_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def read_finished(path: Path) -> dict[str, Any] | None:
    """The marker of a finished checkpoint folder, or None if the folder is not complete."""
    marker = path / MARKER
    if not marker.exists():
        return None
    try:
        return json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None


class _ForwardLogs:
    """A TrainerCallback that forwards each logged dict (loss, lr, ...) to a function."""

    def __new__(cls, on_log: Callable[[dict[str, float]], None]):
        from transformers import TrainerCallback

        class Forward(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs:
                    on_log({"step": state.global_step, **logs})

        return Forward()


def train_student(
    messages: Sequence[Any],
    student_model: str,
    cfg: TrainingConfig,
    run_dir: Path,
    *,
    info: dict[str, Any] | None = None,
    device: str = "auto",
    show_progress: bool = True,
    on_log: Callable[[dict[str, float]], None] | None = None,
    callbacks: Sequence[Any] = (),
    keep_model: bool = False,
) -> TrainingResult:
    """Train on chat `messages` records; the finished model is ``run_dir / "model"``.

    `run_dir` should be unique to (student, data, training config): a finished folder there is
    returned as is, and a crashed run there is resumed from its last saved step. `info` is
    recorded in the folder's marker file (e.g. the dataset's data version). `keep_model` returns
    the trained (merged) model in memory too, as ``result.model``.

    With cfg.num_processes > 1 this launches the data-parallel processes (training/launch.py);
    `on_log` then receives each line of their output as {"output": line}, and `callbacks` and
    `keep_model` are not available (they cannot cross processes)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.num_processes > 1 and not os.environ.get(WORKER_ENV):
        if keep_model or callbacks:
            raise ValueError("keep_model and callbacks need num_processes == 1")
        done = finished_result(Path(run_dir) / "model")
        if done is not None:
            return done
        # Bad records or a missing model fail here, once and clearly, not in N workers.
        tokenizer = _tokenizer(resolve_model(student_model))
        tokenize_records(tokenizer, messages, cfg.max_length)
        return train_distributed(
            messages, student_model, cfg, run_dir, info=info, device=device,
            show_progress=show_progress,
            on_output=(lambda line: on_log({"output": line})) if on_log else None)  # type: ignore[arg-type]
    rank = int(os.environ.get("RANK", "0"))

    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    run_dir = Path(run_dir)
    final = run_dir / "model"
    done = finished_result(final)
    if done is not None:
        return done

    resolved = resolve_model(student_model)
    real_device = pick_device(device)
    tokenizer = _tokenizer(resolved)
    tokenized = tokenize_records(tokenizer, messages, cfg.max_length)
    if tokenized.dropped_too_long:
        log.warning("training: %d of %d records are longer than max_length=%d tokens and were "
                    "left out (first: record %d)", len(tokenized.dropped_too_long), len(messages),
                    cfg.max_length, tokenized.dropped_too_long[0])

    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(resolved.hf_dir, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    trainer_dir = run_dir / "trainer"
    trainer_dir.mkdir(parents=True, exist_ok=True)
    args = sft_config(cfg, trainer_dir, real_device, show_progress, use_packing(cfg, model))
    extra = list(callbacks) + ([_ForwardLogs(on_log)] if on_log else [])
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=to_dataset(tokenized), processing_class=tokenizer,
        peft_config=_lora_config(cfg) if cfg.method == "lora" else None, callbacks=extra or None,
    )
    counter = {"supervised": 0}
    trainer.data_collator = _count_supervised(trainer.data_collator, counter)
    last = last_complete_checkpoint(trainer_dir)
    resumed_from = int(last.rsplit("-", 1)[-1]) if last else 0
    if last:
        log.info("training: resuming from %s (step %d)", last, resumed_from)

    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=last)
    seconds = time.perf_counter() - started
    state = trainer.state
    if world > 1:
        counter["supervised"] = _sum_over_ranks(counter["supervised"], trainer.args.device)
        if rank != 0:  # rank 0 writes the finished folder and reports
            return TrainingResult(final, "", True, global_step=state.global_step)
    history = [{k: float(v) for k, v in entry.items() if isinstance(v, int | float)}
               for entry in state.log_history]
    steps_run = state.global_step - resumed_from

    trained = trainer.model
    if cfg.method == "lora":
        trained = trained.merge_and_unload()
    trained = trained.to(torch.float32)
    staging = run_dir / "model.partial"
    shutil.rmtree(staging, ignore_errors=True)
    trained.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)  # includes the chat template the student was trained with
    checkpoint_hash = hf_folder_fingerprint(staging)
    marker = {
        "checkpoint_hash": checkpoint_hash,
        "base_model": student_model,
        "base_model_fingerprint": resolved.fingerprint,
        "method": cfg.method,
        "training_config": cfg.fingerprint(),
        "global_step": state.global_step,
        "examples": len(tokenized.examples),
        "loss_history": history,
        **(info or {}),
    }
    (staging / MARKER).write_text(json.dumps(marker, indent=2, default=str))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    # The resumable state (optimizer included: ~3x the model per checkpoint) has served its
    # purpose once the finished folder is in place.
    shutil.rmtree(trainer_dir, ignore_errors=True)
    return TrainingResult(
        path=final, checkpoint_hash=checkpoint_hash, trained_now=True,
        global_step=state.global_step, resumed_from_step=resumed_from, steps_run=steps_run,
        loss_history=history, examples=len(tokenized.examples),
        dropped_too_long=len(tokenized.dropped_too_long),
        tokens_per_epoch=tokenized.tokens,
        supervised_tokens_per_epoch=tokenized.supervised_tokens, seconds=seconds,
        supervised_tokens_trained=counter["supervised"],
        supervised_tokens_per_s=counter["supervised"] / max(seconds, 1e-9),
        peak_rss_gb=_peak_rss_gb(),
        precision="bf16 autocast" if args.bf16 else "fp32", info=marker,
        model=trained if keep_model else None,
    )
