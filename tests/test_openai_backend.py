"""The OpenAI-compatible HTTP backend against a real local HTTP server with injected faults:
log-probs and offsets, usage and cost, retries with backoff on 429 / 500 / malformed JSON /
timeouts, no retry on 401 / 404, the key never in a message, finished work kept on failure
and a rerun that resumes after a dead server comes back."""

from __future__ import annotations

import polars as pl
import pytest

from distill_dag.configbase import ConfigError
from distill_dag.generation.config import TeacherConfig
from distill_dag.generation.openai_backend import EndpointError, OpenAIBackend
from distill_dag.generation.run import build_requests, generate_teacher_outputs
from distill_dag.store import Store
from tests.openai_fault_server import TOKENS, FaultServer

SECRET = "sk-test-do-not-log-0123456789"


def _teacher(url: str, **endpoint) -> TeacherConfig:
    return TeacherConfig.from_dict({
        "name": "remote", "model": "pkg:smollm2-135m-instruct", "backend": "openai",
        "prompt": {"style": "chat", "system": "Solve it."},
        "sampling": {"temperature": 0.7, "max_new_tokens": 16, "num_samples": 2},
        "batch_size": 2,
        "endpoint": {"base_url": url, "model": "fault-model", "api_key_env": "TEST_KEY",
                     "max_retries": 3, "backoff_s": 0.5, "price_per_million_input": 2.0,
                     "price_per_million_output": 8.0, **endpoint}}, "teachers[0]")


def _queries(n: int) -> pl.DataFrame:
    return pl.DataFrame({"query_id": [f"q{i}" for i in range(n)],
                         "prompt": [f"What is {i} + 1?" for i in range(n)]})


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("TEST_KEY", SECRET)
    with FaultServer() as srv:
        yield srv


def _backend(teacher: TeacherConfig, sleeps: list[float]) -> OpenAIBackend:
    return OpenAIBackend(teacher, sleep=sleeps.append)


def test_samples_carry_logprobs_offsets_usage_and_cost(server):
    sleeps: list[float] = []
    backend = _backend(_teacher(server.base_url), sleeps)
    backend.prepare()
    requests = build_requests(backend, backend.teacher, _queries(3))
    results = [r for batch in backend.generate(requests) for r in batch]
    assert len(results) == 6 and sleeps == []
    first = results[0]
    assert first.text == "".join(TOKENS) and first.finish_reason == "stop"
    assert first.token_logprobs == [-0.25] * len(TOKENS)
    assert first.token_starts == [0, 3, 10, 13, 15]
    assert backend.usage.requests == 6 and backend.usage.completion_tokens == 6 * len(TOKENS)
    assert backend.usage.cost == pytest.approx((6 * 20 * 2.0 + 6 * 5 * 8.0) / 1e6)
    bodies = [r["body"] for r in server.requests]
    assert len({b["seed"] for b in bodies}) == 6  # one seed per sample
    assert bodies[0]["messages"][0] == {"role": "system", "content": "Solve it."}
    assert bodies[0]["logprobs"] is True and bodies[0]["max_tokens"] == 16
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"


def test_429_backs_off_as_told_and_500_and_malformed_json_are_retried(server):
    server.faults = [("status", 429, {"Retry-After": "2"}), ("status", 500), ("malformed",)]
    sleeps: list[float] = []
    backend = _backend(_teacher(server.base_url, max_concurrency=1), sleeps)
    requests = build_requests(backend, backend.teacher, _queries(1))[:1]
    [[result]] = list(backend.generate(requests))
    assert result.text == "".join(TOKENS)
    assert backend.usage.retries == 3 and sleeps[0] == 2.0  # Retry-After wins
    # Jittered: retry n waits at most backoff_s * 2**(n-1).
    assert 0 <= sleeps[1] <= 1.0 and 0 <= sleeps[2] <= 2.0


def test_401_fails_at_once_without_retries_and_never_shows_the_key(server):
    server.faults = [("status", 401)] * 10
    backend = _backend(_teacher(server.base_url, max_concurrency=1), [])
    requests = build_requests(backend, backend.teacher, _queries(1))[:1]
    with pytest.raises(EndpointError) as info:
        list(backend.generate(requests))
    assert not info.value.retryable and len(server.requests) == 1  # no retry storm
    assert "HTTP 401" in str(info.value) and "$TEST_KEY" in str(info.value)
    assert SECRET not in str(info.value)


def test_wrong_model_name_is_named_with_what_the_server_serves(server):
    backend = _backend(_teacher(server.base_url, model="no-such-model"), [])
    with pytest.raises(EndpointError, match=r"does not serve model 'no-such-model'.*fault-model"):
        backend.prepare()


