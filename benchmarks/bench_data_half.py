"""Benchmark the data half of the DAG against raw transformers, side by side in one run.

Prints three figures (issue 2):
1. teacher_outputs generation tokens/s vs a raw ``model.generate`` loop on the same model,
   prompts and batch size (target ratio >= 0.9);
2. provenance scoring tokens/s vs a raw batched forward pass over the same sequences
   (target ratio >= 0.9);
3. a second materialization with nothing changed: tokens generated and sequences scored
   (target 0 and 0), and its wall time relative to the first.

Runs alternate (raw, ours, raw, ours, ...) and medians are reported, since these machines are
noisy. Usage: .venv/bin/python benchmarks/bench_data_half.py [--queries 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import polars as pl
import torch

from distill_dag.config import load_project_config
from distill_dag.corpus import generate_word_problems
from distill_dag.generation.run import generate_teacher_outputs
from distill_dag.generation.transformers_backend import TransformersBackend
from distill_dag.models import load_model
from distill_dag.provenance.scoring import score_responses
from distill_dag.store import Store

ROOT = Path(__file__).resolve().parents[1]


def raw_generate(backend: TransformersBackend, prompts: list[str]) -> tuple[int, float]:
    """The baseline: tokenizer padding, model.generate per batch, in input order."""
    teacher, tok, model = backend.teacher, backend.loaded.tokenizer, backend.loaded.model
    s = teacher.sampling
    tok.padding_side = "left"
    tokens, started = 0, time.perf_counter()
    for begin in range(0, len(prompts), teacher.batch_size):
        batch = tok(prompts[begin : begin + teacher.batch_size], return_tensors="pt",
                    padding=True, add_special_tokens=backend.style == "plain")
        with torch.inference_mode():
            out = model.generate(**batch, do_sample=True, temperature=s.temperature,
                                 top_p=s.top_p, top_k=None, max_new_tokens=s.max_new_tokens,
                                 pad_token_id=tok.pad_token_id,
                                 stop_strings=backend.stop or None,
                                 tokenizer=tok if backend.stop else None)
        tokens += sum(_generated_length(row, tok.eos_token_id, tok.pad_token_id)
                      for row in out[:, batch["input_ids"].shape[1] :].tolist())
    return tokens, time.perf_counter() - started


def _generated_length(ids: list[int], eos: int, pad: int) -> int:
    """Tokens generated: up to and including the first EOS, else up to the trailing padding
    (the same count as GenerationResult.completion_tokens)."""
    if eos in ids:
        return ids.index(eos) + 1
    length = len(ids)
    while length and ids[length - 1] == pad:
        length -= 1
    return length


def ours_generate(backend: TransformersBackend, queries: pl.DataFrame) -> tuple[int, float]:
    """teacher_outputs' core path: requests, keys, batched generation, stored chunks."""
    with tempfile.TemporaryDirectory() as tmp:
        summary = generate_teacher_outputs(backend.teacher, queries, Store(tmp),
                                           backend=backend, show_progress=False)
    return summary.tokens_generated, summary.seconds


def raw_forward(loaded, prompts: list[str], responses: list[str], batch_size: int
                ) -> tuple[int, float]:
    """The baseline: tokenizer padding and a plain forward pass per batch (full logits)."""
    tok = loaded.tokenizer
    tok.padding_side = "left"
    texts = [p + r for p, r in zip(prompts, responses, strict=True)]
    tokens, started = 0, time.perf_counter()
    for begin in range(0, len(texts), batch_size):
        batch = tok(texts[begin : begin + batch_size], return_tensors="pt", padding=True,
                    add_special_tokens=False)
        with torch.inference_mode():
            loaded.model(**batch, use_cache=False)
        tokens += int(batch["attention_mask"].sum())
    return tokens, time.perf_counter() - started


def ours_score(loaded, prompts: list[str], responses: list[str], batch_size: int
               ) -> tuple[int, float]:
    started = time.perf_counter()
    score_responses(loaded, prompts, responses, batch_size=batch_size)
    elapsed = time.perf_counter() - started
    tok = loaded.tokenizer
    tokens = sum(len(tok(p + r, add_special_tokens=False)["input_ids"])
                 for p, r in zip(prompts, responses, strict=True))
    return tokens, elapsed


