"""A teacher behind an OpenAI-compatible HTTP endpoint (vLLM serve, SGLang, llama.cpp, hosted).

One HTTP request per sample, each with its own seed derived from the request key: samples are
reproducible where the server honours seeds, and a crash or a restarted server loses only the
requests in flight (every finished one is stored by the caller batch by batch).

Faults: timeouts, lost connections, 429, 5xx and malformed JSON are retried with exponential
backoff and full jitter (a Retry-After header wins); 401/403/404 and other client errors fail
at once with the server's message, so a bad key or model name never becomes a retry storm.
The API key is read from the environment variable the config names, at request time; it is
never stored on the backend, logged or put in an error message.

Settings: `EndpointConfig` (teachers[].endpoint, required). Only the served model name, the API
and whether log-probs are asked for change the outputs (its fingerprint, in every request key);
the address, concurrency, rate limits, retries and prices do not.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np

from distill_dag.configbase import (
    Config,
    ConfigError,
    check_int,
    check_number,
    setting,
    stable_hash,
)
from distill_dag.generation.backend import (
    Backend,
    BackendError,
    GenerationRequest,
    GenerationResult,
)
from distill_dag.generation.prompts import chat_messages, plain_stop_strings, render_prompt
from distill_dag.generation.spec import GenerationSpec, check_optional_int
from distill_dag.generation.topk import TopK, tail_logmass

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_BACKOFF_S = 60.0
ENDPOINT_APIS = ("chat", "completions")


class EndpointError(BackendError, RuntimeError):
    """The endpoint failed in a way retrying cannot fix (retryable False: a bad key, an unknown
    model), or kept failing past the retries (retryable True: a later step retry may pass)."""


@dataclass
class EndpointConfig(Config):
    """An OpenAI-compatible server: vLLM serve, SGLang, llama.cpp server or a hosted API."""

    base_url: str = setting(doc="e.g. http://127.0.0.1:8000/v1 (the part before "
                                "/chat/completions). Where it runs changes no output.",
                            output=False)
    model: str = setting(doc="The model name the server serves (each request's model field). "
                             "Stored samples are keyed by it: serve different weights under a "
                             "new name, or they are reused as they are.")
    api: str = setting("chat", "chat: /chat/completions, the server applies its chat template; "
                               "completions: /completions with the prompt rendered here (a plain "
                               "prompt, or the chat template of the teacher's local model).")
    api_key_env: str | None = setting(None, "The NAME of the environment variable holding the "
                                            "API key (never the key itself); None sends no "
                                            "Authorization header (local servers).", output=False)
    max_concurrency: int = setting(8, "Requests in flight at once.", output=False)
    requests_per_minute: int | None = setting(None, "Client-side rate limit; None: none.",
                                              output=False)
    tokens_per_minute: int | None = setting(None, "Prompt + completion tokens per minute; None: "
                                                  "none.", output=False)
    timeout_s: float = setting(120.0, "Per request, in seconds (> 0).", output=False)
    max_retries: int = setting(5, "Retries on timeouts, lost connections, 429, 5xx and malformed "
                                  "responses.", output=False)
    backoff_s: float = setting(1.0, "First retry wait in seconds (doubled each retry, full "
                                    "jitter; a Retry-After header wins).", output=False)
    logprobs: bool = setting(True, "Ask for per-token log-probs (provenance scores the teacher "
                                   "locally where a server returns none).")
    price_per_million_input: float = setting(0.0, "Price per million prompt tokens, for the cost "
                                                  "figure in the metadata.", output=False)
    price_per_million_output: float = setting(0.0, "Price per million completion tokens.",
                                              output=False)

    def __post_init__(self) -> None:
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://",
                                                                              "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got "
                              f"{self.base_url!r}")
        if "@" in self.base_url.split("//", 1)[1].split("/", 1)[0]:
            raise ConfigError("base_url must not carry credentials; put the key in the "
                              "environment variable named by api_key_env")
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError("model must name the model the server serves")
        if self.api not in ENDPOINT_APIS:
            raise ConfigError(f"api must be one of {ENDPOINT_APIS}, got {self.api!r}")
        if self.api_key_env is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$",
                                                         str(self.api_key_env)):
            raise ConfigError(f"api_key_env must be an environment variable name, got "
                              f"{self.api_key_env!r} (never put the key itself in the config)")
        check_int("max_concurrency", self.max_concurrency)
        check_int("max_retries", self.max_retries, 0)
        check_optional_int("requests_per_minute", self.requests_per_minute)
        check_optional_int("tokens_per_minute", self.tokens_per_minute)
        for name in ("timeout_s", "backoff_s", "price_per_million_input",
                     "price_per_million_output"):
            check_number(name, getattr(self, name), 0.0)
        if self.timeout_s == 0:
            raise ConfigError("timeout_s must be > 0")


@dataclass
class EndpointUsage:
    """What the endpoint was asked for and billed, for the asset metadata."""

    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, prompt_tokens: int, completion_tokens: int, price_in: float,
            price_out: float) -> None:
        with self.lock:
            self.requests += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.cost += (prompt_tokens * price_in + completion_tokens * price_out) / 1e6


class RateLimiter:
    """Requests and tokens per minute, as two token buckets refilled continuously."""

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rpm, self.tpm = requests_per_minute, tokens_per_minute
        self.requests = float(requests_per_minute or 0)
        self.tokens = float(tokens_per_minute or 0)
        self.clock, self.sleep = clock, sleep
        self.updated = clock()
        self.lock = threading.Lock()

    def acquire(self, tokens: int) -> None:
        """Block until one request of about `tokens` tokens fits in both budgets."""
        if not self.rpm and not self.tpm:
            return
        if self.tpm:
            tokens = min(tokens, self.tpm)  # a request larger than a minute's budget still runs
        while True:
            with self.lock:
                now = self.clock()
                minutes = (now - self.updated) / 60.0
                self.updated = now
                if self.rpm:
                    self.requests = min(self.rpm, self.requests + minutes * self.rpm)
                if self.tpm:
                    self.tokens = min(self.tpm, self.tokens + minutes * self.tpm)
                need_r = 0.0 if not self.rpm else max(0.0, 1 - self.requests) / self.rpm
                need_t = 0.0 if not self.tpm else max(0.0, tokens - self.tokens) / self.tpm
                wait_s = 60.0 * max(need_r, need_t)
                if wait_s == 0:
                    if self.rpm:
                        self.requests -= 1
                    if self.tpm:
                        self.tokens -= tokens
                    return
            self.sleep(min(wait_s, 1.0))


def _redacted(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


class OpenAIBackend(Backend):
    """Generation through /chat/completions or /completions of an OpenAI-compatible server.
    The spec's `model` names a local copy of the served model (or its tokenizer): the
    completions API's chat template, and scoring where the server returns no log-probs."""

    name = "openai"
    settings_key = "endpoint"
    local_weights = False
    settings_class = EndpointConfig
    settings_required = True

    def __init__(self, spec: GenerationSpec, sleep: Callable[[float], None] = time.sleep,
                 device: str = "auto", dtype: str = "auto") -> None:
        if not isinstance(spec.settings, EndpointConfig):
            raise ConfigError(f"{spec.label}: backend 'openai' needs an endpoint "
                              "{base_url, model, ...}")
        self.spec = spec
        self.device, self.dtype = device, dtype  # of the local copy, should it score
        self.endpoint = spec.settings
        self.base_url = self.endpoint.base_url.rstrip("/")
        self.model_fingerprint = f"openai-{self.endpoint.fingerprint()}"
        self.usage = EndpointUsage()
        self.limiter = RateLimiter(self.endpoint.requests_per_minute,
                                   self.endpoint.tokens_per_minute, sleep=sleep)
        self._sleep = sleep
        self._local = threading.local()
        self._tokenizer = None
        self._token_pieces = None
        self._pieces_lock = threading.Lock()
        self.stop = list(spec.sampling.stop)
        if self.endpoint.api == "completions" and spec.prompt.style == "plain":
            self.stop += [s for s in plain_stop_strings(spec.prompt) if s not in self.stop]

    @property
    def teacher(self) -> GenerationSpec:
        """The spec (a TeacherConfig for a teacher); the name callers have used."""
        return self.spec

    # -- prompts ---------------------------------------------------------------------------------
    def render(self, query: str) -> str:
        """The request's prompt as text: the JSON of the chat messages for the chat API (the
        server renders them), else the prompt rendered here."""
        if self.endpoint.api == "chat":
            return json.dumps(chat_messages(self.spec.prompt, query), ensure_ascii=False)
        if self.spec.prompt.style == "plain":
            return render_prompt(self.spec.prompt, query, tokenizer=None)
        return render_prompt(self.spec.prompt, query, self._local_tokenizer())

    def _local_tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from distill_dag.models import model_access, resolve_model, tokenizer_kwargs

            access = model_access(self.spec)
            self._tokenizer = AutoTokenizer.from_pretrained(
                resolve_model(self.spec.model,
                              allow_pickle_weights=access["allow_pickle_weights"]).hf_dir,
                **tokenizer_kwargs(access["trust_remote_code"]))
        return self._tokenizer

    def scorer(self):
        """The local copy of the model (`teachers[].model`): OpenAI-compatible servers have no
        reliable way to score given text (llama.cpp's echoed prompt log-probs are wrong,
        DESIGN.md section 5), so provenance scores such a teacher locally."""
        from distill_dag.models import load_model, model_access
        from distill_dag.provenance.scoring import LocalScorer

        return LocalScorer(load_model(self.spec.model, self.device, self.dtype,
                                      **model_access(self.spec)))

    # -- HTTP ------------------------------------------------------------------------------------
    def _session(self):
        import requests

        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _headers(self) -> tuple[dict[str, str], str | None]:
        name = self.endpoint.api_key_env
        if not name:
            return {}, None
        key = (os.environ.get(name) or "").strip()  # a secret mounted from a file ends in \n
        if not key:
            raise EndpointError(f"{self.spec.label}: the API key variable ${name} "
                                "(endpoint.api_key_env) is not set")
        return {"Authorization": f"Bearer {key}"}, key

    def _call(self, method: str, path: str, body: dict | None = None, tokens: int = 0) -> dict:
        """One API call with retries; returns the parsed JSON or raises EndpointError. Every
        attempt counts against the rate limits (`tokens`: the request's estimated size)."""
        import requests

        url = f"{self.base_url}{path}"
        where = f"{self.spec.label}: {method} {url}"
        attempt = 0
        while True:
            headers, secret = self._headers()
            problem, retry_after = None, None
            if tokens:
                self.limiter.acquire(tokens)
            try:
                response = self._session().request(method, url, json=body, headers=headers,
                                                   timeout=self.endpoint.timeout_s)
            except requests.Timeout:
                problem = f"no answer within {self.endpoint.timeout_s:g} s"
            except requests.ConnectionError as exc:
                problem = f"cannot connect ({type(exc).__name__}); is the server running?"
            except requests.RequestException as exc:
                # Only the type: some messages quote the request headers (the key).
                problem = f"request failed ({type(exc).__name__})"
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        problem = f"malformed JSON in the response: {response.text[:200]!r}"
                elif response.status_code in RETRY_STATUS:
                    problem = f"HTTP {response.status_code}: {response.text[:200]}"
                    retry_after = response.headers.get("Retry-After")
                else:
                    hint = {401: "check the key in $" + str(self.endpoint.api_key_env),
                            403: "the key is not allowed to use this model",
                            404: f"is endpoint.model {self.endpoint.model!r} served here, and "
                                 "does base_url end in /v1?"}.get(response.status_code, "")
                    raise EndpointError(_redacted(
                        f"{where}: HTTP {response.status_code}: {response.text[:300]}"
                        + (f" ({hint})" if hint else ""), secret))
            if attempt >= self.endpoint.max_retries:
                raise EndpointError(_redacted(
                    f"{where}: {problem} (gave up after {attempt} retries)", secret),
                    retryable=True)
            attempt += 1
            with self.usage.lock:
                self.usage.retries += 1
            self._sleep(self._backoff(attempt, retry_after))

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return max(0.0, min(float(retry_after), MAX_BACKOFF_S))
            except ValueError:
                pass
        cap = min(MAX_BACKOFF_S, self.endpoint.backoff_s * 2 ** (attempt - 1))
        return random.uniform(0, cap)  # full jitter: many clients do not retry in lockstep

    def prepare(self) -> None:
        """Check the server answers and serves the model, before any generation is timed."""
        try:
            listed = self._call("GET", "/models")
        except EndpointError as exc:
            if "HTTP 404" in str(exc):  # a server without /models: the first request will tell
                return
            raise
        names = [m.get("id") for m in listed.get("data", []) if isinstance(m, dict)]
        if names and self.endpoint.model not in names:
            raise EndpointError(f"{self.spec.label}: {self.base_url} does not serve "
                                f"model {self.endpoint.model!r} (endpoint.model); it serves "
                                f"{names[:10]}")

    # -- generation ------------------------------------------------------------------------------
    def _body(self, request: GenerationRequest) -> dict:
        s = self.spec.sampling
        body: dict = {"model": self.endpoint.model, "max_tokens": s.max_new_tokens,
                      "temperature": s.temperature, "top_p": s.top_p, "n": 1,
                      "seed": int(stable_hash({"seed": s.seed, "key": request.key}), 16) % 2**31}
        if s.top_k:
            body["top_k"] = s.top_k  # vLLM, SGLang and llama.cpp accept it; OpenAI ignores it
        if self.stop:
            body["stop"] = self.stop
        if self.endpoint.api == "chat":
            body["messages"] = json.loads(request.prompt_text)
            if self.endpoint.logprobs:
                body["logprobs"] = True
                # At least 1: llama.cpp's server returns no log-probs without it.
                body["top_logprobs"] = max(1, self.spec.top_logprobs)
        else:
            body["prompt"] = request.prompt_text
            if self.endpoint.logprobs:
                body["logprobs"] = max(1, self.spec.top_logprobs)
        return body

    def _one(self, request: GenerationRequest) -> GenerationResult:
        body = self._body(request)
        started = time.perf_counter()
        path = "/chat/completions" if self.endpoint.api == "chat" else "/completions"
        data = self._call("POST", path, body,
                          tokens=len(request.prompt_text) // 4 + body["max_tokens"])
        try:
            choice = data["choices"][0]
            if self.endpoint.api == "chat":
                text = choice["message"]["content"] or ""
                spelled, starts, logprobs = _chat_logprobs(choice.get("logprobs"))
            else:
                text = choice["text"]
                spelled, starts, logprobs = _completion_logprobs(choice.get("logprobs"))
            usage = data.get("usage") or {}
        except (KeyError, IndexError, TypeError) as exc:
            raise EndpointError(f"{self.spec.label}: unexpected response shape "
                                f"({exc!r}): {json.dumps(data)[:300]}") from exc
        n_tokens = len(starts)
        if starts and not (spelled.startswith(text) or text.startswith(spelled)):
            logprobs, starts = [], []  # the tokens do not spell the text: keep text, drop them
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or n_tokens)
        self.usage.add(prompt_tokens, completion_tokens, self.endpoint.price_per_million_input,
                       self.endpoint.price_per_million_output)
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        # As in the transformers backend: the stored response has no leading whitespace (the
        # record a student trains on has none); it is kept in `lead` for scoring.
        lead = text[: len(text) - len(text.lstrip())]
        text = text.strip()
        starts = [max(0, st - len(lead)) for st in starts]
        # Tokens past the stripped text (trailing whitespace, a stop string the server cut)
        # belong to no sentence.
        keep = [i for i, st in enumerate(starts) if st < len(text)]
        logprobs, starts = [logprobs[i] for i in keep], [starts[i] for i in keep]
        token_ids, topk = self._identified(choice.get("logprobs"), keep) if logprobs else ([],
                                                                                          None)
        return GenerationResult(
            key=request.key, query_id=request.query_id, sample_index=request.sample_index,
            text=text, token_ids=token_ids, token_logprobs=logprobs, token_starts=starts,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
            finish_reason=finish, latency_s=time.perf_counter() - started, lead=lead,
            topk=topk)

    def _pieces(self):
        if self._token_pieces is None:
            from distill_dag.generation.token_pieces import TokenPieces

            with self._pieces_lock:  # the request threads share one table
                if self._token_pieces is None:
                    self._token_pieces = TokenPieces(self._local_tokenizer())
        return self._token_pieces

    def _identified(self, logprobs: dict | None, keep: list[int]) -> tuple[list[int], TopK | None]:
        """The kept tokens' ids and their top-k, named by the local copy's tokenizer: ([], None)
        unless the spec asks for top-k; the ids without a top-k when a candidate names no one id
        (an end-of-sequence printed as "") or the server returned fewer than k; nothing when a
        sampled token names none. The forward pass fills in what is missing (topk.ensure_topk)."""
        k = self.spec.top_logprobs
        if not k:
            return [], None
        sampled, candidates = _top_pieces(logprobs, self.endpoint.api)
        pieces = self._pieces()
        named_ids = [pieces.id_of(*sampled[i]) for i in keep]
        if any(i is None for i in named_ids):
            return [], None
        ids = [int(i) for i in named_ids if i is not None]
        rows = []
        for i in keep:
            named = sorted(((pieces.id_of(text, raw), lp) for text, raw, lp in candidates[i]),
                           key=lambda c: -c[1])[:k]
            if len(named) < k or any(c[0] is None for c in named) \
                    or len({c[0] for c in named}) < k:
                return ids, None
            rows.append(named)
        top_ids = np.array([[c[0] for c in row] for row in rows], dtype=np.int32)
        values = np.array([[c[1] for c in row] for row in rows], dtype=np.float32)
        return ids, TopK(top_ids, values.astype(np.float16), tail_logmass(values))

    def generate(self, requests: list[GenerationRequest],
                 progress: Callable[[int], None] | None = None
                 ) -> Iterator[list[GenerationResult]]:
        """Run up to max_concurrency requests at once; yield finished results in groups of
        `batch_size`. On a failure, the finished results are yielded first, then it raises."""
        batch: list[GenerationResult] = []
        pending = list(reversed(requests))
        failure: BaseException | None = None
        with ThreadPoolExecutor(max_workers=self.endpoint.max_concurrency) as pool:
            running: set[Future] = set()
            while pending or running:
                while pending and failure is None and len(running) < self.endpoint.max_concurrency:
                    running.add(pool.submit(self._one, pending.pop()))
                if not running:
                    break
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        batch.append(future.result())
                        if progress:
                            progress(1)
                    except BaseException as exc:
                        failure = failure or exc
                if len(batch) >= self.spec.batch_size or (failure and batch):
                    yield batch
                    batch = []
                if failure is not None:
                    pending.clear()  # let the requests in flight finish, start no new ones
        if batch:
            yield batch
        if failure is not None:
            raise failure


