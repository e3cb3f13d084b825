"""Batched sampling with Hugging Face transformers, keeping each token's raw log-probability.

Throughput comes from four things: left padding (every row's next token sits at the last
position), length-sorted batches (little padding), one ``model.generate`` call per batch, and
shared-prefix reuse: the tokens every prompt of a teacher shares (system prompt, few-shot
exemplars) are encoded once into a KV cache that each batch copies, so only each question is
prefilled. Rows are laid out as [prefix | pad | question]; the attention mask hides the pad and
position ids follow the mask, so each row computes what it would alone.
Log-probs are recorded by a logits processor that runs before the sampling warpers, so it sees
the raw distribution (temperature 1), which is what provenance compares across models; it keeps
only one step of log-probs alive (batch x vocab), unlike ``output_logits`` which keeps them all.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator

from distill_dag.generation.backend import (
    GenerationRequest,
    GenerationResult,
    token_char_starts,
)
from distill_dag.generation.config import TeacherConfig
from distill_dag.generation.prompts import plain_stop_strings, render_prompt, resolve_style
from distill_dag.models import load_model

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
        tokenizer = self.loaded.tokenizer
        self.style = resolve_style(teacher.prompt, tokenizer.chat_template is not None)
        self.stop = list(teacher.sampling.stop)
        if self.style == "plain":
            self.stop += [s for s in plain_stop_strings(teacher.prompt) if s not in self.stop]

    def render(self, query: str) -> str:
        return render_prompt(self.teacher.prompt, query, self.loaded.tokenizer)

    def _tokenize(self, requests: list[GenerationRequest]) -> dict[str, list[int]]:
        # Chat templates already contain the BOS token; plain prompts need the tokenizer's.
        texts = list(dict.fromkeys(r.prompt_text for r in requests))
        ids = self.loaded.tokenizer(texts, add_special_tokens=self.style == "plain")["input_ids"]
        return {text: list(row) for text, row in zip(texts, ids, strict=True)}

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
            seed_material = "|".join(r.key for r in batch) + f"|{sampling.seed}"
            torch.manual_seed(int(hashlib.sha256(seed_material.encode()).hexdigest()[:8], 16))
            recorder = _RawLogprobRecorder()
            greedy = sampling.temperature == 0
            with torch.inference_mode():
                output = model.generate(
                    input_ids=input_ids.to(self.loaded.device),
                    attention_mask=mask.to(self.loaded.device),
                    past_key_values=past,
                    do_sample=not greedy,
                    temperature=None if greedy else sampling.temperature,
                    top_p=None if greedy else sampling.top_p,
                    top_k=None if greedy else sampling.top_k,
                    max_new_tokens=sampling.max_new_tokens,
                    logits_processor=[recorder],
                    stop_strings=self.stop or None,
                    tokenizer=tokenizer if self.stop else None,
                    pad_token_id=tokenizer.pad_token_id,
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
        tokenizer = self.loaded.tokenizer
        eos_ids = self.loaded.model.generation_config.eos_token_id
        eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids]) - {None}
        pad = tokenizer.pad_token_id
        # Generated length: up to and including the first EOS; trailing pads are not generated.
        length, finish = len(ids), "length"
        for i, tok in enumerate(ids):
            if tok in eos_ids:
                length, finish = i + 1, "stop"
                break
        else:
            while length and ids[length - 1] == pad and pad not in eos_ids:
                length -= 1
        content_ids = [t for t in ids[:length] if t not in eos_ids]
        decoded = tokenizer.decode(content_ids, skip_special_tokens=True)
        text = decoded
        cut = min((text.find(s) for s in self.stop if s in text), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        starts = token_char_starts(tokenizer, content_ids, decoded)
        if starts is None:
            kept_ids, kept_lp, kept_starts = content_ids, [], []
        else:
            keep = [i for i, s in enumerate(starts) if s < len(text)]
            kept_ids = [content_ids[i] for i in keep]
            kept_lp = [logprobs[i] for i in keep]
            kept_starts = [starts[i] for i in keep]
        # Plain prompts end with "Answer:", so completions start with a space: strip it and shift
        # offsets (a token that was only that space clamps to 0 and is assigned to no sentence).
        lead = len(text) - len(text.lstrip())
        text = text.strip()
        kept_starts = [max(0, s - lead) for s in kept_starts]
        return GenerationResult(
            key=req.key,
            query_id=req.query_id,
            sample_index=req.sample_index,
            text=text,
            token_ids=kept_ids,
            token_logprobs=kept_lp,
            token_starts=kept_starts,
            prompt_tokens=int(prompt_tokens),
            completion_tokens=length,
            finish_reason=finish,
            latency_s=latency,
        )
