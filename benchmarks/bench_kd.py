"""Benchmark logit distillation (training objective kd) against TRL's own distillation trainer,
side by side, plus on-policy sampling speed and top-k storage.

Prints:
1. useful (non-padding) training tokens/s and peak memory (RSS) of
   - "trl gkd": TRL's GKDTrainer (trl.experimental.gkd) off-policy (lmbda 0: the dataset's
     completions) with beta 0 (forward KL), the teacher model in process: a teacher forward
     pass per step, full-vocabulary logits. TRL's stable DistillationTrainer samples from the
     student at every step (on-policy only), so it cannot train on the same data;
   - "ours kd (full)": distill-dag's kd objective on the stored top-20 log-probs (forward KL,
     tail bucket), full fine-tuning as TRL's, same model, records and batch size;
   - "ours kd (lora)": our CPU default method, for reference;
   each in its own subprocess (clean peak RSS), alternating, medians reported;
2. top-k storage: bytes per token raw and on disk (Parquet) for k = 20;
3. on-policy: the student's samples/s (memoized generation) and the teacher's grading forward
   pass in samples/s, for one round.
The teacher is SmolLM2-135M-Instruct itself (the one packaged model sharing its vocabulary), the
data the generator's worked solutions.

Target (issue 14): ours kd (full) / trl gkd >= 1.0 in useful tokens/s.
Usage: .venv/bin/python benchmarks/bench_kd.py [--records 64] [--steps 6] [--repeats 3]
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
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_training import _Clock, _count_tokens  # the same timing as bench_training

SYSTEM = "Solve the math word problem. Show each step, then end with: The answer is N."
MODEL = "pkg:smollm2-135m-instruct"
K = 20


def chat_records(n: int) -> list[dict]:
    from distill_dag.corpus import generate_word_problems

    return [{"query_id": f"q{i}", "prompt": r["prompt"],
             "messages": [{"role": "system", "content": SYSTEM},
                          {"role": "user", "content": r["prompt"]},
                          {"role": "assistant", "content": r["worked_solution"]}]}
            for i, r in enumerate(generate_word_problems(n, 11, [1, 2]))]


def kd_records(n: int, store_dir: Path) -> tuple[list[dict], dict]:
    """The records with the teacher's top-k at each reply token (one forward pass), and the
    storage figures of those top-k in a real store."""
    from distill_dag.generation.topk import forward_topk, storage_report, store_topk
    from distill_dag.models import load_model
    from distill_dag.store import Store
    from distill_dag.training.data import check_record

    loaded = load_model(MODEL, "cpu", "fp32")
    tok = loaded.tokenizer
    out, prompts, tokens = [], [], []
    for r in chat_records(n):
        prompt, _ = check_record(tok, r["messages"], r["query_id"])
        prompts.append(tok(prompt, add_special_tokens=False)["input_ids"])
        tokens.append(tok(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"])
        out.append(r)
    topks = forward_topk(loaded.model, prompts, tokens, K, pad_id=tok.pad_token_id)
    store = Store(store_dir)
    store_topk(store, "teacher", loaded.fingerprint, "forward",
               [(r["query_id"], t) for r, t in zip(out, topks, strict=True)])
    for r, ids, t in zip(out, tokens, topks, strict=True):
        r.update(request_key=r["query_id"], token_ids=ids, topk_ids=t.ids.tolist(),
                 topk_logprobs=t.logprobs.astype("float32").tolist())
    return out, storage_report(store, "teacher")


def run_one(variant: str, records_file: str, steps: int, batch_size: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill_dag.models import resolve_model
    from distill_dag.training.config import TrainingConfig
    from distill_dag.training.objectives import TrainerJob, get_objective
    from distill_dag.training.train import _lora_config, trainer_arguments

    records = json.loads(Path(records_file).read_text())
    torch.manual_seed(0)
    hf_dir = resolve_model(MODEL).hf_dir
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    out = {"batches": []}
    with tempfile.TemporaryDirectory() as tmp:
        if variant == "trl gkd":
            from trl.experimental.gkd import GKDConfig, GKDTrainer

            teacher = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
            args = GKDConfig(output_dir=tmp, per_device_train_batch_size=batch_size,
                             max_steps=steps, report_to="none", save_strategy="no",
                             disable_tqdm=True, logging_steps=10**6, use_cpu=True,
                             lmbda=0.0, beta=0.0, temperature=1.0, max_length=512)
            trainer = GKDTrainer(model=model, teacher_model=teacher, args=args,
                                 processing_class=tok, train_dataset=Dataset.from_dict(
                                     {"messages": [r["messages"] for r in records]}))
        else:
            method = "lora" if "lora" in variant else "full"
            cfg = TrainingConfig.from_dict({
                "objective": "kd", "kd": {"top_k": K}, "method": method,
                "batch_size": batch_size, "max_steps": steps, "logging_steps": 10**6})
            kd = get_objective("kd")
            job = TrainerJob(model=model, tokenizer=tok,
                             data=kd.prepare(tok, records, cfg.max_length),
                             arguments={**trainer_arguments(cfg, tmp, "cpu", False),
                                        "save_strategy": "no"},
                             max_length=cfg.max_length, packing=False,
                             peft_config=_lora_config(cfg) if method == "lora" else None,
                             settings=cfg.objective_settings())
            trainer = kd.trainer(job)
        trainer.data_collator = _count_tokens(trainer.data_collator, out)
        trainer.add_callback(_Clock(out))
        trainer.train()
        bf16 = bool(trainer.args.bf16)
    seconds = out["t_end"] - out["t1"]
    timed_tokens = sum(out["batches"][1:steps])
    return {"variant": variant, "useful_tokens_per_s": timed_tokens / seconds, "bf16": bf16,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def on_policy_speed(store_dir: Path, queries: int) -> dict:
    """One on-policy round's sampling and grading, timed apart (memoized generation, then the
    teacher's forward pass over the student's tokens in the teacher's prompt)."""
    import polars as pl

    from distill_dag.generation.config import TeacherConfig
    from distill_dag.generation.run import Namespace, generate
    from distill_dag.generation.spec import GenerationSpec, PromptConfig, SamplingConfig
    from distill_dag.generation.topk import ensure_topk
    from distill_dag.store import Store

    store = Store(store_dir)
    rows = chat_records(queries)
    frame = pl.DataFrame({"query_id": [r["query_id"] for r in rows],
                          "prompt": [r["prompt"] for r in rows]})
    spec = GenerationSpec(model=MODEL, prompt=PromptConfig(style="chat", system=SYSTEM),
                          sampling=SamplingConfig(temperature=1.0, max_new_tokens=64,
                                                  num_samples=2), batch_size=32)
    started = time.perf_counter()
    summary = generate(spec, Namespace("onpolicy", "bench"), frame, store, device="cpu",
                       show_progress=False)
    sampled_s = time.perf_counter() - started
    teacher = TeacherConfig.from_dict({"name": "fewshot", "model": MODEL, "prompt": {
        "style": "chat", "system": SYSTEM, "few_shot": 2}})
    samples = summary.outputs.filter(pl.col("token_ids").list.len() > 0)
    graded = ensure_topk(store, teacher, samples, dict(zip(frame["query_id"], frame["prompt"],
                                                           strict=True)),
                         K, device="cpu", show_progress=False, sampled_by_teacher=False)
    return {"samples": summary.outputs.height, "sample_s": sampled_s,
            "tokens": summary.tokens_generated, "graded": graded.computed,
            "grade_s": graded.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--queries", type=int, default=32, help="on-policy round size")
    parser.add_argument("--variants", default="trl gkd;ours kd (full);ours kd (lora)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--records-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.records_file, args.steps, args.batch_size)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        records, storage = kd_records(args.records, Path(tmp) / "store")
        records_file = Path(tmp) / "records.json"
        records_file.write_text(json.dumps(records))
        variants = [v.strip() for v in args.variants.split(";")]
        results: dict[str, list[dict]] = {v: [] for v in variants}
        for repeat in range(args.repeats):
            for variant in variants:  # alternate, so drift hits every variant alike
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", variant, "--records-file",
                     str(records_file), "--steps", str(args.steps), "--batch-size",
                     str(args.batch_size)], capture_output=True, text=True, check=False)
                if proc.returncode:
                    sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                results[variant].append(row)
                print(f"repeat {repeat + 1} {variant:16s} {row['useful_tokens_per_s']:7.1f} "
                      f"tok/s peak RSS {row['peak_rss_gb']:.2f} GB", flush=True)
        speed = on_policy_speed(Path(tmp) / "onpolicy", args.queries)

    def median(v: str, key: str) -> float:
        return statistics.median(r[key] for r in results[v])

    print(f"\n[1] SmolLM2-135M-Instruct student and teacher, {args.records} records, batch "
          f"{args.batch_size}, {args.steps} steps (2..{args.steps} timed), medians of "
          f"{args.repeats}:")
    print("| variant | useful tokens/s | peak RSS GB | bf16 |")
    print("|---|---|---|---|")
    for v in variants:
        print(f"| {v} | {median(v, 'useful_tokens_per_s'):.1f} | "
              f"{median(v, 'peak_rss_gb'):.2f} | {results[v][0]['bf16']} |")
    if "trl gkd" in variants:
        base = median("trl gkd", "useful_tokens_per_s")
        for v in variants:
            if v != "trl gkd":
                target = " (target >= 1.0)" if v == "ours kd (full)" else ""
                print(f"{v} / trl gkd: {median(v, 'useful_tokens_per_s') / base:.2f}x{target}")
    print(f"\n[2] top-{K} storage: {storage['raw_bytes_per_token']:.1f} bytes/token raw, "
          f"{storage['disk_bytes_per_token']:.1f} on disk ({storage['tokens']} tokens; "
          "DistillKit: ~114 at k=50, ~300 at k=128)")
    print(f"\n[3] on-policy round, {args.queries} queries x 2 samples: student sampling "
          f"{speed['samples'] / speed['sample_s']:.2f} samples/s "
          f"({speed['tokens'] / speed['sample_s']:.0f} tok/s), teacher grading "
          f"{speed['graded'] / max(speed['grade_s'], 1e-9):.1f} samples/s")


if __name__ == "__main__":
    main()
