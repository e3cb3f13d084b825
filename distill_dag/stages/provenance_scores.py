"""provenance_scores: each sentence's probability under teacher and student, and its category."""

from __future__ import annotations

import polars as pl

from distill_dag import tables
from distill_dag.errors import DistillError, StageError
from distill_dag.generation.registry import make_backend
from distill_dag.models import load_model, model_access
from distill_dag.provenance.run import score_provenance
from distill_dag.stage import WARN, Check, StageContext, StageOutput, content_version, preview


def run(ctx: StageContext) -> StageOutput:
    cfg = ctx.project
    teacher = cfg.teacher(ctx.partition)
    db = ctx.store
    queries = db.read_table(tables.QUERIES)
    outputs = db.read_table(tables.TEACHER_OUTPUTS, "teacher = ?", [teacher.name])
    unscored = outputs.filter((pl.col("token_logprobs").list.len() == 0)
                              & (pl.col("response").str.len_chars() > 0))
    need_teacher = cfg.provenance.teacher_logprobs == "rescore" or unscored.height > 0
    teacher_scorer = None
    try:
        student = load_model(cfg.student.model, ctx.device, ctx.dtype,
                             **model_access(cfg.student))
        # The teacher backend's own scorer: its engine (transformers, vLLM) or, for an HTTP
        # teacher, a local copy of the model.
        if need_teacher:
            teacher_scorer = make_backend(teacher, ctx.device, ctx.dtype).scorer()
        summary = score_provenance(outputs, queries, teacher, cfg.student, cfg.provenance, db,
                                   teacher_scorer, student, show_progress=ctx.show_progress)
    except DistillError as exc:
        raise StageError(f"provenance_scores[{teacher.name}]: {exc}",
                         retryable=exc.retryable) from exc
    finally:
        if hasattr(teacher_scorer, "close"):
            teacher_scorer.close()  # a vLLM engine holds the GPU the next steps need
    rescored = int((summary.samples["teacher_logprob_source"] == "rescore").sum())
    if rescored and cfg.provenance.teacher_logprobs != "rescore":
        ctx.log.warning(f"{teacher.name}: {rescored} samples came without log-probs (backend "
                        f"{teacher.backend}); the teacher was scored "
                        f"{'locally ' if teacher.backend == 'openai' else ''}with {teacher.model}")
    db.replace_rows(tables.PROVENANCE_SENTENCES, summary.sentences, "teacher", teacher.name)
    db.replace_rows(tables.PROVENANCE_SAMPLES, summary.samples, "teacher", teacher.name)

    sentences = summary.sentences
    counts = {c: int((sentences["category"] == c).sum())
              for c in ("teacher", "student", "common", "unscored")}
    total = max(sentences.height, 1)
    tok_s = summary.scored_tokens / summary.scoring_seconds if summary.scored else 0.0
    return StageOutput(
        row_count=sentences.height,
        tables={tables.PROVENANCE_SENTENCES: sentences, tables.PROVENANCE_SAMPLES: summary.samples},
        metadata={
            "samples": summary.samples.height,
            "scored_now": summary.scored,
            "scored_tokens_now": summary.scored_tokens,
            "scoring_tokens_per_second": round(tok_s, 1),
            "seconds": round(summary.seconds, 2),
            **{f"share_{c}": round(n / total, 4) for c, n in counts.items()},
            "mean_d_ts": round(float(sentences["d_ts"].mean() or 0.0), 4),
            "beta": cfg.provenance.beta,
            "teacher_logprob_source": ", ".join(
                sorted(set(summary.samples["teacher_logprob_source"].drop_nulls()))),
            "preview": preview(sentences, ["query_id", "sentence_index", "category",
                                           "p_teacher", "p_student", "text"], rows=8),
        },
        work={"sequences_scored": summary.scored, "tokens_scored": summary.scored_tokens},
        data_version=content_version(sentences, ["request_key", "sentence_index", "category",
                                                 "lp_teacher", "lp_student"]),
        checks=[Check("all_sentences_scored", passed=counts["unscored"] == 0, severity=WARN,
                      metadata={"unscored": counts["unscored"]})],
    )
