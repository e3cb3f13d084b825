"""Benchmark distilled_checkpoint's training against a plain TRL SFTTrainer, side by side.

Prints useful (non-padding) training tokens/s and peak memory (RSS) of:
- "trl default": ``SFTTrainer`` with default ``SFTConfig`` settings (its defaults: no packing,
  padding to the longest example of the batch, gradient checkpointing on, bf16 mixed precision
  where available), given the same chat records as a conversational ``messages`` dataset;
- "ours (full)": distill-dag's trainer settings (``distill_dag.training.objectives.sft.sft_config``
  over ``distill_dag.training.train.trainer_arguments``:
  our own loss-masked tokenization, no gradient checkpointing, bf16 mixed precision, and
  ``packing: auto``, which on CPU means padded batches of similar-length examples), same model,
  same records, same ``per_device_train_batch_size``, full fine-tuning as TRL's default;
- "ours (full) packed": the same with best-fit-decreasing, padding-free packing forced on (the
  choice "auto" makes where a FlashAttention kernel is available);
- "ours (lora)": our CPU default method, for reference.
Each run is its own subprocess (clean peak RSS); runs alternate between variants and medians are
reported, since these machines are noisy.

Target (issue 3): ours / trl default >= 1.0 in useful tokens/s.
Usage: .venv/bin/python benchmarks/bench_training.py [--records 96] [--steps 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SYSTEM = "Solve the math word problem. Show each step, then end with: The answer is N."
MODEL = "pkg:smollm2-135m-instruct"


def records(n: int) -> list[list[dict[str, str]]]:
    """Chat records shaped like the embedded default's training data (generator solutions)."""
    from distill_dag.corpus import generate_word_problems

    return [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["prompt"]},
             {"role": "assistant", "content": r["worked_solution"]}]
            for r in generate_word_problems(n, 11, [1, 2])]


class _Clock:
    """A TrainerCallback timing steps 2..N (step 1 pays one-off warm-up costs)."""

    def __new__(cls, out: dict):
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 1:
                    out["t1"] = time.perf_counter()

            def on_train_end(self, args, state, control, **kwargs):
                out["t_end"] = time.perf_counter()

        return Clock()


def _count_tokens(collator, out: dict):
    """Wrap a collator to record each batch's non-padding tokens, in order. The data loader
    prefetches a batch ahead, so batch i is the i-th collated, not the one collated during
    step i: steps 2..N trained on batches 2..N whatever the prefetching."""

    def wrapped(examples):
        batch = collator(examples)
        if "attention_mask" in batch:
            out["batches"].append(int(batch["attention_mask"].sum()))
        else:  # padding-free: one flat row, nothing padded
            out["batches"].append(int(batch["input_ids"].numel()))
        return batch

    return wrapped


def run_one(variant: str, n_records: int, steps: int, batch_size: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from distill_dag.models import resolve_model
    from distill_dag.training.config import TrainingConfig
    from distill_dag.training.data import tokenize_records
    from distill_dag.training.objectives.sft import sft_config, to_dataset
    from distill_dag.training.train import _lora_config, trainer_arguments, use_packing

    torch.manual_seed(0)
    hf_dir = resolve_model(MODEL).hf_dir
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    data = records(n_records)
    out = {"batches": []}
    with tempfile.TemporaryDirectory() as tmp:
        if variant == "trl default":
            args = SFTConfig(output_dir=tmp, per_device_train_batch_size=batch_size,
                             max_steps=steps, report_to="none", save_strategy="no",
                             disable_tqdm=True, logging_steps=10**6, use_cpu=True)
            trainer = SFTTrainer(model=model, args=args, processing_class=tok,
                                 train_dataset=Dataset.from_dict({"messages": data}))
        else:
            method = "lora" if "lora" in variant else "full"
            cfg = TrainingConfig(method=method, batch_size=batch_size, max_steps=steps,
                                 logging_steps=10**6)
            packing = True if "packed" in variant else use_packing(cfg, model)
            args = sft_config(trainer_arguments(cfg, tmp, "cpu", False), cfg.max_length, packing,
                              save_strategy="no")
            tokenized = tokenize_records(tok, data, cfg.max_length)
            trainer = SFTTrainer(model=model, args=args, processing_class=tok,
                                 train_dataset=to_dataset(tokenized),
                                 peft_config=_lora_config(cfg) if method == "lora" else None)
        trainer.data_collator = _count_tokens(trainer.data_collator, out)
        trainer.add_callback(_Clock(out))
        trainer.train()
    seconds = out["t_end"] - out["t1"]
    timed_tokens = sum(out["batches"][1:steps])
    return {"variant": variant, "useful_tokens_per_s": timed_tokens / seconds,
            "tokens": timed_tokens, "seconds": seconds,
            "bf16": bool(args.bf16), "gradient_checkpointing": bool(args.gradient_checkpointing),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=96)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="trl default;ours (full);ours (full) packed;"
                                               "ours (lora)",
                        help="semicolon-separated variant names")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.records, args.steps, args.batch_size)))
        return

    variants = [v.strip() for v in args.variants.split(";")]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for repeat in range(args.repeats):
        for variant in variants:  # alternate, so drift hits every variant alike
            proc = subprocess.run(
                [sys.executable, __file__, "--child", variant, "--records", str(args.records),
                 "--steps", str(args.steps), "--batch-size", str(args.batch_size)],
                capture_output=True, text=True, check=False)
            if proc.returncode:
                sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            results[variant].append(row)
            print(f"repeat {repeat + 1} {variant:12s} {row['useful_tokens_per_s']:7.1f} tok/s "
                  f"peak RSS {row['peak_rss_gb']:.2f} GB", flush=True)

    def median(v: str, key: str) -> float:
        return statistics.median(r[key] for r in results[v])

    print(f"\nSmolLM2-135M-Instruct, {args.records} records, batch size {args.batch_size}, "
          f"{args.steps} steps (steps 2..{args.steps} timed), medians of {args.repeats}:")
    print("| variant | useful tokens/s | peak RSS GB | bf16 | grad ckpt |")
    print("|---|---|---|---|---|")
    for v in variants:
        r = results[v][0]
        print(f"| {v} | {median(v, 'useful_tokens_per_s'):.1f} | {median(v, 'peak_rss_gb'):.2f}"
              f" | {r['bf16']} | {r['gradient_checkpointing']} |")
    if "trl default" in variants:
        baseline = median("trl default", "useful_tokens_per_s")
        print()
        for v in variants:
            if v != "trl default":
                target = " (target >= 1.0)" if v == "ours (full)" else ""
                print(f"{v} / trl default, useful tokens/s: "
                      f"{median(v, 'useful_tokens_per_s') / baseline:.2f}x{target}")


if __name__ == "__main__":
    main()