def _chat_logprobs(logprobs: dict | None) -> tuple[str, list[int], list[float]]:
    """(the text the tokens spell, each token's char offset, log-probs). Byte-level tokens are
    joined before decoding: a character split over two tokens starts at the first one."""
    content = (logprobs or {}).get("content") or []
    if content and all(c.get("bytes") is not None for c in content):
        joined, starts = b"", []
        for c in content:
            starts.append(len(joined.decode("utf-8", errors="ignore")))
            joined += bytes(c["bytes"])
        spelled = joined.decode("utf-8", errors="replace")
    else:
        spelled, starts = "", []
        for c in content:
            starts.append(len(spelled))
            spelled += c["token"]
    return spelled, starts, [float(c["logprob"]) for c in content]


def _top_pieces(logprobs: dict | None, api: str
                ) -> tuple[list[tuple[str, list[int] | None]],
                           list[list[tuple[str, list[int] | None, float]]]]:
    """(each sampled token's (text, bytes or None), each token's top candidates (text, bytes or
    None, log-prob)). The completions API gives candidates as a dict from text to log-prob."""
    if api == "chat":
        content = (logprobs or {}).get("content") or []
        return ([(c["token"], c.get("bytes")) for c in content],
                [[(t["token"], t.get("bytes"), float(t["logprob"]))
                  for t in c.get("top_logprobs") or []] for c in content])
    tokens = list((logprobs or {}).get("tokens") or [])
    tops = list((logprobs or {}).get("top_logprobs") or [])
    tops += [None] * (len(tokens) - len(tops))
    return ([(t, None) for t in tokens],
            [[(text, None, float(lp)) for text, lp in (top or {}).items()] for top in tops])


def _completion_logprobs(logprobs: dict | None) -> tuple[str, list[int], list[float]]:
    tokens = list((logprobs or {}).get("tokens") or [])
    values = [float(v) if v is not None else 0.0
              for v in (logprobs or {}).get("token_logprobs") or []]
    starts, position = [], 0
    for token in tokens:
        starts.append(position)
        position += len(token)
    return "".join(tokens), starts, values
