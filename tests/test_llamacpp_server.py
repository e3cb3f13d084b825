"""The HTTP backend against a real OpenAI-compatible server: llama.cpp's (the `llamacpp` extra,
`llama-cpp-python[server]`, that scripts/test.sh installs) serving the embedded SmolLM2 GGUF on
127.0.0.1. Covers chat and completions with log-probs, seeded samples, and a server killed
mid-run then restarted."""

from __future__ import annotations

import dataclasses
import importlib.util

import polars as pl
import pytest

from distill_dag.generation.config import TeacherConfig
from distill_dag.generation.local_server import LlamaCppServer
from distill_dag.generation.openai_backend import EndpointError, OpenAIBackend
from distill_dag.generation.run import build_requests, generate_teacher_outputs, verify_outputs
from distill_dag.store import Store

pytestmark = pytest.mark.slow
if importlib.util.find_spec("llama_cpp") is None:
    pytest.skip("llama-cpp-python[server] is not installed (scripts/test.sh installs it; or "
                "pip install -e .[llamacpp])",
                allow_module_level=True)


@pytest.fixture(scope="module")
def llama():
    with LlamaCppServer() as server:
        yield server


def _teacher(url: str, api: str = "chat", **endpoint) -> TeacherConfig:
    prompt = ({"style": "chat", "system": "Solve the math word problem. End with: The answer "
                                          "is N."} if api == "chat" else {"style": "plain"})
    return TeacherConfig.from_dict({
        "name": f"llamacpp_{api}", "model": "pkg:smollm2-135m-instruct", "backend": "openai",
        "prompt": prompt,
        "sampling": {"temperature": 0.7, "max_new_tokens": 24, "num_samples": 2},
        "batch_size": 2,
        "endpoint": {"base_url": url, "model": "smollm2", "api": api, "max_concurrency": 2,
                     "backoff_s": 0.2, **endpoint}}, "teachers[0]")


QUERIES = pl.DataFrame({"query_id": ["a", "b", "c"],
                        "prompt": ["Ana has 3 apples. Ana buys 2 more apples. How many apples "
                                   "does Ana have now?",
                                   "Bo has 9 pens. Bo loses 4 pens. How many pens does Bo have?",
                                   "Cy has 2 bags. Each bag holds 5 nuts. How many nuts does Cy "
                                   "have?"],
                        "reference_answer": ["5", "5", "10"]})


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_samples_with_logprobs_from_a_real_server(llama, api):
    backend = OpenAIBackend(_teacher(llama.base_url, api))
    backend.prepare()
    requests_ = build_requests(backend, backend.teacher, QUERIES)
    results = [r for batch in backend.generate(requests_) for r in batch]
    assert len(results) == 6 and all(r.text for r in results)
    for r in results:
        assert r.token_logprobs and len(r.token_logprobs) == len(r.token_starts)
        assert all(lp <= 0 for lp in r.token_logprobs)
        assert r.token_starts == sorted(r.token_starts) and r.token_starts[-1] < len(r.text)
    assert backend.usage.requests == 6 and backend.usage.completion_tokens > 0
    # Seeds come from the request keys: asking again gives the same samples. One at a time and
    # in the same order: llama.cpp's server re-evaluates a prompt on top of what it shares with
    # the previous request's (its prompt cache), which moves logits by float rounding, and two
    # concurrent requests reach it in a racy order, so sampled text is only reproducible when
    # the history before each request is the same.
    serial = dataclasses.replace(backend.teacher.settings, max_concurrency=1)
    replay = dataclasses.replace(backend.teacher, settings=serial)

    def ask() -> dict[str, str]:
        return {r.key: r.text for batch in OpenAIBackend(replay).generate(requests_[:2])
                for r in batch}

    ask()  # the same history before the two compared runs
    assert ask() == ask()


def test_server_killed_mid_run_then_restarted_resumes(tmp_path):
    server = LlamaCppServer()
    server.start()
    teacher = _teacher(server.base_url, max_concurrency=1, max_retries=1)
    store = Store(tmp_path)
    seen = 0

    def kill_after_two(n: int) -> None:
        nonlocal seen
        seen += n
        if seen == 2:
            server.kill()

    backend = OpenAIBackend(teacher)
    try:
        with pytest.raises(EndpointError, match="cannot connect"):
            for batch in backend.generate(build_requests(backend, teacher, QUERIES),
                                          progress=kill_after_two):
                store.append_chunk("generations", teacher.name, pl.DataFrame(
                    {"request_key": [r.key for r in batch],
                     "response": [r.text for r in batch]}))
        kept = store.read_chunks("generations", teacher.name, key="request_key")
        assert kept is not None and 2 <= kept.height < 6
        server.start()
        summary = generate_teacher_outputs(teacher, QUERIES, store, show_progress=False)
    finally:
        server.kill()
    assert summary.generated == 6 - kept.height and summary.outputs.height == 6


