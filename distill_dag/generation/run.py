"""Memoized generation: a spec's k samples per query under a namespace, then verification.

`generate(spec, namespace, queries, store)` is the one path every generation takes: teachers
(namespace = the teacher's name: store/generations/<name>), eval_report (namespace "eval") and
the difficulty filter (namespace "student"). Each request's result is appended to the
namespace's chunk folder as soon as its batch completes, keyed by the request key; a rerun (or
a resume after a crash) generates only the keys that are missing. Verification runs on every
current row on each materialization: it is cheap, and re-running it means a new verifier
version re-verifies without regenerating anything.

Layout: a teacher's samples in store/generations/<teacher name> (as always); another purpose's
in store/generations_<purpose>/<name>, which no teacher name can reach. Stores written before
namespaces kept eval_report's and the difficulty filter's samples in generations/eval-<name>
and generations/student-<name> (teacher names could not start with those prefixes then): the
first generation in such a store moves them to their namespaces, so nothing regenerates.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field

import polars as pl

from distill_dag.generation.backend import GenerationBackend, GenerationRequest, request_key
from distill_dag.generation.config import TeacherConfig
from distill_dag.generation.spec import GenerationSpec
from distill_dag.generation.topk import SAMPLING, store_topk
from distill_dag.store import Store

GENERATIONS = "generations"  # chunk kind of the teachers' samples in the store
TEACHER = "teacher"  # the namespace purpose whose folders are generations/<teacher name>
LEGACY_PURPOSES = ("eval", "student")  # stored as generations/<purpose>-<name> before namespaces
LAYOUT_MARKER = ".namespaces"  # in generations/: the legacy folders have been moved
_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Namespace:
    """Where one purpose's generations are memoized: a teacher's own folder, or a stage's
    (eval_report: "eval", the difficulty filter: "student"). Two namespaces share no folder."""

    purpose: str  # TEACHER, or the stage's purpose (lowercase letters)
    name: str  # the teacher's name, or what the purpose generates (e.g. "base-greedy")

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z]+", self.purpose or ""):
            raise ValueError(f"namespace purpose {self.purpose!r}: lowercase letters only")
        if not _PART_RE.match(self.name or ""):
            raise ValueError(f"namespace name {self.name!r}: letters, digits, _ . - only")

    @property
    def chunk_kind(self) -> str:
        return GENERATIONS if self.purpose == TEACHER else f"{GENERATIONS}_{self.purpose}"

    @property
    def label(self) -> str:
        """The `teacher` column of its stored rows: the teacher's name, else <purpose>-<name>
        (what those rows carried before namespaces)."""
        return self.name if self.purpose == TEACHER else f"{self.purpose}-{self.name}"

    def __str__(self) -> str:
        return f"teacher {self.name}" if self.purpose == TEACHER else f"{self.purpose} {self.name}"


def teacher_namespace(name: str) -> Namespace:
    return Namespace(TEACHER, name)


def migrate_legacy_folders(store: Store) -> list[str]:
    """Move generations/<purpose>-<name> folders of a store from before namespaces to their
    namespaces (once per store: a marker file records it, so a teacher named like an old folder
    later is left alone). Safe when several processes do it at once: each file moves
    atomically, and one already moved is skipped. Returns the folders moved."""
    root = store.chunk_dir(GENERATIONS, "")
    marker = root / LAYOUT_MARKER
    if marker.exists():
        return []
    moved = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        purpose, _, name = folder.name.partition("-")
        if not folder.is_dir() or purpose not in LEGACY_PURPOSES or not _PART_RE.match(name):
            continue
        target = store.chunk_dir(Namespace(purpose, name).chunk_kind, name)
        target.mkdir(parents=True, exist_ok=True)
        for chunk in sorted(folder.glob("*.parquet")):
            with suppress(FileNotFoundError):  # another process moved it first
                os.replace(chunk, target / chunk.name)
        for leftover in folder.glob(".*.tmp"):  # a write a crash interrupted: never read
            with suppress(FileNotFoundError):
                leftover.unlink()
        with suppress(OSError):
            folder.rmdir()
        moved.append(folder.name)
        log.info("moved generations/%s to %s/%s (namespaces)", folder.name, target.parent.name,
                 name)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{LAYOUT_MARKER}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text("generation namespaces: legacy eval-*/student-* folders moved\n")
    os.replace(tmp, marker)
    return moved


@dataclass
class GenerationSummary:
    outputs: pl.DataFrame  # one row per (query, sample index) for the current config
    requests: int  # requests the current config asks for
    generated: int  # requests generated in this call (the rest came from the store)
    tokens_generated: int  # completion tokens generated in this call
    seconds: float  # wall time of generation in this call (model loading excluded)
    # An HTTP backend's requests, retries, tokens billed and cost in this call; else empty.
    endpoint_usage: dict[str, float] = field(default_factory=dict)


def build_requests(backend: GenerationBackend, spec: GenerationSpec, queries: pl.DataFrame
                   ) -> list[GenerationRequest]:
    sampling_fp = spec.sampling.fingerprint()
    requests = []
    for query_id, prompt in zip(queries["query_id"], queries["prompt"], strict=True):
        text = backend.render(prompt)
        for index in range(spec.sampling.num_samples):
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


def generate(
    spec: GenerationSpec,
    namespace: Namespace,
    queries: pl.DataFrame,
    store: Store,
    backend: GenerationBackend | None = None,
    device: str = "auto",
    dtype: str = "auto",
    show_progress: bool = True,
) -> GenerationSummary:
    """Make sure every (query, sample index) of `queries` has a stored sample of `spec` in
    `namespace`; return them all. `backend`: one already built for `spec` (else made here, and
    closed after)."""
    from tqdm.auto import tqdm

    from distill_dag.generation.registry import make_backend

    migrate_legacy_folders(store)
    kind, folder = namespace.chunk_kind, namespace.name
    own_backend = backend is None
    backend = backend or make_backend(spec, device=device, dtype=dtype)
    try:
        requests = build_requests(backend, spec, queries)
        stored = store.read_chunks(kind, folder, key="request_key")
        done = set(stored["request_key"]) if stored is not None else set()
        # One request per key, even if two queries rendered to the same prompt text.
        missing = list({r.key: r for r in requests if r.key not in done}.values())

        generated = tokens = 0
        new_frames: list[pl.DataFrame] = []
        if missing and hasattr(backend, "prepare"):
            backend.prepare()
        started = time.perf_counter()
        if missing:
            with tqdm(total=len(missing), desc=f"{namespace}: generate",
                      unit="sample", disable=not show_progress) as bar:
                for batch in backend.generate(missing, progress=bar.update):
                    # The top-k first: a crash between the two writes leaves a sample without
                    # one (filled by a forward pass when needed), never an orphan top-k read.
                    if namespace.purpose == TEACHER:
                        store_topk(store, folder, backend.model_fingerprint, SAMPLING,
                                   [(r.key, r.topk) for r in batch if r.topk is not None])
                    frame = _results_frame(namespace.label, backend.model_fingerprint, batch)
                    store.append_chunk(kind, folder, frame)
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
                log.warning("%s: closing the backend failed: %r", namespace, exc)

    frames = ([stored] if stored is not None else []) + new_frames
    if not frames:
        raise ValueError(f"{namespace}: no queries to generate for")
    stored = pl.concat(frames, how="diagonal_relaxed")
    wanted = pl.DataFrame({"request_key": [r.key for r in requests]}).unique(maintain_order=True)
    outputs = wanted.join(stored, on="request_key", how="inner")
    usage = getattr(backend, "usage", None)
    endpoint_usage = {} if usage is None else {
        k: getattr(usage, k) for k in ("requests", "retries", "prompt_tokens",
                                       "completion_tokens", "cost")}
    return GenerationSummary(outputs, len(requests), generated, tokens, seconds, endpoint_usage)


def generate_teacher_outputs(
    teacher: TeacherConfig,
    queries: pl.DataFrame,
    store: Store,
    backend: GenerationBackend | None = None,
    device: str = "auto",
    dtype: str = "auto",
    show_progress: bool = True,
) -> GenerationSummary:
    """A teacher's samples of `queries`: generate() in the teacher's own namespace."""
    return generate(teacher, teacher_namespace(teacher.name), queries, store, backend=backend,
                    device=device, dtype=dtype, show_progress=show_progress)


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
    migrate_legacy_folders(store)  # generations/ then holds teachers' folders only
    root = store.chunk_dir(GENERATIONS, "")
    stored = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
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
