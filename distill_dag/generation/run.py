"""Generate a teacher's k samples per training query, memoized per request, then verify them.

Each request's result is appended to the store as soon as its batch completes, keyed by the
request key; a rerun (or a resume after a crash) generates only the keys that are missing.
Verification runs on every current row on each materialization: it is cheap, and re-running it
means a new verifier version re-verifies without regenerating anything.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import polars as pl

from distill_dag.generation.backend import GenerationBackend, GenerationRequest, request_key
from distill_dag.generation.config import TeacherConfig
from distill_dag.store import Store

GENERATIONS = "generations"  # chunk kind in the store
log = logging.getLogger(__name__)


@dataclass
class GenerationSummary:
    outputs: pl.DataFrame  # one row per (query, sample index) for the current config
    requests: int  # requests the current config asks for
    generated: int  # requests generated in this call (the rest came from the store)
    tokens_generated: int  # completion tokens generated in this call
    seconds: float  # wall time of generation in this call (model loading excluded)
    # An HTTP backend's requests, retries, tokens billed and cost in this call; else empty.
    endpoint_usage: dict[str, float] = field(default_factory=dict)


def build_requests(backend: GenerationBackend, teacher: TeacherConfig, queries: pl.DataFrame
                   ) -> list[GenerationRequest]:
    sampling_fp = teacher.sampling.fingerprint()
    requests = []
    for query_id, prompt in zip(queries["query_id"], queries["prompt"], strict=True):
        text = backend.render(prompt)
        for index in range(teacher.sampling.num_samples):
            key = request_key(backend.model_fingerprint, backend.name, text, sampling_fp, index)
            requests.append(GenerationRequest(key, query_id, index, text))
    return requests


def _results_frame(teacher: str, fingerprint: str, results) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "request_key": [r.key for r in results],
            "teacher": [teacher] * len(results),
            "model_fingerprint": [fingerprint] * len(results),
            "query_id": [r.query_id for r in results],
            "sample_index": [r.sample_index for r in results],
            "response": [r.text for r in results],
            "response_lead": [r.lead for r in results],
            "token_ids": [r.token_ids for r in results],
            "token_logprobs": [r.token_logprobs for r in results],
            "token_starts": [r.token_starts for r in results],
            "prompt_tokens": [r.prompt_tokens for r in results],
            "completion_tokens": [r.completion_tokens for r in results],
            "finish_reason": [r.finish_reason for r in results],
            "latency_s": [r.latency_s for r in results],
            "generated_at": [time.time()] * len(results),
        },
        schema_overrides={"token_ids": pl.List(pl.Int64), "token_logprobs": pl.List(pl.Float64),
                          "token_starts": pl.List(pl.Int64)},
    )


def generate_teacher_outputs(
    teacher: TeacherConfig,
    queries: pl.DataFrame,
    store: Store,
    backend: GenerationBackend | None = None,
    device: str = "auto",
    dtype: str = "auto",
    show_progress: bool = True,
) -> GenerationSummary:
    """Make sure every (query, sample index) of `queries` has a stored sample; return them all."""
    from tqdm.auto import tqdm

    from distill_dag.generation.backend import make_backend

    own_backend = backend is None
    backend = backend or make_backend(teacher, device=device, dtype=dtype)
    try:
        requests = build_requests(backend, teacher, queries)
        stored = store.read_chunks(GENERATIONS, teacher.name, key="request_key")
        done = set(stored["request_key"]) if stored is not None else set()
        # One request per key, even if two queries rendered to the same prompt text.
        missing = list({r.key: r for r in requests if r.key not in done}.values())

        generated = tokens = 0
        new_frames: list[pl.DataFrame] = []
        if missing and hasattr(backend, "prepare"):
            backend.prepare()
        started = time.perf_counter()
        if missing:
            with tqdm(total=len(missing), desc=f"teacher {teacher.name}: generate",
                      unit="sample", disable=not show_progress) as bar:
                for batch in backend.generate(missing, progress=bar.update):
                    frame = _results_frame(teacher.name, backend.model_fingerprint, batch)
                    store.append_chunk(GENERATIONS, teacher.name, frame)
                    new_frames.append(frame)
                    generated += len(batch)
                    tokens += sum(r.completion_tokens for r in batch)
                    bar.set_postfix(
                        tok_s=f"{tokens / max(time.perf_counter() - started, 1e-9):.0f}")
        seconds = time.perf_counter() - started
    finally:
        if own_backend and hasattr(backend, "close"):
            try:
                backend.close()  # a vLLM engine holds the GPU the next steps need
            except Exception as exc:  # must not hide the error that got us here
                log.warning("teacher %s: closing the backend failed: %r", teacher.name, exc)

    frames = ([stored] if stored is not None else []) + new_frames
    if not frames:
        raise ValueError(f"teacher {teacher.name!r}: no queries to generate for")
    stored = pl.concat(frames, how="diagonal_relaxed")
    wanted = pl.DataFrame({"request_key": [r.key for r in requests]}).unique(maintain_order=True)
    outputs = wanted.join(stored, on="request_key", how="inner")
    usage = getattr(backend, "usage", None)
    endpoint_usage = {} if usage is None else {
        k: getattr(usage, k) for k in ("requests", "retries", "prompt_tokens",
                                       "completion_tokens", "cost")}
    return GenerationSummary(outputs, len(requests), generated, tokens, seconds, endpoint_usage)


def verify_outputs(outputs: pl.DataFrame, queries: pl.DataFrame) -> pl.DataFrame:
    """Add the verdict columns (extracted answer, correct, reason, verifier version)."""
    from distill_dag.verify import VERIFIER_VERSION, Verdict, verify_answer

    joined = outputs.join(queries.select("query_id", "reference_answer"), on="query_id",
                          how="left")
    verdicts = [verify_answer(resp, ref) for resp, ref in
                zip(joined["response"], joined["reference_answer"], strict=True)]
    # A response cut at max_new_tokens never stated its answer: whatever number it ended on is
    # not one, so it is not counted correct (it is kept, marked "truncated").
    truncated = (joined["finish_reason"] == "length").to_list()
    verdicts = [Verdict(False, v.extracted, "truncated") if cut else v
                for v, cut in zip(verdicts, truncated, strict=True)]
    return joined.with_columns(
        pl.Series("extracted_answer", [v.extracted for v in verdicts], dtype=pl.Utf8),
        pl.Series("correct", [v.correct for v in verdicts], dtype=pl.Boolean),
        pl.Series("verdict", [v.reason for v in verdicts], dtype=pl.Utf8),
        pl.lit(VERIFIER_VERSION).alias("verifier_version"),
    ).sort("query_id", "sample_index")


def teacher_change_notes(store: Store, configured: list[str]) -> list[str]:
    """Messages for teachers that left the config (renamed or removed) while their samples stay
    in the store, and for the new names generated from scratch alongside them."""
    root = store.chunk_dir(GENERATIONS, "")
    # eval-* folders hold eval_report's generations and student-* the difficulty filter's.
    stored = sorted(p.name for p in root.iterdir()
                    if p.is_dir() and not p.name.startswith(("eval-", "student-"))
                    ) if root.is_dir() else []
    gone = [name for name in stored if name not in configured]
    notes = []
    for name in gone:
        samples = store.read_chunks(GENERATIONS, name, key="request_key")
        count = samples.height if samples is not None else 0
        notes.append(f"teacher {name!r} has {count} stored samples but is no longer in the "
                     "config (renamed or removed): they are kept in the store, not used and not "
                     "deleted, and its Dagster partition history stays; put the name back to "
                     "use them again")
    new = [name for name in configured if name not in stored]
    if gone and new:
        notes.append(f"teacher(s) {new} are new and are generated from scratch (samples are "
                     "stored per teacher name, so a renamed teacher does not reuse the old ones)")
    return notes
