"""The generation backend interface: requests and results, request keys, the one backend error
type, and what a backend class declares for the registry (generation/registry.py).

A request is one (rendered prompt, sampling params, sample index) of a spec. Its key hashes all of
that plus the model fingerprint, so a stored result is reused exactly when nothing that could
change it has changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from distill_dag.configbase import Config, stable_hash
from distill_dag.errors import DistillError

if TYPE_CHECKING:
    from distill_dag.generation.topk import TopK
    from distill_dag.provenance.scoring import TextScorer


class BackendError(DistillError):
    """A backend cannot generate or score: a missing install, settings this machine cannot run,
    a server that refuses or stays away. `retryable` says whether a later try may pass (a lost
    endpoint: yes; a bad key, an unknown engine argument: no)."""


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
    token_ids: list[int]  # completion tokens covering `text` (the model's tokenizer)
    token_logprobs: list[float]  # raw model log-prob of each token (temperature 1), or empty
    token_starts: list[int]  # char offset of each token in `text` (for sentence provenance)
    prompt_tokens: int
    completion_tokens: int  # tokens generated, including an end-of-sequence token
    finish_reason: str  # "stop" (eos or stop string) or "length"
    latency_s: float  # this request's share of its batch's wall time
    lead: str = ""  # whitespace stripped from the front of the completion (see provenance)
    # The model's top-k at each of token_ids (generation/topk.py), where the backend returns it
    # at sampling time and the spec asks for it (top_logprobs > 0); else None.
    topk: TopK | None = None


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
    model_fingerprint: str  # what decides the outputs besides prompt and sampling (request keys)

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
        """What scores given text as this model (provenance, for samples generated without
        log-probs or with teacher_logprobs: rescore): the backend's own engine where it can
        score prompts (transformers, vLLM), else a local copy of the model (HTTP servers)."""
        ...


class Backend:
    """Base of every backend class: what the registry reads from it (its name, its settings and
    the teachers[] key they sit under, the GPUs it needs), and no-op lifecycle hooks. A backend
    is built as ``cls(spec, device=..., dtype=...)`` and implements GenerationBackend; its
    errors subclass BackendError."""

    name: ClassVar[str] = ""
    settings_key: ClassVar[str | None] = None  # teachers[].<key> in the config (e.g. "vllm")
    settings_class: ClassVar[type[Config] | None] = None  # its fingerprint says what changes
    #                                                       outputs (setting(output=...))
    settings_required: ClassVar[bool] = False  # False: the defaults fill in when omitted
    # True: the samples come from the spec's model itself (its fingerprint is in the request
    # keys), so a local forward pass of it reproduces their distributions. False (a server):
    # the spec's model is a local copy of what the server runs, trusted to be the same.
    local_weights: ClassVar[bool] = True

    @classmethod
    def gpus(cls, settings: Config | None) -> int:
        """GPUs one step generating or scoring with these settings needs."""
        return 1

    def prepare(self) -> None:
        pass

    def close(self) -> None:
        """Free what the backend holds (a GPU engine) for the steps after this one."""