def test_unreachable_endpoint_and_missing_key_fail_clearly(server, monkeypatch):
    sleeps: list[float] = []
    backend = _backend(_teacher("http://127.0.0.1:9/v1", max_retries=2), sleeps)
    with pytest.raises(EndpointError, match=r"cannot connect.*gave up after 2 retries") as info:
        backend.prepare()
    assert info.value.retryable and len(sleeps) == 2
    monkeypatch.delenv("TEST_KEY")
    with pytest.raises(EndpointError, match=r"\$TEST_KEY \(endpoint.api_key_env\) is not set"):
        _backend(_teacher(server.base_url), []).prepare()


def test_timeouts_are_retried(server):
    server.faults = [("slow", 1.5)]
    sleeps: list[float] = []
    backend = _backend(_teacher(server.base_url, timeout_s=0.5, max_concurrency=1), sleeps)
    requests = build_requests(backend, backend.teacher, _queries(1))[:1]
    [[result]] = list(backend.generate(requests))
    assert result.text and backend.usage.retries == 1


def test_failure_keeps_finished_samples_and_a_rerun_resumes(server, tmp_path):
    store = Store(tmp_path)
    teacher = _teacher(server.base_url, max_concurrency=1, max_retries=1)
    queries = _queries(3)  # 6 requests; the 5th keeps failing
    server.faults = [None, None, None, None, ("status", 503), ("status", 503)]
    with pytest.raises(EndpointError, match=r"HTTP 503.*gave up after 1 retries"):
        generate_teacher_outputs(teacher, queries, store,
                                 backend=_backend(teacher, []), show_progress=False)
    kept = store.read_chunks("generations", "remote", key="request_key")
    assert kept.height == 4  # finished work is stored
    summary = generate_teacher_outputs(teacher, queries, store, backend=_backend(teacher, []),
                                       show_progress=False)
    assert summary.generated == 2 and summary.outputs.height == 6
    assert summary.endpoint_usage["requests"] == 2


def test_endpoint_config_is_validated():
    for bad, message in [({"base_url": "localhost:8000"}, "base_url must start"),
                         ({"base_url": "http://u:pw@h/v1"}, "must not carry credentials"),
                         ({"api_key_env": "sk-live-123"}, "environment variable name"),
                         ({"api": "responses"}, "api must be one of"),
                         ({"max_concurrency": 0}, "max_concurrency")]:
        with pytest.raises(ConfigError, match=message):
            _teacher("http://127.0.0.1:1/v1", **bad)
    with pytest.raises(ConfigError, match="needs an endpoint"):
        TeacherConfig.from_dict({"name": "x", "model": "m", "backend": "openai"}, "teachers[0]")


class _Clock:
    """A clock that only moves when the limiter sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_rate_limiter_holds_requests_and_tokens_per_minute():
    from distill_dag.generation.openai_backend import RateLimiter

    clock = _Clock()
    limiter = RateLimiter(requests_per_minute=60, tokens_per_minute=None, clock=clock,
                          sleep=clock.sleep)
    for _ in range(60):  # a full bucket: one minute's requests at once
        limiter.acquire(10)
    assert clock.now == 0.0
    for _ in range(30):
        limiter.acquire(10)
    assert clock.now == pytest.approx(30.0, abs=1.0)  # then one per second

    clock = _Clock()
    limiter = RateLimiter(None, tokens_per_minute=1000, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        limiter.acquire(100)  # exactly one minute's tokens
    limiter.acquire(500)
    assert clock.now == pytest.approx(30.0, abs=1.0)  # 500 tokens = half a minute more


def test_a_character_split_across_byte_tokens_keeps_the_logprobs():
    from distill_dag.generation.openai_backend import _chat_logprobs

    text = "x ≤ 3"
    raw = text.encode()
    pieces = [raw[:2], raw[2:4], raw[4:]]  # "≤" is 3 bytes, split over two tokens
    spelled, starts, logprobs = _chat_logprobs({"content": [
        {"token": "?", "logprob": -0.5, "bytes": list(p)} for p in pieces]})
    # The third token begins inside "≤": it starts where that character starts.
    assert spelled == text and starts == [0, 2, 2] and logprobs == [-0.5] * 3


@pytest.mark.parametrize("model", ["pkg:smollm2-135m-instruct", "pkg:gemma3-270m"])
def test_token_pieces_name_the_id_that_spells_them(model):
    """A server names tokens by text or bytes; the local tokenizer's table turns them back into
    ids, for a byte-level (SmolLM2) and a SentencePiece (Gemma 3) vocabulary alike, and names
    no id for a piece two ids spell."""
    from distill_dag.generation.token_pieces import TokenPieces
    from distill_dag.models import load_model

    tokenizer = load_model(model, "cpu").tokenizer
    pieces = TokenPieces(tokenizer)
    text = "Ana has 3 apples.\nShe buys 12 more: 3 + 12 = 15. The answer is 15."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for i in ids:
        piece = tokenizer.decode([i])
        assert pieces.id_of(piece) == i, (piece, i)
        assert pieces.id_of(piece, list(piece.encode())) == i
    assert pieces.id_of("") is None  # special tokens and broken characters print as ""
    assert pieces.id_of("no such piece \u2603\u2603") is None
