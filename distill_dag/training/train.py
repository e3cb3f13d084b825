"""Fine-tune the student: the training cycle every objective shares. LoRA or full, mixed
precision, resumable, in this process or data-parallel.

The core of distilled_checkpoint, free of Dagster. ``training.objective`` picks what the student
learns (training/objectives/: its records, tokenization and trainer; sft is TRL's SFTTrainer);
this module does the rest: load and seed the student, set the shared trainer arguments, add LoRA
adapters, resume, train, merge and save. Checkpoints land in ``<run_dir>/trainer`` every
``save_steps``; a rerun after a crash resumes from the last one. The result is a plain Hugging
Face folder (LoRA merged into the weights) that ``AutoModelForCausalLM.from_pretrained(path)``
loads in one line.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from distill_dag.models import (
    cpu_supports_bf16,
    hf_folder_fingerprint,
    pick_device,
    resolve_model,
    tokenizer_kwargs,
    weights_kwargs,
)
from distill_dag.training.config import TrainingConfig
from distill_dag.training.data import IGNORE_INDEX, TokenizedDataset
from distill_dag.training.launch import WORKER_ENV, train_distributed
from distill_dag.training.objectives import TrainerJob, get_objective
from distill_dag.training.progress import log_callback, parse_step_line, quiet_default_printing
from distill_dag.training.run_folder import (
    MARKER,
    TrainingResult,
    finished_result,
    last_complete_checkpoint,
    read_finished,
)

# MARKER, TrainingResult, read_finished, finished_result and last_complete_checkpoint live in
# run_folder.py (the launcher reads them too) and stay importable from here.
__all__ = ["MARKER", "TrainingResult", "build_trainer", "finished_result",
           "last_complete_checkpoint", "read_finished", "train_student", "trainer_arguments",
           "use_bf16", "use_packing"]
log = logging.getLogger(__name__)


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


def _checkpointing_argument() -> str:
    """transformers 5.2x names it activation_checkpointing (gradient_checkpointing is the
    deprecated alias); the older transformers that vLLM pins (.venv-vllm) knows only the alias."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names \
        else "gradient_checkpointing"


