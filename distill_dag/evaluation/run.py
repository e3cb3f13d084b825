"""Evaluate the base and the distilled student on the held-out queries, same prompt and budget.

Answers are generated through the same memoized path as teacher samples (keyed by model
fingerprint, prompt, sampling and sample index, stored as they complete), in the "eval"
namespace (store/generations_eval/<model>-<greedy|sampled>, which no teacher name can reach), so
a rerun with the same checkpoint generates nothing, and a new checkpoint regenerates only its
own answers. Each
model gets a greedy answer (pass@1) and, if configured, n sampled answers (pass@k, mean@k).
Test-time provenance scores the distilled model's greedy answers sentence by sentence under the
teacher (its own prompt), the original student and the distilled student (the student prompt),
and categorizes each sentence Shared / Teacher / Student / Boosted (DESIGN.md section 3).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from distill_dag.evaluation.config import EvalConfig
from distill_dag.evaluation.metrics import (
    Interval,
    bootstrap_mean,
    mean_pass_at_k,
    paired_bootstrap_mean_diff,
    pass_at_k,
)
from distill_dag.generation.config import StudentConfig, TeacherConfig
from distill_dag.generation.prompts import render_prompt, resolve_style
from distill_dag.generation.run import Namespace, generate, verify_outputs
from distill_dag.generation.spec import GenerationSpec, PromptConfig, SamplingConfig
from distill_dag.models import load_model, model_access
from distill_dag.provenance.categories import ProvenanceConfig, categorize_three_way
from distill_dag.provenance.run import score_cached, sentence_means
from distill_dag.provenance.sentences import split_sentences
from distill_dag.store import Store

BASE, DISTILLED = "base", "distilled"
EVAL = "eval"  # the namespace purpose of eval_report's generations

# The first completed answer statement ("... answer is 17." followed by a space or the end).
_FIRST_STATEMENT = re.compile(r"answer is[^\n]*?\d[^\n]*?\.(?=\s|$)", re.IGNORECASE)


def lenient_correct(response: str, reference: str, truncated: bool, strict: bool) -> bool:
    """Correct when strict verification says so, or, for an answer cut at the token budget,
    when its first completed "The answer is N." statement is right (a model that answers and
    then rambles on until the budget). Reported beside the strict figure, never instead of it."""
    if strict or not truncated:
        return strict
    from distill_dag.verify import verify_answer

    match = _FIRST_STATEMENT.search(response)
    return bool(match) and verify_answer(response[: match.end()], reference).correct


@dataclass
class ModelEval:
    """One model's answers and per-query results."""

    label: str
    greedy: pl.DataFrame  # verified greedy answers, one per query
    sampled: pl.DataFrame | None  # verified sampled answers, n per query (None if n = 0)
    per_query: pl.DataFrame  # query_id, greedy_correct, n, c
    generated: int  # answers generated in this call (the rest came from the store)
    tokens_generated: int
    seconds: float


@dataclass
class Comparison:
    metrics: dict[str, dict[str, float]]  # label -> metric -> value
    gain: Interval  # distilled - base, greedy pass@1, paired over queries
    gain_lenient: Interval  # the same, crediting a truncated answer's first stated result
    accuracy: dict[str, Interval]  # label -> greedy pass@1 with its interval
    gains_at_k: dict[int, Interval] = field(default_factory=dict)  # pass@k gains (sampled)
    queries: int = 0


def eval_queries(queries: pl.DataFrame, cfg: EvalConfig) -> pl.DataFrame:
    """The eval split, in query-id order, cut to max_queries."""
    held_out = queries.filter(pl.col("split") == "eval").sort("query_id")
    if held_out.height < 2:
        raise ValueError(f"the corpus has {held_out.height} eval queries; eval_report needs at "
                         "least 2 (raise corpus.eval_fraction or add an eval file)")
    return held_out.head(cfg.max_queries) if cfg.max_queries else held_out


