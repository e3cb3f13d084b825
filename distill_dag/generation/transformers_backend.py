"""Batched sampling with Hugging Face transformers, keeping each token's raw log-probability.

Throughput comes from four things: left padding (every row's next token sits at the last
position), length-sorted batches (little padding), one ``model.generate`` call per batch, and
shared-prefix reuse: the tokens every prompt of a teacher shares (system prompt, few-shot
exemplars) are encoded once into a KV cache that each batch copies, so only each question is
prefilled. Rows are laid out as [prefix | pad | question]; the attention mask hides the pad and
position ids follow the mask, so each row computes what it would alone.

Sampling is seeded per batch (from the batch's request keys and the configured seed): the same
batch samples the same tokens. A request key names what was asked, not bit-exact text: a key
regenerated in a different batch (its stored result lost) may sample a different answer.
Log-probs are recorded by a logits processor that runs before the sampling warpers, so it sees
the raw distribution (temperature 1), which is what provenance compares across models; it keeps
only one step of log-probs alive (batch x vocab), unlike ``output_logits`` which keeps them all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np

from distill_dag.generation.backend import Backend, GenerationRequest, GenerationResult
from distill_dag.generation.decoding import (
    batch_seed,
    eos_token_ids,
    finish_completion,
    tokenize_prompts,
)
from distill_dag.generation.prompts import render_prompt, teacher_style_and_stops
from distill_dag.generation.spec import GenerationSpec
from distill_dag.generation.topk import TopK, tail_logmass
from distill_dag.models import load_model, model_access
from distill_dag.provenance.scoring import LocalScorer

MIN_PREFIX_TOKENS = 16  # below this, copying the cache costs about what it saves


class _RawLogprobRecorder:
    """Logits processor: log-prob of each sampled token under the unwarped distribution, and
    (top_k > 0) that distribution's top k at every step, for logit distillation."""

    def __init__(self, top_k: int = 0) -> None:
        self.top_k = top_k
        self.previous = None  # log_softmax of the last step's raw scores
        self.steps: list = []  # per step: [batch] log-probs of the token chosen at that step
        self.top_values: list = []  # per step: [batch, k] (top_k > 0)
        self.top_ids: list = []
        self.top_array: tuple[np.ndarray, np.ndarray] | None = None  # stacked by finish()

    def __call__(self, input_ids, scores):
        import torch

        if self.previous is not None:
            chosen = input_ids[:, -1:]
            self.steps.append(self.previous.gather(1, chosen).squeeze(1))
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        if self.top_k:
            values, ids = self.previous.topk(self.top_k, dim=-1)
            self.top_values.append(values)
            self.top_ids.append(ids)
        return scores

    def finish(self, sequences):
        """Gather the final step (its token is only known once generate returns)."""
        import torch

        if self.previous is not None:
            self.steps.append(self.previous.gather(1, sequences[:, -1:]).squeeze(1))
            self.previous = None
        if self.top_values:  # once per batch: [batch, steps, k], read row by row in topk()
            self.top_array = (torch.stack(self.top_values, dim=1).cpu().numpy(),
                              torch.stack(self.top_ids, dim=1).cpu().numpy())
        return torch.stack(self.steps, dim=1) if self.steps else None

    def topk(self, row: int, tokens: int) -> TopK | None:
        """Row `row`'s top-k over its first `tokens` steps (None when not recorded)."""
        if self.top_array is None or not tokens:
            return None
        values, ids = self.top_array[0][row, :tokens], self.top_array[1][row, :tokens]
        return TopK(ids.astype(np.int32), values.astype(np.float16), tail_logmass(values))


