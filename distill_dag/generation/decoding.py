"""What the backends that tokenize locally (transformers, vLLM) share: prompt token ids,
end-of-sequence ids, per-batch seeds, and turning one row of generated ids into the stored
completion (stop strings, offsets, the stripped lead), so both store the same shape."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from distill_dag.generation.backend import GenerationRequest, GenerationResult


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
