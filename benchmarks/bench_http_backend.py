"""HTTP backend benchmark, side by side in one run against one llama.cpp server on 127.0.0.1:

1. tokens/s of distill-dag's OpenAI backend against the same requests sent directly with
   `requests` at the same concurrency (runs alternate; medians of --repeats);
2. cache hits: how many stored requests per second a rerun serves without calling the server.

    .venv/bin/python benchmarks/bench_http_backend.py [--requests 24] [--concurrency 2]

Needs the `llamacpp` extra (scripts/test.sh installs it). About 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import polars as pl
import requests

from distill_dag.generation.config import TeacherConfig
from distill_dag.generation.local_server import LlamaCppServer
from distill_dag.generation.openai_backend import OpenAIBackend
from distill_dag.generation.run import build_requests, generate_teacher_outputs
from distill_dag.store import Store


def _teacher(url: str, concurrency: int, seed: int) -> TeacherConfig:
    return TeacherConfig.from_dict({
        "name": "bench", "model": "pkg:smollm2-135m-instruct", "backend": "openai",
        "prompt": {"style": "chat", "system": "Solve the math word problem."},
        "sampling": {"temperature": 0.7, "max_new_tokens": 48, "num_samples": 1, "seed": seed},
        "batch_size": 8,
        "endpoint": {"base_url": url, "model": "smollm2", "max_concurrency": concurrency}},
        "teachers[0]")


def _queries(n: int) -> pl.DataFrame:
    return pl.DataFrame({"query_id": [f"q{i}" for i in range(n)],
                         "prompt": [f"Tom has {i + 3} apples. He buys {i % 7 + 2} more. How many "
                                    f"apples does he have now?" for i in range(n)]})


def run_backend(url: str, n: int, concurrency: int, seed: int) -> float:
    teacher = _teacher(url, concurrency, seed)
    backend = OpenAIBackend(teacher)
    reqs = build_requests(backend, teacher, _queries(n))
    started = time.perf_counter()
    tokens = sum(r.completion_tokens for batch in backend.generate(reqs) for r in batch)
    return tokens / (time.perf_counter() - started)


def run_direct(url: str, n: int, concurrency: int, seed: int) -> float:
    """The same request bodies, posted with a plain requests.Session per thread."""
    teacher = _teacher(url, concurrency, seed)
    backend = OpenAIBackend(teacher)
    bodies = [backend._body(r) for r in build_requests(backend, teacher, _queries(n))]
    sessions: dict[int, requests.Session] = {}

    def post(body: dict) -> int:
        import threading

        session = sessions.setdefault(threading.get_ident(), requests.Session())
        answer = session.post(f"{url}/chat/completions", data=json.dumps(body),
                              headers={"Content-Type": "application/json"}, timeout=600)
        return int(answer.json()["usage"]["completion_tokens"])

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(post, bodies))
    return tokens / (time.perf_counter() - started)


def cache_hits(url: str, n: int) -> tuple[int, float]:
    """Requests per second served from the store on a rerun (the server is not called)."""
    teacher = _teacher(url, 4, seed=0)
    queries = _queries(n)
    with tempfile.TemporaryDirectory() as root:
        store = Store(root)
        backend = OpenAIBackend(teacher)
        frames = []
        for request in build_requests(backend, teacher, queries):  # fill the store directly
            frames.append({"request_key": request.key, "teacher": "bench",
                           "model_fingerprint": backend.model_fingerprint,
                           "query_id": request.query_id, "sample_index": request.sample_index,
                           "response": "The answer is 4.", "response_lead": "",
                           "token_ids": [], "token_logprobs": [-0.1] * 6,
                           "token_starts": [0, 3, 10, 13, 15, 16], "prompt_tokens": 30,
                           "completion_tokens": 6, "finish_reason": "stop", "latency_s": 0.1,
                           "generated_at": 0.0})
        store.append_chunk("generations", "bench", pl.DataFrame(frames, schema_overrides={
            "token_ids": pl.List(pl.Int64)}))
        started = time.perf_counter()
        summary = generate_teacher_outputs(teacher, queries, store, show_progress=False)
        seconds = time.perf_counter() - started
        assert summary.generated == 0 and summary.outputs.height == n
    return n, n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-requests", type=int, default=20000)
    args = parser.parse_args()
    server = LlamaCppServer()
    server.start()
    try:
        run_direct(server.base_url, 2, args.concurrency, seed=999)  # warm-up
        ours, direct = [], []
        for repeat in range(args.repeats):  # alternate, each with its own seeds
            direct.append(run_direct(server.base_url, args.requests, args.concurrency, repeat))
            ours.append(run_backend(server.base_url, args.requests, args.concurrency, repeat))
            print(f"repeat {repeat}: direct {direct[-1]:.1f} tok/s, backend {ours[-1]:.1f} tok/s",
                  flush=True)
        n, per_s = cache_hits(server.base_url, args.cache_requests)
    finally:
        server.kill()
    d, o = statistics.median(direct), statistics.median(ours)
    print(f"\n| measure | value |\n|---|---|\n"
          f"| direct requests, median tok/s | {d:.1f} |\n"
          f"| distill-dag backend, median tok/s | {o:.1f} |\n"
          f"| ratio backend / direct | **{o / d:.2f}x** |\n"
          f"| cache hits ({n} stored requests) | **{per_s:,.0f} requests/s** |")


if __name__ == "__main__":
    main()