class TransformersBackend(Backend):
    """A model served in-process by transformers (CPU or CUDA). No settings of its own: device
    and dtype come from the runtime, and neither is part of the request keys."""

    name = "transformers"

    def __init__(self, spec: GenerationSpec, device: str = "auto", dtype: str = "auto",
                 reuse_prefix: bool = True) -> None:
        self.spec = spec
        self.reuse_prefix = reuse_prefix  # False only to measure what prefix reuse buys
        self.loaded = load_model(spec.model, device, dtype, **model_access(spec))
        self.model_fingerprint = self.loaded.fingerprint
        self.style, self.stop = teacher_style_and_stops(spec, self.loaded.tokenizer)

    @property
    def teacher(self) -> GenerationSpec:
        """The spec (a TeacherConfig for a teacher); the name callers have used."""
        return self.spec

    def prepare(self) -> None:
        _ = self.loaded.model  # weights load lazily; load them before the clock starts

    def render(self, query: str) -> str:
        return render_prompt(self.spec.prompt, query, self.loaded.tokenizer)

    def _eos_ids(self) -> set[int]:
        return eos_token_ids(self.loaded.model.generation_config.eos_token_id,
                             self.loaded.tokenizer)

    def scorer(self) -> LocalScorer:
        """Scores text with this teacher's model, in process."""
        return LocalScorer(self.loaded)

    def _generation_config(self):
        """Exactly the configured sampling. A model folder's generation_config.json may carry
        repetition penalties (they would run before the log-prob recorder and bend the "raw"
        log-probs) or a cache_implementation (it conflicts with the reused prefix cache): only
        its end-of-sequence ids are taken from it."""
        from transformers import GenerationConfig

        s = self.spec.sampling
        greedy = s.temperature == 0
        return GenerationConfig(
            do_sample=not greedy,
            temperature=None if greedy else s.temperature,
            top_p=None if greedy else s.top_p,
            top_k=None if greedy else s.top_k,
            max_new_tokens=s.max_new_tokens,
            eos_token_id=sorted(self._eos_ids()),
            pad_token_id=self.loaded.tokenizer.pad_token_id,
            bos_token_id=self.loaded.tokenizer.bos_token_id,
            stop_strings=self.stop or None,
        )

    def _tokenize(self, requests: list[GenerationRequest]) -> dict[str, list[int]]:
        return tokenize_prompts(self.loaded.tokenizer, [r.prompt_text for r in requests],
                                plain=self.style == "plain")

    @staticmethod
    def _common_prefix(token_lists: list[list[int]]) -> int:
        """Length of the token prefix every prompt shares (system prompt and exemplars),
        leaving at least one token of each prompt outside it."""
        first, length = token_lists[0], min(len(t) for t in token_lists) - 1
        for tokens in token_lists[1:]:
            i = 0
            while i < length and tokens[i] == first[i]:
                i += 1
            length = i
        return max(length, 0)

    def _prefix_cache(self, prefix: list[int]):
        """KV cache of the shared prefix, computed once and copied into every batch: a few-shot
        prefix is most of each prompt, and re-encoding it per row dominated generation time."""
        import torch

        with torch.inference_mode():
            out = self.loaded.model(input_ids=torch.tensor([prefix], device=self.loaded.device),
                                    use_cache=True)
        # transformers 5.x renamed the output's past_key_values to cache (the old name warns).
        cache = out.get("cache")  # never out.past_key_values first: that warns
        return cache if cache is not None else out.past_key_values

    def generate(
        self,
        requests: list[GenerationRequest],
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[list[GenerationResult]]:
        import copy

        import torch

        if not requests:
            return
        tokenizer, model = self.loaded.tokenizer, self.loaded.model
        sampling = self.spec.sampling
        generation_config = self._generation_config()
        token_ids = self._tokenize(requests)
        prefix_len = self._common_prefix(list(token_ids.values())) if self.reuse_prefix else 0
        if prefix_len < MIN_PREFIX_TOKENS:
            prefix_len = 0
        prefix = next(iter(token_ids.values()))[:prefix_len]
        cache = self._prefix_cache(prefix) if prefix_len else None
        cache_argument = _cache_argument(model)
        # Longest first: a memory problem shows at once, not after an hour.
        ordered = sorted(requests, key=lambda r: (-len(token_ids[r.prompt_text]), r.key))
        size = self.spec.batch_size
        for begin in range(0, len(ordered), size):
            batch = ordered[begin : begin + size]
            started = time.perf_counter()
            suffixes = [token_ids[r.prompt_text][prefix_len:] for r in batch]
            width = max(len(s) for s in suffixes)
            input_ids = torch.full((len(batch), prefix_len + width), tokenizer.pad_token_id,
                                   dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            input_ids[:, :prefix_len] = torch.tensor(prefix, dtype=torch.long)
            mask[:, :prefix_len] = 1
            for row, suffix in enumerate(suffixes):  # left-pad the part after the prefix
                input_ids[row, prefix_len + width - len(suffix) :] = torch.tensor(suffix)
                mask[row, prefix_len + width - len(suffix) :] = 1
            past = None
            if cache is not None:
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(len(batch))
            torch.manual_seed(batch_seed([r.key for r in batch], sampling.seed))
            recorder = _RawLogprobRecorder(self.spec.top_logprobs)
            with torch.inference_mode():
                output = model.generate(
                    input_ids=input_ids.to(self.loaded.device),
                    attention_mask=mask.to(self.loaded.device),
                    **{cache_argument: past},
                    generation_config=generation_config,
                    logits_processor=[recorder],
                    tokenizer=tokenizer if self.stop else None,
                )
            new_tokens = output[:, input_ids.shape[1] :]
            logprobs = recorder.finish(output)
            elapsed = time.perf_counter() - started
            prompt_lengths = mask.sum(dim=1).tolist()
            results = []
            for i, req in enumerate(batch):
                result = self._result(req, new_tokens[i].tolist(), logprobs[i].tolist(),
                                      prompt_lengths[i], elapsed / len(batch))
                # The kept tokens are the first steps (the completion is cut at its end only);
                # without their char offsets there are no log-probs, and no top-k either.
                if result.token_logprobs:
                    result.topk = recorder.topk(i, len(result.token_ids))
                results.append(result)
            if progress is not None:
                progress(len(batch))
            yield results

    def _result(
        self, req: GenerationRequest, ids: list[int], logprobs: list[float], prompt_tokens: int,
        latency: float,
    ) -> GenerationResult:
        done = finish_completion(self.loaded.tokenizer, ids, logprobs, self._eos_ids(), self.stop)
        return done.result(req, prompt_tokens, latency)


def _cache_argument(model) -> str:
    """The name generate() takes a KV cache under: `cache` since transformers 5.x renamed it
    (passing `past_key_values` warns on every call there), `past_key_values` in the 5.x
    releases before (an environment such as .venv-vllm may resolve one of those)."""
    import inspect

    parameters = inspect.signature(model.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in parameters else "past_key_values"
