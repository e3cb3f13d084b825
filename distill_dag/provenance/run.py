"""Sentence provenance of a teacher's samples: teacher vs original-student probabilities.

For every sample: split the response into sentences; get each token's log-prob under the teacher
(its own few-shot prompt; from generation time when the backend returned them, else a forward
pass) and under the student (its zero-shot prompt, its own tokenizer); average per sentence
(sentence probability = exp(mean token log-prob), comparable across tokenizers); categorize with
margin beta. Forward passes are memoized in the store by (model, context, response), so a rerun,
or a changed margin, rescores nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import polars as pl

from distill_dag.configbase import ConfigError, stable_hash
from distill_dag.generation.config import StudentConfig, TeacherConfig
from distill_dag.generation.prompts import render_prompt, resolve_style
from distill_dag.models import LoadedModel
from distill_dag.provenance.categories import ProvenanceConfig, categorize_teacher_student
from distill_dag.provenance.scoring import TextScorer, TokenScores, as_scorer
from distill_dag.provenance.sentences import (
    assign_tokens_to_sentences,
    sentence_logprob_means,
    split_sentences,
)
from distill_dag.store import Store

SCORES = "scores"  # chunk kind in the store


@dataclass
class ProvenanceSummary:
    sentences: pl.DataFrame  # one row per sentence
    samples: pl.DataFrame  # one row per sample: counts per category, mean log-probs
    scored: int  # sequences scored by a forward pass in this call (the rest were cached)
    scored_tokens: int
    scoring_seconds: float  # time in forward passes (model loading excluded)
    seconds: float  # wall time of the whole call


def score_cached(
    store: Store,
    scorer: TextScorer | LoadedModel,
    prompts: list[str],
    responses: list[str],
    cfg: ProvenanceConfig,
    prompt_special_tokens: bool,
    label: str,
    show_progress: bool = True,
) -> tuple[list[TokenScores], int, int, float]:
    """Score (prompt, response) pairs, reusing stored scores.

    Returns the scores, how many sequences were scored now, their tokens, and the seconds spent
    in forward passes."""
    from tqdm.auto import tqdm

    scorer = as_scorer(scorer)
    identity = scorer.cache_identity
    keys = [stable_hash({**identity, "prompt": p, "response": r, "max_length": cfg.max_length},
                        32)
            for p, r in zip(prompts, responses, strict=True)]
    stored = store.read_chunks(SCORES, identity["model"], key="score_key")
    known = {} if stored is None else {
        row["score_key"]: TokenScores(row["logprobs"], row["starts"], row["ends"], row["truncated"])
        for row in stored.iter_rows(named=True)
    }
    todo = sorted({i for i, k in enumerate(keys) if k not in known}, key=lambda i: keys[i])
    todo_unique = list({keys[i]: i for i in todo}.values())
    tokens, seconds = 0, 0.0
    if todo_unique:
        scorer.prepare()  # load weights before the clock starts
        chunk = cfg.batch_size * 8  # store every 8 batches: a crash loses little
        with tqdm(total=len(todo_unique), desc=f"score {label}", unit="seq",
                  disable=not show_progress) as bar:
            for begin in range(0, len(todo_unique), chunk):
                part = todo_unique[begin : begin + chunk]
                started = time.perf_counter()
                scores = scorer.score(
                    [prompts[i] for i in part], [responses[i] for i in part],
                    prompt_special_tokens=prompt_special_tokens, batch_size=cfg.batch_size,
                    max_length=cfg.max_length, progress=bar.update,
                )
                seconds += time.perf_counter() - started
                store.append_chunk(SCORES, identity["model"], pl.DataFrame({
                    "score_key": [keys[i] for i in part],
                    "logprobs": [s.logprobs for s in scores],
                    "starts": [s.starts for s in scores],
                    "ends": [s.ends for s in scores],
                    "truncated": [s.truncated for s in scores],
                }, schema_overrides={"logprobs": pl.List(pl.Float64),
                                     "starts": pl.List(pl.Int64), "ends": pl.List(pl.Int64)}))
                for i, s in zip(part, scores, strict=True):
                    known[keys[i]] = s
                    tokens += len(s.logprobs)
    return [known[k] for k in keys], len(todo_unique), tokens, seconds


def sentence_means(text: str, scores: TokenScores, sentences) -> np.ndarray:
    ends = scores.ends or [*scores.starts[1:], len(text)]
    owner = assign_tokens_to_sentences(scores.starts, ends, text, sentences)
    return sentence_logprob_means(scores.logprobs, owner, len(sentences))


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def score_provenance(
    outputs: pl.DataFrame,
    queries: pl.DataFrame,
    teacher: TeacherConfig,
    student: StudentConfig,
    cfg: ProvenanceConfig,
    store: Store,
    teacher_model: TextScorer | LoadedModel | None,
    student_model: TextScorer | LoadedModel,
    show_progress: bool = True,
) -> ProvenanceSummary:
    """Sentence-level provenance for one teacher's samples (the `outputs` table rows).

    `teacher_model` scores the samples that came without generation-time log-probs (the
    teacher backend's scorer(), or a local copy of the teacher); None when all have them."""
    started = time.perf_counter()
    prompts = dict(zip(queries["query_id"], queries["prompt"], strict=True))
    if "response_lead" not in outputs.columns:
        outputs = outputs.with_columns(pl.lit("").alias("response_lead"))
    rows = outputs.select("request_key", "query_id", "sample_index", "response", "response_lead",
                          "token_logprobs", "token_starts").to_dicts()
    responses = [r["response"] for r in rows]

    # Teacher first (its engine may be a vLLM one that wants the GPU before the student's
    # weights load): generation-time log-probs when present, else a pass in its own context.
    use_generation = cfg.teacher_logprobs == "generation"
    # An empty response has nothing to score: it never needs the teacher's model.
    t_scores: list[TokenScores | None] = [
        TokenScores(r["token_logprobs"], r["token_starts"], [])
        if (use_generation and r["token_logprobs"]) or not r["response"] else None
        for r in rows
    ]
    need = [i for i, s in enumerate(t_scores) if s is None]
    scored = tokens = 0
    busy = 0.0
    if need:
        if teacher_model is None:
            raise ValueError(
                f"teacher {teacher.name!r}: {len(need)} samples have no generation-time "
                "log-probs and no local teacher model is available to score them"
            )
        teacher_model = as_scorer(teacher_model)
        t_tok = teacher_model.tokenizer
        t_plain = resolve_style(teacher.prompt, t_tok.chat_template is not None) == "plain"
        # The teacher generated the stripped lead (" " after "Answer:") before the response:
        # it belongs to the teacher's context, or the first token is scored out of place.
        t_prompts = [render_prompt(teacher.prompt, prompts[rows[i]["query_id"]], t_tok)
                     + (rows[i]["response_lead"] or "") for i in need]
        rescored, n, t, b = score_cached(store, teacher_model, t_prompts,
                                         [responses[i] for i in need], cfg, t_plain,
                                         f"teacher {teacher.name}", show_progress)
        for i, s in zip(need, rescored, strict=True):
            t_scores[i] = s
        scored, tokens, busy = n, t, b
        if hasattr(teacher_model, "close"):
            teacher_model.close()  # a vLLM engine: give the GPU back before the student loads

    # Student: zero-shot, in the exact prompt it will be trained with.
    student_model = as_scorer(student_model)
    s_tok = student_model.tokenizer
    try:
        s_plain = resolve_style(student.prompt, s_tok.chat_template is not None) == "plain"
    except ConfigError as exc:
        raise ConfigError(f"student (model {student.model}): {exc}") from exc
    s_prompts = [render_prompt(student.prompt, prompts[r["query_id"]], s_tok) for r in rows]
    s_scores, n, t, b = score_cached(store, student_model, s_prompts, responses, cfg, s_plain,
                                     "student", show_progress)
    scored, tokens, busy = scored + n, tokens + t, busy + b

    sentence_rows: dict[str, list] = {k: [] for k in (
        "request_key", "query_id", "sample_index", "sentence_index", "start", "end", "text",
        "lp_teacher", "lp_student")}
    sample_rows = []
    for row, s_score, t_score in zip(rows, s_scores, t_scores, strict=True):
        text = row["response"]
        sentences = split_sentences(text)
        lp_t = sentence_means(text, t_score, sentences) if sentences else np.array([])
        lp_s = sentence_means(text, s_score, sentences) if sentences else np.array([])
        for sent, a, b in zip(sentences, lp_t, lp_s, strict=True):
            for key, value in (("request_key", row["request_key"]), ("query_id", row["query_id"]),
                               ("sample_index", row["sample_index"]),
                               ("sentence_index", sent.index), ("start", sent.start),
                               ("end", sent.end), ("text", sent.text), ("lp_teacher", float(a)),
                               ("lp_student", float(b))):
                sentence_rows[key].append(value)
        sample_rows.append({
            "request_key": row["request_key"],
            "student_mean_logprob": _mean(s_score.logprobs),
            "teacher_mean_logprob": _mean(t_score.logprobs),
            # An empty response counts as scored where the others came from (nothing to score).
            "teacher_logprob_source": "generation" if use_generation and (
                row["token_logprobs"] or not row["response"]) else "rescore",
            "context_truncated": bool(s_score.truncated or t_score.truncated),
        })

    sentences_df = pl.DataFrame(sentence_rows, schema_overrides={
        "lp_teacher": pl.Float64, "lp_student": pl.Float64, "sample_index": pl.Int64,
        "sentence_index": pl.Int64, "start": pl.Int64, "end": pl.Int64,
        "request_key": pl.Utf8, "query_id": pl.Utf8, "text": pl.Utf8})
    sentences_df = sentences_df.with_columns(
        pl.col("lp_teacher").exp().alias("p_teacher"),
        pl.col("lp_student").exp().alias("p_student"),
    ).with_columns((pl.col("p_teacher") - pl.col("p_student")).alias("d_ts"))
    categories = categorize_teacher_student(
        sentences_df["p_teacher"].to_numpy(), sentences_df["p_student"].to_numpy(), cfg.beta
    )
    sentences_df = sentences_df.with_columns(
        pl.Series("category", list(categories), dtype=pl.Utf8),
        pl.lit(teacher.name).alias("teacher"),
    )
    counts = sentences_df.group_by("request_key").agg(
        pl.len().alias("n_sentences"),
        (pl.col("category") == "teacher").sum().alias("n_teacher"),
        (pl.col("category") == "student").sum().alias("n_student"),
        (pl.col("category") == "common").sum().alias("n_common"),
        pl.col("d_ts").mean().alias("mean_d_ts"),
    )
    samples_df = (
        outputs.select("request_key", "teacher", "query_id", "sample_index", "correct",
                       "completion_tokens", "latency_s")
        .join(pl.DataFrame(sample_rows), on="request_key", how="left")
        .join(counts, on="request_key", how="left")
        .with_columns(pl.col("n_sentences", "n_teacher", "n_student", "n_common").fill_null(0))
        .with_columns((pl.col("n_teacher") / pl.col("n_sentences").clip(lower_bound=1))
                      .alias("teacher_fraction"))
        .sort("query_id", "sample_index")
    )
    return ProvenanceSummary(sentences_df, samples_df, scored, tokens, busy,
                             time.perf_counter() - started)