def evaluate_model(label: str, model: str, prompt: PromptConfig, queries: pl.DataFrame,
                   cfg: EvalConfig, store: Store, device: str = "auto", dtype: str = "auto",
                   show_progress: bool = True, *, trust_remote_code: bool = False,
                   allow_pickle_weights: bool = False) -> ModelEval:
    """Greedy and sampled answers of one model on `queries`, verified. The load permissions
    are those of the config that owns the model (the student's for it and its checkpoints:
    ``**model_access(cfg.student)``); both off unless given."""
    started = time.perf_counter()
    runs = {"greedy": SamplingConfig(temperature=0.0, max_new_tokens=cfg.max_new_tokens,
                                     num_samples=1, seed=cfg.seed)}
    if cfg.num_samples:
        runs["sampled"] = SamplingConfig(temperature=cfg.temperature, top_k=cfg.top_k,
                                         top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                                         num_samples=cfg.num_samples, seed=cfg.seed)
    frames: dict[str, pl.DataFrame] = {}
    generated = tokens = 0
    for kind, sampling in runs.items():
        spec = GenerationSpec(model=model, prompt=prompt, sampling=sampling,
                              batch_size=cfg.batch_size, trust_remote_code=trust_remote_code,
                              allow_pickle_weights=allow_pickle_weights)
        summary = generate(spec, Namespace(EVAL, f"{label}-{kind}"), queries, store,
                           device=device, dtype=dtype, show_progress=show_progress)
        frames[kind] = verify_outputs(summary.outputs, queries)
        generated += summary.generated
        tokens += summary.tokens_generated
    greedy = frames["greedy"]
    greedy = greedy.with_columns(pl.Series("correct_lenient", [
        lenient_correct(r, ref, f == "length", c) for r, ref, f, c in zip(
            greedy["response"], greedy["reference_answer"], greedy["finish_reason"],
            greedy["correct"], strict=True)], dtype=pl.Boolean))
    per_query = greedy.select("query_id", pl.col("correct").cast(pl.Int64)
                              .alias("greedy_correct"),
                              pl.col("correct_lenient").cast(pl.Int64).alias("greedy_lenient"))
    sampled = frames.get("sampled")
    if sampled is not None:
        counts = sampled.group_by("query_id").agg(
            pl.len().alias("n"), pl.col("correct").cast(pl.Int64).sum().alias("c"))
        per_query = per_query.join(counts, on="query_id", how="left")
    return ModelEval(label, greedy, sampled, per_query.sort("query_id"), generated, tokens,
                     time.perf_counter() - started)


def model_metrics(ev: ModelEval, cfg: EvalConfig) -> dict[str, float]:
    g = ev.greedy
    out = {
        "pass@1_greedy": float(g["correct"].mean()),
        "pass@1_greedy_lenient": float(g["correct_lenient"].mean()),
        "extraction_failures": float((g["verdict"] == "no_answer").mean()),
        "truncated": float((g["finish_reason"] == "length").mean()),
        "mean_output_tokens": float(g["completion_tokens"].mean()),
    }
    if ev.sampled is not None:
        s, pq = ev.sampled, ev.per_query
        for k in cfg.reported_k:
            out[f"pass@{k}"] = mean_pass_at_k(pq["n"].to_list(), pq["c"].to_list(), k)
        out[f"mean@{cfg.num_samples}"] = float(s["correct"].mean())
        out["extraction_failures_sampled"] = float((s["verdict"] == "no_answer").mean())
        out["mean_output_tokens_sampled"] = float(s["completion_tokens"].mean())
    return out


def compare(base: ModelEval, distilled: ModelEval, cfg: EvalConfig) -> Comparison:
    """Metrics of both models and bootstrap intervals of the distilled-minus-base gains."""
    joined = base.per_query.join(distilled.per_query, on="query_id", suffix="_d", how="inner")
    if joined.height != base.per_query.height:
        raise ValueError("base and distilled were evaluated on different queries")
    ci = {"confidence": cfg.confidence, "resamples": cfg.bootstrap_resamples, "seed": cfg.seed}
    gain = paired_bootstrap_mean_diff(joined["greedy_correct_d"].to_numpy(),
                                      joined["greedy_correct"].to_numpy(), **ci)
    gain_lenient = paired_bootstrap_mean_diff(joined["greedy_lenient_d"].to_numpy(),
                                              joined["greedy_lenient"].to_numpy(), **ci)
    accuracy = {BASE: bootstrap_mean(joined["greedy_correct"].to_numpy(), **ci),
                DISTILLED: bootstrap_mean(joined["greedy_correct_d"].to_numpy(), **ci)}
    gains_at_k = {}
    if base.sampled is not None and distilled.sampled is not None:
        for k in cfg.reported_k:
            per_b = [pass_at_k(n, c, k) for n, c in zip(joined["n"], joined["c"], strict=True)]
            per_d = [pass_at_k(n, c, k) for n, c in zip(joined["n_d"], joined["c_d"],
                                                        strict=True)]
            gains_at_k[k] = paired_bootstrap_mean_diff(per_d, per_b, **ci)
    metrics = {BASE: model_metrics(base, cfg), DISTILLED: model_metrics(distilled, cfg)}
    return Comparison(metrics, gain, gain_lenient, accuracy, gains_at_k, joined.height)