def trainer_arguments(cfg: TrainingConfig, output_dir: Path, device: str,
                      show_progress: bool) -> dict[str, Any]:
    """The transformers TrainingArguments keywords every objective shares (an objective adds
    its own, e.g. sft_config)."""
    return dict(
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
        # Small students train fastest without recomputation; TRL turns it on by default.
        **{_checkpointing_argument(): False},
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


def _lora_config(cfg: TrainingConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")


def build_trainer(cfg: TrainingConfig, model: Any, tokenizer: Any, data: TokenizedDataset,
                  output_dir: Path, device: str, show_progress: bool,
                  callbacks: Sequence[Any] = ()) -> Any:
    """The selected objective's trainer for `model` (seeded and loaded by the caller), with
    LoRA adapters when cfg.method is "lora", and one log line per logged step."""
    peft_config = _lora_config(cfg) if cfg.method == "lora" else None
    job = TrainerJob(model=model, tokenizer=tokenizer, data=data,
                     arguments=trainer_arguments(cfg, output_dir, device, show_progress),
                     max_length=cfg.max_length, packing=use_packing(cfg, model),
                     peft_config=peft_config, callbacks=list(callbacks),
                     settings=cfg.objective_settings())
    with warnings.catch_warnings():
        if peft_config is not None:
            # peft (0.21.2, the newest release) reads transformers 5's deprecated
            # `is_gradient_checkpointing` property when it wraps the model in adapters
            # (PeftModel.__init__): a FutureWarning no call of ours makes or can avoid. Only
            # that message is ignored, only while the model is wrapped.
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                    category=FutureWarning)
        trainer = get_objective(cfg.objective).trainer(job)
    quiet_default_printing(trainer)
    return trainer


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


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


def _tokenizer(resolved, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved.hf_dir,
                                              **tokenizer_kwargs(trust_remote_code))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _forward_worker_lines(on_log: Callable[[dict[str, Any]], None] | None):
    """The launcher's line callback: every worker line as {"output": line}, a logged step's
    line with its entry too ({"step", "loss", ...}, as in one process)."""
    if on_log is None:
        return None
    return lambda line: on_log({**(parse_step_line(line) or {}), "output": line})


def train_student(
    records: Sequence[Any],
    student_model: str,
    cfg: TrainingConfig,
    run_dir: Path,
    *,
    info: dict[str, Any] | None = None,
    device: str = "auto",
    show_progress: bool = True,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    callbacks: Sequence[Any] = (),
    keep_model: bool = False,
    trust_remote_code: bool = False,
    allow_pickle_weights: bool = False,
) -> TrainingResult:
    """Train on `records` (what cfg.objective trains on; sft: chat `messages` records, as its
    `records()` reads them from filtered_dataset); the finished model is ``run_dir / "model"``.

    `run_dir` should be unique to (student, data, training config): a finished folder there is
    returned as is, and a crashed run there is resumed from its last saved step. `info` is
    recorded in the folder's marker file (e.g. the dataset's data version). `keep_model` returns
    the trained (merged) model in memory too, as ``result.model``. `on_log` receives each logged
    entry ({"step": N, "loss": ..., ...}); without it each is logged as one line.

    With cfg.num_processes > 1 this launches the data-parallel processes (training/launch.py);
    `on_log` then receives each line of their output as {"output": line} (a logged step's line
    with its entry's keys too), and `callbacks` and `keep_model` are not available (they cannot
    cross processes).

    `trust_remote_code` and `allow_pickle_weights` are the student's load permissions
    (``**model_access(project.student)``; both off unless given): code in the student's folder
    runs only with the first, and its weights are read from safetensors only without the second."""
    access = {"trust_remote_code": trust_remote_code is True,
              "allow_pickle_weights": allow_pickle_weights is True}
    objective = get_objective(cfg.objective)
    if cfg.num_processes > 1 and not os.environ.get(WORKER_ENV):
        if keep_model or callbacks:
            raise ValueError("keep_model and callbacks need num_processes == 1")
        done = finished_result(Path(run_dir) / "model")
        if done is not None:
            return done
        # Bad records or a missing model fail here, once and clearly, not in N workers.
        resolved = resolve_model(student_model,
                                 allow_pickle_weights=access["allow_pickle_weights"])
        objective.prepare(_tokenizer(resolved, access["trust_remote_code"]), records,
                          cfg.max_length)
        return train_distributed(records, student_model, cfg, run_dir, info=info, device=device,
                                 show_progress=show_progress,
                                 on_output=_forward_worker_lines(on_log), **access)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))

    import torch
    from transformers import AutoModelForCausalLM

    run_dir = Path(run_dir)
    final = run_dir / "model"
    done = finished_result(final)
    if done is not None:
        return done

    resolved = resolve_model(student_model, allow_pickle_weights=access["allow_pickle_weights"])
    real_device = pick_device(device)
    tokenizer = _tokenizer(resolved, access["trust_remote_code"])
    tokenized = objective.prepare(tokenizer, records, cfg.max_length)
    if tokenized.dropped_too_long:
        log.warning("training: %d of %d records are longer than max_length=%d tokens and were "
                    "left out (first: record %d)", len(tokenized.dropped_too_long), len(records),
                    cfg.max_length, tokenized.dropped_too_long[0])

    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(resolved.hf_dir, dtype=torch.float32,
                                                 **weights_kwargs(**access))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    trainer_dir = run_dir / "trainer"
    trainer_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(cfg, model, tokenizer, tokenized, trainer_dir, real_device,
                            show_progress, [*callbacks, log_callback(on_log)])
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
        "objective": cfg.objective,
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
        precision="bf16 autocast" if trainer.args.bf16 else "fp32", info=marker,
        model=trained if keep_model else None,
    )
