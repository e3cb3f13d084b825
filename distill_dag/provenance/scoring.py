"""Token log-probabilities of a response under a model, in that model's own prompt context.

One forward pass per (context, response) scores every sentence at once: a causal model's
prediction for a token depends only on what precedes it, which is exactly "the prompt plus the
preceding sentences". Batches are length-sorted and left-padded, so every response ends at the
last position; ``logits_to_keep`` then computes the vocabulary projection only for the response
positions (the lm_head over a 49k-262k vocabulary is a large share of a small model's cost).
Position ids are derived from the attention mask so a left-padded row scores exactly as it would
alone.

``TextScorer`` is what provenance and evaluation need from any engine that scores text:
``LocalScorer`` runs these forward passes in-process (CPU or CUDA); a vLLM teacher scores with
``prompt_logprobs`` on its own engine (``generation/vllm_backend.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from distill_dag.models import LoadedModel


@dataclass
class TokenScores:
    """Per response token: log-prob under the model, and char span in the response text."""

    logprobs: list[float]
    starts: list[int]
    ends: list[int]
    truncated: bool = False  # the context was cut from the left to fit max_length


class TextScorer(Protocol):
    """Scores responses given their prompts: per response token, its log-prob and char span."""

    tokenizer: Any  # renders the prompts (chat template) the scores are computed in
    # What decides the numbers (model fingerprint, dtype, engine): part of every score-cache key.
    cache_identity: dict[str, str]

    def prepare(self) -> None:
        """Load weights now, so scoring timings exclude it."""
        ...

    def score(self, prompts: Sequence[str], responses: Sequence[str], *,
              prompt_special_tokens: bool = False, batch_size: int = 8, max_length: int = 1024,
              progress: Callable[[int], None] | None = None) -> list[TokenScores]: ...


class LocalScorer:
    """Forward passes with a transformers model in this process (CPU or CUDA)."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.cache_identity = {"model": loaded.fingerprint, "dtype": str(loaded.dtype)}

    def prepare(self) -> None:
        _ = self.loaded.model  # weights load lazily

    def score(self, prompts: Sequence[str], responses: Sequence[str], *,
              prompt_special_tokens: bool = False, batch_size: int = 8, max_length: int = 1024,
              progress: Callable[[int], None] | None = None) -> list[TokenScores]:
        return score_responses(self.loaded, prompts, responses,
                               prompt_special_tokens=prompt_special_tokens,
                               batch_size=batch_size, max_length=max_length, progress=progress)


def as_scorer(model: LoadedModel | TextScorer) -> TextScorer:
    return LocalScorer(model) if isinstance(model, LoadedModel) else model


def tokenize_for_scoring(tokenizer, prompts: Sequence[str], responses: Sequence[str],
                         prompt_special_tokens: bool, max_length: int
                         ) -> list[tuple[list[int], list[int], list, bool]]:
    """Per pair: (context ids, response ids, response char offsets, context truncated).

    The response keeps at most max_length - 1 tokens; the context is cut from the left (keeping
    a leading BOS, which models expect) so that context + response fit in max_length."""
    prompt_ids = tokenizer(list(prompts), add_special_tokens=prompt_special_tokens)["input_ids"]
    encoded = tokenizer(list(responses), add_special_tokens=False, return_offsets_mapping=True)
    items = []
    for p_ids, r_ids, offsets in zip(prompt_ids, encoded["input_ids"],
                                     encoded["offset_mapping"], strict=True):
        r_ids, offsets = list(r_ids)[: max_length - 1], list(offsets)[: max_length - 1]
        keep_prompt = max(1, max_length - len(r_ids))  # at least one context token
        truncated = len(p_ids) > keep_prompt
        p_ids = list(p_ids)
        if truncated and keep_prompt > 1 and p_ids[0] == tokenizer.bos_token_id:
            p_ids = [p_ids[0], *p_ids[len(p_ids) - keep_prompt + 1 :]]  # models expect BOS
        else:
            p_ids = p_ids[-keep_prompt:]
        items.append((p_ids, r_ids, offsets, truncated))
    return items


def left_padded(seqs: Sequence[list[int]], pad: int) -> tuple[Any, Any, Any]:
    """(input_ids, attention_mask, position_ids) of `seqs` left-padded to the longest, every
    row ending at the last position; positions follow the mask, so a row computes as alone."""
    import torch

    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        input_ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    return input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def score_responses(
    loaded: LoadedModel,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    prompt_special_tokens: bool = False,
    batch_size: int = 8,
    max_length: int = 1024,
    progress: Callable[[int], None] | None = None,
) -> list[TokenScores]:
    """Score each response given its prompt; returns results in input order."""
    import torch

    items = tokenize_for_scoring(loaded.tokenizer, prompts, responses,
                                 prompt_special_tokens, max_length)
    order = sorted(range(len(items)), key=lambda i: -(len(items[i][0]) + len(items[i][1])))
    results: list[TokenScores | None] = [None] * len(items)
    pad = loaded.tokenizer.pad_token_id
    for begin in range(0, len(order), batch_size):
        batch = order[begin : begin + batch_size]
        seqs = [items[i][0] + items[i][1] for i in batch]
        width = max(len(s) for s in seqs)
        resp_lens = [len(items[i][1]) for i in batch]
        keep = max(resp_lens) + 1
        input_ids, mask, positions = left_padded(seqs, pad)
        device = loaded.device
        with torch.inference_mode():
            logits = loaded.model(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                logits_to_keep=keep,
                use_cache=False,
            ).logits  # [batch, keep, vocab]; index k predicts position width - keep + k + 1
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            targets = input_ids[:, width - keep + 1 :].to(device)  # [batch, keep - 1]
            token_lp = logprobs[:, :-1, :].gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()
        for row, i in enumerate(batch):
            _, r_ids, offsets, truncated = items[i]
            n = len(r_ids)
            values = token_lp[row, keep - 1 - n :].tolist() if n else []
            results[i] = TokenScores(values, [s for s, _ in offsets], [e for _, e in offsets],
                                     truncated)
        if progress is not None:
            progress(len(batch))
    return results  # type: ignore[return-value]