def score_test_time_provenance(
    answers: pl.DataFrame,
    queries: pl.DataFrame,
    teacher: TeacherConfig,
    student: StudentConfig,
    distilled_model: str,
    prov: ProvenanceConfig,
    store: Store,
    device: str = "auto",
    dtype: str = "auto",
    show_progress: bool = True,
) -> pl.DataFrame:
    """One row per sentence of the distilled model's `answers`, with p under teacher, student,
    distilled and its category (categorize_three_way with prov.alpha and prov.beta)."""
    prompts = dict(zip(queries["query_id"], queries["prompt"], strict=True))
    if "response_lead" not in answers.columns:
        answers = answers.with_columns(pl.lit("").alias("response_lead"))
    rows = answers.select("query_id", "response", "response_lead", "correct").to_dicts()
    responses = [r["response"] for r in rows]
    # The distilled model is the student's checkpoint: it loads with the student's permissions.
    contexts = [("teacher", teacher.model, teacher.prompt, teacher),
                ("student", student.model, student.prompt, student),
                ("distilled", distilled_model, student.prompt, student)]
    scores = {}
    for name, model, prompt, owner in contexts:
        loaded = load_model(model, device, dtype, **model_access(owner))
        plain = resolve_style(prompt, loaded.tokenizer.chat_template is not None) == "plain"
        # The whitespace the distilled model emitted before its answer precedes the answer in
        # every context; a plain prompt ("... Answer:") is followed by a space in any case, as
        # the plain-style teacher itself generates one (see provenance.run).
        rendered = [render_prompt(prompt, prompts[r["query_id"]], loaded.tokenizer)
                    + (r["response_lead"] or (" " if plain else "")) for r in rows]
        scores[name], *_ = score_cached(store, loaded, rendered, responses, prov, plain,
                                        f"test-time {name}", show_progress)
    out: dict[str, list] = {k: [] for k in ("query_id", "correct", "sentence_index", "text",
                                            "lp_teacher", "lp_student", "lp_distilled")}
    for i, row in enumerate(rows):
        sentences = split_sentences(row["response"])
        if not sentences:
            continue
        means = {n: sentence_means(row["response"], scores[n][i], sentences) for n in scores}
        for j, sentence in enumerate(sentences):
            out["query_id"].append(row["query_id"])
            out["correct"].append(bool(row["correct"]))
            out["sentence_index"].append(sentence.index)
            out["text"].append(sentence.text)
            for n in scores:
                out[f"lp_{n}"].append(float(means[n][j]))
    frame = pl.DataFrame(out, schema_overrides={"lp_teacher": pl.Float64,
                                                "lp_student": pl.Float64,
                                                "lp_distilled": pl.Float64,
                                                "correct": pl.Boolean, "query_id": pl.Utf8,
                                                "text": pl.Utf8, "sentence_index": pl.Int64})
    frame = frame.with_columns(pl.col("lp_teacher").exp().alias("p_teacher"),
                               pl.col("lp_student").exp().alias("p_student"),
                               pl.col("lp_distilled").exp().alias("p_distilled"))
    categories = categorize_three_way(frame["p_teacher"].to_numpy(),
                                      frame["p_student"].to_numpy(),
                                      frame["p_distilled"].to_numpy(), prov.alpha, prov.beta)
    return frame.with_columns(pl.Series("category", list(categories), dtype=pl.Utf8))


def category_shares(sentences: pl.DataFrame) -> pl.DataFrame:
    """Share of each category among sentences of correct answers, incorrect answers, and all."""
    from distill_dag.provenance.categories import THREE_WAY_CATEGORIES

    groups = {"correct": sentences.filter(pl.col("correct")),
              "incorrect": sentences.filter(~pl.col("correct")), "all": sentences}
    rows = []
    for category in THREE_WAY_CATEGORIES:
        row: dict[str, object] = {"category": category}
        for name, part in groups.items():
            n = part.height
            row[name] = float((part["category"] == category).sum() / n) if n else np.nan
            row[f"n_{name}"] = int((part["category"] == category).sum())
        rows.append(row)
    return pl.DataFrame(rows)
