"""The generation backend interface, request keys, and the backend registry.

A request is one (teacher, rendered prompt, sampling params, sample index). Its key hashes all of
that plus the model fingerprint, so a stored result is reused exactly when nothing that could
change it has changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from distill_dag.configbase import ConfigError, stable_hash
from distill_dag.generation.config import KNOWN_BACKENDS, TeacherConfig

if TYPE_CHECKING:
    from distill_dag.provenance.scoring import TextScorer


@dataclass(frozen=True)
class GenerationRequest:
    key: str  # request key (see request_key)
    query_id: str
    sample_index: int
    prompt_text: str  # the fully rendered prompt


@dataclass
class GenerationResult:
    key: str
    query_id: str
    sample_index: int
    text: str  # completion, cut before any stop string, without special tokens
    token_ids: list[int]  # completion tokens covering `text` (the teacher's tokenizer)
    token_logprobs: list[float]  # raw model log-prob of each token (temperature 1), or empty
    token_starts: list[int]  # char offset of each token in `text` (for sentence provenance)
    prompt_tokens: int
    completion_tokens: int  # tokens generated, including an end-of-sequence token
    finish_reason: str  # "stop" (eos or stop string) or "length"
    latency_s: float  # this request's share of its batch's wall time
    lead: str = ""  # whitespace stripped from the front of the completion (see provenance)


def request_key(
    model_fingerprint: str, backend: str, prompt_text: str, sampling_fp: str, sample_index: int
) -> str:
    return stable_hash(
        {"model": model_fingerprint, "backend": backend, "prompt": prompt_text,
         "sampling": sampling_fp, "sample": sample_index},
        length=32,
    )


class GenerationBackend(Protocol):
    """What the core needs from a backend: prompts rendered its way, k samples with log-probs."""

    name: str
    model_fingerprint: str

    def render(self, query: str) -> str: ...

    def prepare(self) -> None:
        """Load weights or open connections now, so generation timings exclude it."""
        ...

    def generate(
        self,
        requests: list[GenerationRequest],
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[list[GenerationResult]]:
        """Yield results batch by batch, so the caller can store each batch as it completes."""
        ...

    def scorer(self) -> TextScorer:
        """What scores given text as this teacher (provenance, for samples generated without
        log-probs or with teacher_logprobs: rescore): the backend's own engine where it can
        score prompts (transformers, vLLM), else a local copy of the model (HTTP servers)."""
        ...


def make_backend(
    teacher: TeacherConfig, device: str = "auto", dtype: str = "auto"
) -> GenerationBackend:
    if teacher.backend == "transformers":
        from distill_dag.generation.transformers_backend import TransformersBackend

        return TransformersBackend(teacher, device=device, dtype=dtype)
    if teacher.backend == "vllm":
        from distill_dag.generation.vllm_backend import VLLMBackend

        return VLLMBackend(teacher)
    if teacher.backend == "openai":
        from distill_dag.generation.openai_backend import OpenAIBackend

        return OpenAIBackend(teacher, device=device, dtype=dtype)
    raise ConfigError(  # config validation normally catches this first
        f"unknown backend {teacher.backend!r}; known backends: {', '.join(KNOWN_BACKENDS)}"
    )


def eos_token_ids(configured: int | list[int] | None, tokenizer) -> set[int]:
    """End-of-sequence ids: the list a model's generation config gives (e.g. <|im_end|> and
    <|endoftext|>), else its single id and the tokenizer's."""
    eos = configured if isinstance(configured, list) else [configured, tokenizer.eos_token_id]
    return {int(e) for e in eos if e is not None}


def tokenize_prompts(tokenizer, texts: list[str], plain: bool) -> dict[str, list[int]]:
    """Token ids of each distinct rendered prompt. Chat templates already contain the BOS
    token; plain prompts need the tokenizer's special tokens."""
    unique = list(dict.fromkeys(texts))
    ids = tokenizer(unique, add_special_tokens=plain)["input_ids"]
    return {text: list(row) for text, row in zip(unique, ids, strict=True)}


def batch_seed(keys: list[str], seed: int) -> int:
    """The sampling seed of a group of requests: the same missing set samples the same text."""
    material = "|".join(keys) + f"|{seed}"
    return int(hashlib.sha256(material.encode()).hexdigest()[:8], 16)


def token_char_starts(tokenizer, token_ids: list[int], text: str) -> list[int] | None:
    """Char offset in `text` where each token starts, or None if it cannot be established.

    Fast path: re-tokenize `text` with offsets; when that reproduces the generated ids the
    offsets are exact. Otherwise decode growing prefixes (quadratic, but only on the rare
    non-canonical tokenization).
    """
    if not token_ids:
        return []
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(encoded["input_ids"]) == list(token_ids):
        return [start for start, _ in encoded["offset_mapping"]]
    starts, previous = [], ""
    for i in range(len(token_ids)):
        starts.append(len(previous))
        previous = tokenizer.decode(token_ids[: i + 1], skip_special_tokens=True)
        if not text.startswith(previous.rstrip("\ufffd")):
            return None
    return starts
