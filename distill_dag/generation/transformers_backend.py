"""Batched sampling with Hugging Face transformers, keeping each token's raw log-probability.

Throughput comes from three things: left padding (every row's next token sits at the last
position), length-sorted batches (little padding), and one ``model.generate`` call per batch.
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

    def __init__(self, teacher: TeacherConfig, device: str = "auto", dtype: str = "auto") -> None:
        self.teacher = teacher
        self.loaded = load_model(teacher.model, device, dtype)
        self.model_fingerprint = self.loaded.fingerprint
        tokenizer = self.loaded.tokenizer
        self.style = resolve_style(teacher.prompt, tokenizer.chat_template is not None)
        self.stop = list(teacher.sampling.stop)
        if self.style == "plain":
            self.stop += [s for s in plain_stop_strings(teacher.prompt) if s not in self.stop]

    def render(self, query: str) -> str:
        return render_prompt(self.teacher.prompt, query, self.loaded.tokenizer)

    def _batches(self, requests: list[GenerationRequest]) -> list[list[GenerationRequest]]:
        tokenizer = self.loaded.tokenizer
        lengths = {r.prompt_text: 0 for r in requests}
        for text in lengths:
            lengths[text] = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        # Longest first: a memory problem shows at once, not after an hour.
        ordered = sorted(requests, key=lambda r: (-lengths[r.prompt_text], r.key))
        size = self.teacher.batch_size
        return [ordered[i : i + size] for i in range(0, len(ordered), size)]

    def generate(
        self,
        requests: list[GenerationRequest],
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[list[GenerationResult]]:
        import torch

        tokenizer, model = self.loaded.tokenizer, self.loaded.model
        tokenizer.padding_side = "left"
        sampling = self.teacher.sampling
        for batch in self._batches(requests):
            started = time.perf_counter()
            # Chat templates already contain the BOS token; plain prompts need the tokenizer's.
            inputs = tokenizer(
                [r.prompt_text for r in batch],
                return_tensors="pt",
                padding=True,
                add_special_tokens=self.style == "plain",
            ).to(self.loaded.device)
            seed_material = "|".join(r.key for r in batch) + f"|{sampling.seed}"
            seed = int(hashlib.sha256(seed_material.encode()).hexdigest()[:8], 16)
            torch.manual_seed(seed)  # the same batch of requests samples the same tokens
            recorder = _RawLogprobRecorder()
            greedy = sampling.temperature == 0
            with torch.inference_mode():
                output = model.generate(
                    **inputs,
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
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            logprobs = recorder.finish(output)
            elapsed = time.perf_counter() - started
            prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
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
        text = tokenizer.decode(content_ids, skip_special_tokens=True)
        cut = min((text.find(s) for s in self.stop if s in text), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        starts = token_char_starts(tokenizer, content_ids, tokenizer.decode(content_ids,
                                   skip_special_tokens=True))
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
