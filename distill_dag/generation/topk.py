"""Teacher top-k log-probs per sampled token: their compact storage, and the forward pass that
fills in what sampling did not return.

Logit distillation (training objective ``kd``) trains the student on the teacher's distribution
over each token of a sample, not only on the token sampled. A full distribution is a vocabulary
of floats per token (49k-262k); what is kept is its top k (default 20, the cap vLLM and
OpenAI-compatible servers allow by default) plus one number for the rest:

- ``ids``: int32 [tokens, k], most likely first;
- ``logprobs``: fp16 [tokens, k], log-probs under the teacher's FULL distribution at temperature 1
  (the raw distribution, before any sampling warper), so they sum to at most 1 in probability;
- ``tail``: fp16 [tokens], the log of the mass outside the top k (floored at log 1e-8), which
  lets a loss keep a tail bucket instead of pretending the top k is the whole distribution.

That is k * 6 + 2 bytes per token raw (122 at k = 20); Parquet's compression shrinks it on disk
(``storage_report``). Rows are keyed by the sample's request key and sit in
``store/teacher_topk/<teacher>/``, one chunk per batch, like the samples themselves: a rerun, a
new objective or a changed loss knob reads them and never recomputes them. They come from the
backend at sampling time where it returns them (transformers: from the logits it computes anyway)
or from one forward pass of a local copy of the teacher over its own rendered prompt plus the
sampled token ids (``ensure_topk``), for samples generated before or by a backend that does not.
Either way position i holds the teacher's distribution for the i-th token of the sample's
``token_ids``, predicted from the prompt and the tokens before it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from distill_dag.errors import DistillError
from distill_dag.store import Store

TOPK = "teacher_topk"  # chunk kind in the store: teacher_topk/<teacher name>/*.parquet
TAIL_FLOOR = float(np.log(1e-8))  # log of the smallest tail mass stored (fp16 keeps it)
SAMPLING, FORWARD = "sampling", "forward"  # where a row's top-k came from
log = logging.getLogger(__name__)


class TopKError(DistillError, ValueError):
    """Top-k log-probs cannot be had as asked; the message names the teacher and the sample."""


@dataclass
class TopK:
    """One sample's teacher top-k: a row per token of its ``token_ids``."""

    ids: np.ndarray  # int32 [tokens, k]
    logprobs: np.ndarray  # float16 [tokens, k], most likely first
    tail: np.ndarray  # float16 [tokens]: log of the probability mass outside the top k

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    @property
    def tokens(self) -> int:
        return int(self.ids.shape[0])

    def first(self, k: int) -> TopK:
        """The top `k` of a larger top-k, its tail recomputed from the dropped columns."""
        if k > self.k:
            raise ValueError(f"asked for the top {k} of a stored top {self.k}")
        if k == self.k:
            return self
        return TopK(self.ids[:, :k], self.logprobs[:, :k],
                    tail_logmass(self.logprobs[:, :k].astype(np.float32)))


def tail_logmass(logprobs: np.ndarray) -> np.ndarray:
    """log(1 - sum(exp(logprobs))) per row as fp16, floored at TAIL_FLOOR (when the top k holds
    all the mass, within rounding, the tail would be log 0)."""
    values = np.asarray(logprobs, dtype=np.float64)
    total = np.exp(np.logaddexp.reduce(values, axis=-1)) if values.shape[-1] else 0.0
    rest = np.clip(1.0 - total, np.exp(TAIL_FLOOR), 1.0)
    return np.log(rest).astype(np.float16)


def topk_from_logprobs(logprobs: Any, k: int) -> TopK:
    """The top k of full log-prob rows (a torch tensor [tokens, vocab], log_softmax'ed)."""
    values, ids = logprobs.float().topk(k, dim=-1)
    values = values.cpu().numpy()
    return TopK(ids.cpu().numpy().astype(np.int32), values.astype(np.float16),
                tail_logmass(values))


# -- storage --------------------------------------------------------------------------------------

def _frame(teacher: str, fingerprint: str, source: str,
           items: Sequence[tuple[str, TopK]]) -> pl.DataFrame:
    return pl.DataFrame({
        "request_key": [key for key, _ in items],
        "teacher": [teacher] * len(items),
        "model_fingerprint": [fingerprint] * len(items),
        "source": [source] * len(items),
        "k": [t.k for _, t in items],
        "tokens": [t.tokens for _, t in items],
        "ids": [np.ascontiguousarray(t.ids, dtype="<i4").tobytes() for _, t in items],
        "logprobs": [np.ascontiguousarray(t.logprobs, dtype="<f2").tobytes() for _, t in items],
        "tail": [np.ascontiguousarray(t.tail, dtype="<f2").tobytes() for _, t in items],
        "stored_at": [time.time()] * len(items),
    }, schema_overrides={"ids": pl.Binary, "logprobs": pl.Binary, "tail": pl.Binary})


