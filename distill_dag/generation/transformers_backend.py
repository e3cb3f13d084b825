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
from dataclasses import dataclass

from distill_dag.generation.backend import (
    GenerationRequest,
    GenerationResult,
    batch_seed,
    eos_token_ids,
    token_char_starts,
    tokenize_prompts,
)
from distill_dag.generation.config import TeacherConfig
from distill_dag.generation.prompts import render_prompt, teacher_style_and_stops
from distill_dag.models import load_model
from distill_dag.provenance.scoring import LocalScorer

MIN_PREFIX_TOKENS = 16  # below this, copying the cache costs about what it saves


class _RawLogprobRecorder:
    """Logits processor: log-prob of each sampled token under the unwarped distribution."""

    def __init__(self) -> None:
        self.previous = None  # log_softmax of the last step's raw scores
        self.steps: list = []  # per step: [batch] log-probs of the token chosen at that step

    def __call__(self, input_ids, scores):
        import torch

        if self.previous is not None:
            chosen = input_ids[:, -1:]
            self.steps.append(self.previous.gather(1, chosen).squeeze(1))
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, sequences):
        """Gather the final step (its token is only known once generate returns)."""
        import torch

        if self.previous is not None:
            self.steps.append(self.previous.gather(1, sequences[:, -1:]).squeeze(1))
            self.previous = None
        return torch.stack(self.steps, dim=1) if self.steps else None


class TransformersBackend:
    """A teacher served in-process by transformers (CPU or CUDA)."""

    name = "transformers"

    def __init__(self, teacher: TeacherConfig, device: str = "auto", dtype: str = "auto",
                 reuse_prefix: bool = True) -> None:
        self.teacher = teacher
        self.reuse_prefix = reuse_prefix  # False only to measure what prefix reuse buys
        self.loaded = load_model(teacher.model, device, dtype)
        self.model_fingerprint = self.loaded.fingerprint
        self.style, self.stop = teacher_style_and_stops(teacher, self.loaded.tokenizer)

    def prepare(self) -> None:
        _ = self.loaded.model  # weights load lazily; load them before the clock starts

    def render(self, query: str) -> str:
        return render_prompt(self.teacher.prompt, query, self.loaded.tokenizer)

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

        s = self.teacher.sampling
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
        return out.past_key_values

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
        sampling = self.teacher.sampling
        generation_config = self._generation_config()
        token_ids = self._tokenize(requests)
        prefix_len = self._common_prefix(list(token_ids.values())) if self.reuse_prefix else 0
        if prefix_len < MIN_PREFIX_TOKENS:
            prefix_len = 0
        prefix = next(iter(token_ids.values()))[:prefix_len]
        cache = self._prefix_cache(prefix) if prefix_len else None
        # Longest first: a memory problem shows at once, not after an hour.
        ordered = sorted(requests, key=lambda r: (-len(token_ids[r.prompt_text]), r.key))
        size = self.teacher.batch_size
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
            recorder = _RawLogprobRecorder()
            with torch.inference_mode():
                output = model.generate(
                    input_ids=input_ids.to(self.loaded.device),
                    attention_mask=mask.to(self.loaded.device),
                    past_key_values=past,
                    generation_config=generation_config,
                    logits_processor=[recorder],
                    tokenizer=tokenizer if self.stop else None,
                )
            new_tokens = output[:, input_ids.shape[1] :]
            logprobs = recorder.finish(output)
            elapsed = time.perf_counter() - started
            prompt_lengths = mask.sum(dim=1).tolist()
            results = [
                self._result(req, new_tokens[i].tolist(), logprobs[i].tolist(), prompt_lengths[i],
                             elapsed / len(batch))
                for i, req in enumerate(batch)
            ]
            if progress is not None:
                progress(len(batch))
            yield results

    def _result(
        self, req: GenerationRequest, ids: list[int], logprobs: list[float], prompt_tokens: int,
        latency: float,
    ) -> GenerationResult:
        done = finish_completion(self.loaded.tokenizer, ids, logprobs, self._eos_ids(), self.stop)
        return done.result(req, prompt_tokens, latency)


@dataclass
class Completion:
    text: str  # stripped, cut before the first stop string
    lead: str  # whitespace stripped from the front (scoring puts it back after the prompt)
    token_ids: list[int]  # tokens whose text lies in `text` (from its start)
    token_logprobs: list[float]  # their raw log-probs (empty if offsets could not be found)
    token_starts: list[int]  # their char offsets in `text`
    generated: int  # tokens the model generated, up to and including what ended it
    finish_reason: str  # "stop" or "length"

    def result(self, request: GenerationRequest, prompt_tokens: int,
               latency: float) -> GenerationResult:
        """The stored result of `request` with this completion."""
        return GenerationResult(
            key=request.key, query_id=request.query_id, sample_index=request.sample_index,
            text=self.text, token_ids=self.token_ids, token_logprobs=self.token_logprobs,
            token_starts=self.token_starts, prompt_tokens=int(prompt_tokens),
            completion_tokens=self.generated, finish_reason=self.finish_reason,
            latency_s=latency, lead=self.lead)


def finish_completion(tokenizer, ids: list[int], logprobs: list[float], eos_ids: set[int],
                      stop: list[str], padded: bool = True) -> Completion:
    """Turn one row of generated token ids into the stored completion.

    The row ends at the first end-of-sequence token, or at a stop string (generate() then pads
    the row; when pad == eos, as in SmolLM2, that padding must not count as generated), or at
    max_new_tokens. `padded`: the row may end in such padding (transformers' batches; vLLM
    returns each sequence unpadded)."""
    pad = tokenizer.pad_token_id
    length, finish = len(ids), "length"
    for i, tok in enumerate(ids):
        if tok in eos_ids:
            length, finish = i + 1, "stop"
            break
    else:
        while padded and length and ids[length - 1] == pad:
            length -= 1
    content_ids = [t for t in ids[:length] if t not in eos_ids]
    text = tokenizer.decode(content_ids, skip_special_tokens=True)
    starts = token_char_starts(tokenizer, content_ids, text)
    hits = [(text.find(s), s) for s in stop if s in text]
    if hits:
        cut, matched = min(hits)
        text, finish = text[:cut], "stop"
        if starts is not None:  # generated = tokens up to the one that completed the stop string
            length = sum(1 for st in starts if st < cut + len(matched))
    if starts is None:
        kept_ids, kept_lp, kept_starts = content_ids, [], []
    else:
        keep = [i for i, st in enumerate(starts) if st < len(text)]
        kept_ids = [content_ids[i] for i in keep]
        kept_lp = [logprobs[i] for i in keep]
        kept_starts = [starts[i] for i in keep]
    # Plain prompts end with "Answer:", so completions start with a space. Strip it (the record
    # a student trains on has none) and keep it in `lead`; a token that was only that space
    # becomes zero-width and belongs to no sentence.
    lead = text[: len(text) - len(text.lstrip())]
    text = text.strip()
    kept_starts = [max(0, st - len(lead)) for st in kept_starts]
    return Completion(text, lead, kept_ids, kept_lp, kept_starts, length, finish)