def test_a_server_without_logprobs_falls_back_to_scoring_the_teacher_locally(llama, tmp_path):
    from distill_dag.models import load_model
    from distill_dag.provenance.categories import ProvenanceConfig
    from distill_dag.provenance.run import score_provenance
    from tests.conftest import SMOLLM

    teacher = _teacher(llama.base_url, logprobs=False)
    store = Store(tmp_path)
    queries = QUERIES.head(2)
    outputs = generate_teacher_outputs(teacher, queries, store, show_progress=False).outputs
    outputs = verify_outputs(outputs, queries)
    assert outputs["token_logprobs"].list.len().max() == 0
    model = load_model(SMOLLM, "cpu", "fp32")
    from distill_dag.generation.config import StudentConfig

    summary = score_provenance(outputs, queries, teacher, StudentConfig(), ProvenanceConfig(),
                               store, model, model, show_progress=False)
    assert set(summary.samples["teacher_logprob_source"]) == {"rescore"}
    assert summary.sentences["lp_teacher"].null_count() == 0


def test_top_k_from_the_server_round_trips_through_the_store(llama, tmp_path):
    """The server's top-k candidates (token strings) become ids of the local copy's tokenizer,
    are stored with the samples at sampling time, and agree with a forward pass of the local
    copy; samples with a candidate that names no one id get that forward pass instead."""
    import numpy as np

    from distill_dag.generation.prompts import render_prompt
    from distill_dag.generation.topk import SAMPLING, ensure_topk, forward_topk, read_topk
    from distill_dag.models import load_model
    from tests.conftest import SMOLLM

    teacher = dataclasses.replace(_teacher(llama.base_url), top_logprobs=8)
    store = Store(tmp_path)
    outputs = generate_teacher_outputs(teacher, QUERIES, store, show_progress=False).outputs
    loaded = load_model(SMOLLM, "cpu", "fp32")
    for row in outputs.iter_rows(named=True):  # the ids spell the text the server returned
        assert row["token_ids"], row["request_key"]
        decoded = loaded.tokenizer.decode(row["token_ids"], skip_special_tokens=True)
        assert decoded.strip().startswith(row["response"][:20])
    stored = read_topk(store, teacher.name)
    assert stored and all(source == SAMPLING for _, source in stored.values())
    prompts = dict(zip(QUERIES["query_id"], QUERIES["prompt"], strict=True))
    keys = list(stored)
    rows = outputs.filter(pl.col("request_key").is_in(keys)).sort("request_key")
    prompt_ids = [loaded.tokenizer(render_prompt(teacher.prompt, prompts[q], loaded.tokenizer),
                                   add_special_tokens=False)["input_ids"]
                  for q in rows["query_id"]]
    local = forward_topk(loaded.model, prompt_ids, rows["token_ids"].to_list(), 8,
                         pad_id=loaded.tokenizer.pad_token_id)
    for key, mine in zip(rows["request_key"], local, strict=True):
        served = stored[key][0]
        assert served.k == 8 and served.tokens == mine.tokens
        # The server runs the Q4_1 GGUF, the local copy its de-quantized weights: the same
        # model up to rounding. The most likely token agrees, and its log-prob is close.
        agree = float(np.mean(served.ids[:, 0] == mine.ids[:, 0]))
        assert agree >= 0.9, (key, agree)
        same = served.ids[:, 0] == mine.ids[:, 0]
        gap = np.abs(served.logprobs[same, 0].astype(np.float32)
                     - mine.logprobs[same, 0].astype(np.float32))
        assert float(np.median(gap)) < 0.05 and float(gap.max()) < 0.5, (key, gap.max())
    # kd reads them back: what the server gave is reused, the rest is one forward pass.
    summary = ensure_topk(store, teacher, outputs, prompts, 8, device="cpu", dtype="fp32",
                          show_progress=False, same_weights=False)
    assert summary.from_sampling == len(keys) and summary.computed == outputs.height - len(keys)
    assert set(summary.topk) == set(outputs["request_key"])