def _from_row(row: Mapping[str, Any]) -> TopK:
    k, tokens = int(row["k"]), int(row["tokens"])
    return TopK(np.frombuffer(row["ids"], dtype="<i4").reshape(tokens, k),
                np.frombuffer(row["logprobs"], dtype="<f2").reshape(tokens, k),
                np.frombuffer(row["tail"], dtype="<f2").reshape(tokens))


def store_topk(store: Store, teacher: str, fingerprint: str, source: str,
               items: Sequence[tuple[str, TopK]]) -> None:
    """Append one chunk of (request key, top-k) for `teacher` (atomic, like every chunk)."""
    if items:
        store.append_chunk(TOPK, teacher, _frame(teacher, fingerprint, source, items))


def read_topk(store: Store, teacher: str) -> dict[str, tuple[TopK, str]]:
    """Every stored top-k of `teacher`: request key -> (top-k, source). The first written per
    key wins, as for samples; a request key already names the model that produced it."""
    frame = store.read_chunks(TOPK, teacher, key="request_key")
    if frame is None:
        return {}
    return {row["request_key"]: (_from_row(row), row["source"])
            for row in frame.iter_rows(named=True)}


def storage_report(store: Store, teacher: str) -> dict[str, float]:
    """Tokens stored for `teacher`, and bytes per token raw and on disk (Parquet, compressed)."""
    frame = store.read_chunks(TOPK, teacher, key="request_key")
    folder = store.chunk_dir(TOPK, teacher)
    if frame is None or not int(frame["tokens"].sum()):
        return {"tokens": 0, "raw_bytes_per_token": 0.0, "disk_bytes_per_token": 0.0}
    tokens = int(frame["tokens"].sum())
    raw = sum(len(frame[c][i]) for c in ("ids", "logprobs", "tail") for i in range(frame.height))
    disk = sum(p.stat().st_size for p in folder.glob("*.parquet"))
    return {"tokens": tokens, "raw_bytes_per_token": raw / tokens,
            "disk_bytes_per_token": disk / tokens}


# -- the forward pass ----------------------------------------------------------------------------

def forward_topk(model: Any, prompt_ids: Sequence[list[int]], token_ids: Sequence[list[int]],
                 k: int, *, pad_id: int, device: str = "cpu", batch_size: int = 8,
                 progress: Callable[[int], None] | None = None) -> list[TopK]:
    """The model's top-k at every token of each `token_ids` row, given its `prompt_ids` row.

    Length-sorted, left-padded batches with position ids from the mask (a row scores as it would
    alone) and ``logits_to_keep`` (the vocabulary projection only where the tokens are)."""
    import torch

    from distill_dag.provenance.scoring import left_padded

    order = sorted(range(len(token_ids)), key=lambda i: -(len(prompt_ids[i]) + len(token_ids[i])))
    results: list[TopK | None] = [None] * len(token_ids)
    for begin in range(0, len(order), batch_size):
        batch = order[begin:begin + batch_size]
        rows = [list(prompt_ids[i]) + list(token_ids[i]) for i in batch]
        keep = max(len(token_ids[i]) for i in batch) + 1
        input_ids, mask, positions = left_padded(rows, pad_id)
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                           position_ids=positions.to(device), logits_to_keep=keep,
                           use_cache=False).logits  # index j predicts position width-keep+j+1
        for row, i in enumerate(batch):
            n = len(token_ids[i])
            # The n positions that predict the n tokens: the last n+1 logits but the final one.
            predicting = logits[row, keep - 1 - n:keep - 1]
            results[i] = topk_from_logprobs(torch.log_softmax(predicting.float(), dim=-1), k)
        if progress is not None:
            progress(len(batch))
    return results  # type: ignore[return-value]


@dataclass
class TopKSummary:
    """What ensure_topk found and did for one teacher."""

    topk: dict[str, TopK]  # request key -> its top k (exactly k columns)
    from_sampling: int  # samples whose top-k was returned at sampling time
    computed: int  # samples filled by a forward pass now
    reused: int  # samples filled by an earlier forward pass
    seconds: float  # in forward passes now