def median_rate(runs: list[tuple[int, float]]) -> float:
    return statistics.median(t / s for t, s in runs)


def bench_generation(args) -> None:
    project = load_project_config()
    teacher = project.teachers[0]
    queries = pl.DataFrame(generate_word_problems(args.queries, seed=99, levels=(1, 2))
                           ).with_row_index("i").select(
        pl.col("i").cast(pl.Utf8).alias("query_id"), "prompt")
    teacher.sampling.num_samples = 1
    backend = TransformersBackend(teacher)
    no_reuse = TransformersBackend(teacher, reuse_prefix=False)
    prompts = [backend.render(p) for p in queries["prompt"]]
    raw, ours, plain = [], [], []
    for _ in range(args.repeats):
        raw.append(raw_generate(backend, prompts))
        ours.append(ours_generate(backend, queries))
        plain.append(ours_generate(no_reuse, queries))
    r, o, p = median_rate(raw), median_rate(ours), median_rate(plain)
    print(f"\n[1] generation: {teacher.name} ({teacher.model}, {backend.loaded.dtype}), "
          f"{args.queries} prompts of ~{len(backend.loaded.tokenizer(prompts[0])['input_ids'])} "
          f"tokens, batch {teacher.batch_size}, {args.repeats} alternating runs (median)")
    print(f"    raw model.generate loop      {r:8.1f} tok/s")
    print(f"    teacher_outputs (ours)       {o:8.1f} tok/s   ratio {o / r:.2f}x  (target >= 0.9)")
    print(f"    ours without prefix reuse    {p:8.1f} tok/s   ratio {p / r:.2f}x")


def bench_scoring(args) -> None:
    project = load_project_config()
    student = load_model(project.student.model)
    from distill_dag.generation.prompts import render_prompt

    problems = generate_word_problems(args.queries * 2, seed=98, levels=(1, 2))
    prompts = [render_prompt(project.student.prompt, p["prompt"], student.tokenizer)
               for p in problems]
    responses = [p["worked_solution"] for p in problems]
    batch = project.provenance.batch_size
    raw, ours = [], []
    for _ in range(args.repeats):
        raw.append(raw_forward(student, prompts, responses, batch))
        ours.append(ours_score(student, prompts, responses, batch))
    r, o = median_rate(raw), median_rate(ours)
    print(f"\n[2] scoring: student {project.student.model} ({student.dtype}), {len(prompts)} "
          f"sequences, batch {batch}, {args.repeats} alternating runs (median)")
    print(f"    raw batched forward pass     {r:8.1f} tok/s")
    print(f"    provenance scoring (ours)    {o:8.1f} tok/s   ratio {o / r:.2f}x  (target >= 0.9)")


def bench_rerun(args) -> None:
    import dagster as dg

    from distill_dag.orchestration.definitions import build_definitions, materialize_all

    config = ROOT / "tests" / "configs" / "tiny.yaml"
    with tempfile.TemporaryDirectory() as home, dg.instance_for_test() as instance:
        defs = build_definitions(config, home=home, show_progress=False)
        started = time.perf_counter()
        materialize_all(defs, instance, log_level="WARNING")
        first = time.perf_counter() - started
        started = time.perf_counter()
        results = materialize_all(defs, instance, log_level="WARNING")
        second = time.perf_counter() - started
    generated = scored = 0
    for result in results:
        for event in result.get_asset_materialization_events():
            meta = event.materialization.metadata
            generated += meta["tokens_generated_now"].value if "tokens_generated_now" in meta \
                else 0
            scored += meta["scored_now"].value if "scored_now" in meta else 0
    print(f"\n[3] rerun with nothing changed ({config.name}, all five assets, both partitions)")
    print(f"    second run: tokens generated {generated}, sequences scored {scored} "
          "(target 0 and 0)")
    print(f"    wall time: first {first:.1f} s, second {second:.1f} s "
          f"(ratio {second / first:.2f}; Dagster's per-run overhead remains)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["generation", "scoring", "rerun"])
    args = parser.parse_args()
    torch.manual_seed(0)
    for name, fn in (("generation", bench_generation), ("scoring", bench_scoring),
                     ("rerun", bench_rerun)):
        if args.only in (None, name):
            fn(args)


if __name__ == "__main__":
    main()
