"""What a generation is, whichever backend runs it: model, backend, prompt template and sampling.

A `GenerationSpec` is everything that decides a generation's outputs (its backend's own settings
included) plus how many prompts go into one call. Teachers are specs with a name
(generation/config.py); evaluation and the difficulty filter build specs of their own. Backend
modules import this module and the interface (generation/backend.py) only, so declaring a spec
needs no backend and no backend needs the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from distill_dag.configbase import (
    Config,
    ConfigError,
    check_int,
    check_number,
    setting,
    stable_hash,
)


def check_optional_int(name: str, value: object, minimum: int = 1) -> None:
    """None, or an integer >= minimum."""
    if value is not None:
        check_int(name, value, minimum)


# The two load permissions of a config that names a model (a teacher, the student): declared
# with these docs on both, off by default, never part of a fingerprint (they decide whether a
# model may load, not what it generates), and hashed into code versions only when set.
MODEL_ACCESS_SETTINGS = ("trust_remote_code", "allow_pickle_weights")
TRUST_REMOTE_CODE_DOC = (
    "Run the Python code a model folder ships (transformers' and vLLM's trust_remote_code), for "
    "an architecture transformers does not know. That code runs with your permissions: set it "
    "only for a folder you trust. It reaches every load of this model (tokenizer and weights; "
    "a vLLM teacher's engine too, whose vllm.engine_args may not set it) and nothing else.")
ALLOW_PICKLE_WEIGHTS_DOC = (
    "Load this model from pickle weights (*.bin, *.pt, *.pth, *.ckpt) when its folder has no "
    "*.safetensors. Unpickling can run code: set it only for a folder you trust (or convert the "
    "weights to safetensors). Off: such a folder fails to resolve, and every load reads "
    "safetensors only.")


def check_model_access(owner: object) -> None:
    """trust_remote_code and allow_pickle_weights are true or false."""
    for name in MODEL_ACCESS_SETTINGS:
        if not isinstance(getattr(owner, name), bool):
            raise ConfigError(f"{name} must be true or false, got {getattr(owner, name)!r}")


@dataclass
class SamplingConfig(Config):
    """How a model samples. Part of every request key: changing it regenerates."""

    temperature: float = setting(0.8, "Sampling temperature in [0, 5]; 0 means greedy decoding.")
    top_p: float = setting(1.0, "Nucleus sampling mass in (0, 1]; 1.0 disables it.")
    top_k: int = setting(0, "Keep the k most likely tokens; 0 disables it.")
    max_new_tokens: int = setting(64, "Hard cap on completion length (finish_reason 'length' "
                                      "when hit).")
    num_samples: int = setting(2, "k: samples per query (each has its own sample index and "
                                  "key). Raising it generates only the new indices.")
    seed: int = setting(0, "Base seed; each batch's generator is seeded from it and the batch's "
                           "request keys.")
    stop: list[str] = setting(factory=list, doc="The completion ends before the first of these "
                                                "strings.")

    def __post_init__(self) -> None:
        check_number("temperature", self.temperature, 0.0, 5.0)
        check_number("top_p", self.top_p, 0.0, 1.0)
        check_int("top_k", self.top_k, 0)
        check_int("max_new_tokens", self.max_new_tokens)
        check_int("num_samples", self.num_samples)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if self.top_p == 0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise ConfigError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if self.temperature == 0 and self.num_samples > 1:
            raise ConfigError("num_samples > 1 with temperature 0 would repeat one greedy answer")

    def fingerprint(self, length: int = 16) -> str:
        """The sampling part of every request key: `output_settings()` without num_samples, as
        raising k adds sample indices and must not invalidate the existing ones (the same hash
        as before the config mechanism, so stored samples keep their keys)."""
        settings = self.output_settings()
        settings.pop("num_samples")
        return stable_hash(settings, length)


@dataclass
class PromptConfig(Config):
    """How a query becomes model input: chat messages or a plain completion prompt. The rendered
    text goes into every request key."""

    style: str = setting("auto", "chat (the tokenizer's chat template), plain (text), or auto: "
                                 "chat if the tokenizer has a template.")
    system: str | None = setting(None, "System prompt (chat) or preamble (plain); None: none.")
    instruction: str = setting("{prompt}", "User-turn template; {prompt} is the query text, {{ }} "
                                           "literal braces.")
    few_shot: int = setting(0, "Number of worked exemplars from the generator (never corpus "
                               "queries).")
    few_shot_seed: int = setting(1234, "Which generated exemplars.")
    few_shot_levels: list[int] = setting(factory=lambda: [1, 2],
                                         doc="Step counts (1, 2, 3) of the generated exemplars.")
    exemplars: list[dict[str, str]] = setting(factory=list, doc="Explicit exemplars "
                                              "{prompt, answer}, before the generated ones.")
    question_prefix: str = setting("Question: ", "Plain style only: before each question.")
    answer_prefix: str = setting("Answer:", "Plain style only: before each answer.")

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
        check_int("few_shot", self.few_shot, 0)
        for i, ex in enumerate(self.exemplars):
            if not isinstance(ex, dict) or set(ex) != {"prompt", "answer"}:
                raise ConfigError(f"exemplars[{i}] must be a mapping with keys prompt and answer")


@dataclass
class GenerationSpec(Config):
    """One generation: (model, backend, prompt, sampling) and the backend's own settings. Its
    outputs are memoized per request under a namespace (generation/run.py)."""

    # Added after stores existed: hashed into code versions only when set.
    HASHED_WHEN_SET: ClassVar[tuple[str, ...]] = MODEL_ACCESS_SETTINGS

    model: str = setting(doc="Model reference (see distill_dag.models.resolve_model).")
    backend: str = setting("transformers", "Which backend generates (generation/registry.py: "
                                           "transformers, vllm, openai).")
    prompt: PromptConfig = setting(factory=PromptConfig, doc="How a query is rendered.")
    sampling: SamplingConfig = setting(factory=SamplingConfig, doc="How the model samples.")
    batch_size: int = setting(32, "Prompts per backend call (transformers: per generate(); vllm: "
                                  "per engine call, results are stored after each; openai: "
                                  "results per stored chunk).", output=False)
    settings: Config | None = setting(None, "The backend's own settings (its settings class; "
                                            "defaults filled in where it has some).")
    top_logprobs: int = setting(
        0, "Store the model's top-k log-probs of every sampled token (k; 0: none) where the "
        "backend returns them at sampling time (generation/topk.py). Not part of the request "
        "key: the samples are the same either way.", output=False)
    trust_remote_code: bool = setting(False, TRUST_REMOTE_CODE_DOC, output=False)
    allow_pickle_weights: bool = setting(False, ALLOW_PICKLE_WEIGHTS_DOC, output=False)

    def __post_init__(self) -> None:
        check_int("top_logprobs", self.top_logprobs, 0)
        check_model_access(self)
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"model must be a model reference, got {self.model!r}")
        if not isinstance(self.backend, str) or not self.backend:
            raise ConfigError(f"backend must name a backend, got {self.backend!r}")
        check_int("batch_size", self.batch_size)

    @property
    def label(self) -> str:
        """How messages name this generation."""
        return f"{self.backend} backend"