def ensure_topk(
    store: Store,
    teacher: Any,
    samples: pl.DataFrame,
    prompts: Mapping[str, str],
    k: int,
    *,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 8,
    show_progress: bool = True,
    sampled_by_teacher: bool = True,
    same_weights: bool = True,
) -> TopKSummary:
    """The teacher's top-k for every sample (rows with request_key, query_id, token_ids, and
    model_fingerprint): the stored ones where their k suffices, the rest by one forward pass of a
    local copy of `teacher` (a TeacherConfig) in its own rendered prompt, stored as they come.

    `sampled_by_teacher` False: the tokens are another model's (on-policy distillation: the
    student's samples, graded by the teacher; they share a vocabulary). `same_weights` False:
    the samples came from a server of which `teacher.model` is a local copy (the backend's
    local_weights), so their request keys name no local model to compare with.

    Raises TopKError when a stored sample has no token ids, or when the local copy is not the
    model that generated the teacher's samples (their top-k would belong to another model)."""
    from tqdm.auto import tqdm

    from distill_dag.generation.prompts import render_prompt, teacher_style_and_stops
    from distill_dag.models import load_model, model_access

    stored = read_topk(store, teacher.name)
    out: dict[str, TopK] = {}
    missing: list[dict[str, Any]] = []
    sampling = reused = 0
    for row in samples.select("request_key", "query_id", "token_ids").iter_rows(named=True):
        key, ids = row["request_key"], list(row["token_ids"] or [])
        if not ids:
            raise TopKError(f"teacher {teacher.name!r}: sample {key} (query {row['query_id']}) "
                            "has no token ids to distill from")
        have = stored.get(key)
        if have is not None and have[0].k >= k and have[0].tokens == len(ids):
            out[key] = have[0].first(k)
            sampling += have[1] == SAMPLING
            reused += have[1] != SAMPLING
        else:
            missing.append({**row, "token_ids": ids})
    computed, seconds = 0, 0.0
    if missing:
        loaded = load_model(teacher.model, device, dtype, **model_access(teacher))
        fingerprints = set(samples.filter(pl.col("request_key").is_in(
            [m["request_key"] for m in missing]))["model_fingerprint"].drop_nulls()) \
            if "model_fingerprint" in samples.columns else set()
        if sampled_by_teacher and same_weights and fingerprints - {loaded.fingerprint}:
            raise TopKError(
                f"teacher {teacher.name!r}: its samples were generated by model "
                f"{sorted(fingerprints)} but {teacher.model} is {loaded.fingerprint}; the top-k "
                "log-probs must come from the model that sampled. Regenerate the teacher's "
                "outputs, or point the teacher at that model")
        style, _ = teacher_style_and_stops(teacher, loaded.tokenizer)
        texts = [render_prompt(teacher.prompt, prompts[m["query_id"]], loaded.tokenizer)
                 for m in missing]
        # As the backends tokenize prompts: a chat template holds its BOS, a plain prompt not.
        unique = list(dict.fromkeys(texts))
        encoded = loaded.tokenizer(unique, add_special_tokens=style == "plain")["input_ids"]
        prompt_ids = dict(zip(unique, encoded, strict=True))
        chunk = batch_size * 8  # store every 8 batches: a crash loses little
        started = time.perf_counter()
        with tqdm(total=len(missing), desc=f"teacher {teacher.name}: top-{k} log-probs",
                  unit="sample", disable=not show_progress) as bar:
            for begin in range(0, len(missing), chunk):
                part = missing[begin:begin + chunk]
                topks = forward_topk(
                    loaded.model, [prompt_ids[texts[begin + j]] for j in range(len(part))],
                    [m["token_ids"] for m in part], k, pad_id=loaded.tokenizer.pad_token_id,
                    device=loaded.device, batch_size=batch_size, progress=bar.update)
                items = [(m["request_key"], t) for m, t in zip(part, topks, strict=True)]
                store_topk(store, teacher.name, loaded.fingerprint, FORWARD, items)
                out.update(items)
                computed += len(items)
        seconds = time.perf_counter() - started
        log.info("teacher %s: top-%d log-probs of %d samples by a forward pass (%.1f s)",
                 teacher.name, k, computed, seconds)
    return TopKSummary(out, sampling, computed, reused, seconds)


def vocabulary_mismatch(teacher_tokenizer: Any, student_tokenizer: Any) -> str | None:
    """Why two tokenizers do not share a vocabulary (token -> id), or None when they do.
    Logit distillation compares distributions id by id, so they must."""
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab == student_vocab:
        return None
    differ = sorted(t for t in set(teacher_vocab) | set(student_vocab)
                    if teacher_vocab.get(t) != student_vocab.get(t))
    return (f"vocabularies of {len(teacher_vocab)} and {len(student_vocab)} tokens; "
            f"{len(differ)} tokens differ (e.g. {differ[:3]})")

