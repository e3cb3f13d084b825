"""provenance_scores: each sentence's probability under teacher and student, and its category."""


import dagster as dg
import polars as pl

from assets._common import (
    content_version,
    fail,
    preview,
    retry_policy,
    stale_or_updated,
    work_counters,
)
from distill_dag.config import ProjectConfig
from distill_dag.generation.backend import make_backend
from distill_dag.generation.vllm_backend import VLLMSetupError, VLLMUnavailable
from distill_dag.models import ModelResolutionError, load_model
from distill_dag.provenance.run import score_provenance
from resources import ProjectResource, RuntimeResource, StoreResource

STAGE_VERSION = "1"


def build(project: ProjectConfig, teachers: dg.PartitionsDefinition) -> list:
    @dg.asset(
        group_name="distill",
        automation_condition=stale_or_updated(),
        retry_policy=retry_policy(project),
        partitions_def=teachers,
        deps=["teacher_outputs"],
        code_version=f"{STAGE_VERSION}+{project.section_hash('student', 'provenance')}",
        kinds={"pytorch", "duckdb"},
        pool="gpu",
        op_tags=project.orchestration.gpu_op_tags(project.teacher_gpus()),
        check_specs=[
            dg.AssetCheckSpec("all_sentences_scored", asset="provenance_scores",
                              description="Every sentence has a teacher and a student score."),
        ],
        description="Sentence provenance (arXiv 2512.20908): split each response into "
                    "sentences, score each under the teacher (its own few-shot context) and the "
                    "original student (zero-shot), p = exp(mean token log-prob); Teacher if "
                    "pT - pS > beta, Student if < -beta, else Common.",
    )
    def provenance_scores(context: dg.AssetExecutionContext, project: ProjectResource,
                          store: StoreResource, runtime: RuntimeResource):
        cfg = project.load()
        teacher = cfg.teacher(context.partition_key)
        db = store.store()
        queries = db.read_table("queries")
        outputs = db.read_table("teacher_outputs", "teacher = ?", [teacher.name])
        unscored = outputs.filter((pl.col("token_logprobs").list.len() == 0)
                                  & (pl.col("response").str.len_chars() > 0))
        need_teacher = cfg.provenance.teacher_logprobs == "rescore" or unscored.height > 0
        try:
            student = load_model(cfg.student.model, runtime.device, runtime.dtype)
            # The teacher backend's own scorer: its engine (transformers, vLLM) or, for an
            # HTTP teacher, a local copy of the model.
            teacher_scorer = (make_backend(teacher, runtime.device, runtime.dtype).scorer()
                              if need_teacher else None)
        except (ModelResolutionError, VLLMUnavailable) as exc:
            raise fail(f"provenance_scores[{teacher.name}] (student.model or "
                       f"teachers[].model): {exc}") from exc
        try:
            summary = score_provenance(outputs, queries, teacher, cfg.student, cfg.provenance,
                                       db, teacher_scorer, student,
                                       show_progress=runtime.show_progress)
        except (VLLMUnavailable, VLLMSetupError) as exc:
            raise fail(f"provenance_scores[{teacher.name}] (teachers[].vllm): {exc}") from exc
        finally:
            if hasattr(teacher_scorer, "close"):
                teacher_scorer.close()  # a vLLM engine holds the GPU the next steps need
        rescored = int((summary.samples["teacher_logprob_source"] == "rescore").sum())
        if rescored and cfg.provenance.teacher_logprobs != "rescore":
            context.log.warning(f"{teacher.name}: {rescored} samples came without log-probs "
                                f"(backend {teacher.backend}); the teacher was scored "
                                f"{'locally ' if teacher.backend == 'openai' else ''}"
                                f"with {teacher.model}")
        db.replace_rows("provenance_sentences", summary.sentences, "teacher", teacher.name)
        db.replace_rows("provenance_samples", summary.samples, "teacher", teacher.name)

        sentences = summary.sentences
        counts = {c: int((sentences["category"] == c).sum())
                  for c in ("teacher", "student", "common", "unscored")}
        total = max(sentences.height, 1)
        tok_s = summary.scored_tokens / summary.scoring_seconds if summary.scored else 0.0
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": sentences.height,
                "samples": summary.samples.height,
                "scored_now": summary.scored,
                "scored_tokens_now": summary.scored_tokens,
                "scoring_tokens_per_second": round(tok_s, 1),
                "seconds": round(summary.seconds, 2),
                **{f"share_{c}": round(n / total, 4) for c, n in counts.items()},
                "mean_d_ts": round(float(sentences["d_ts"].mean() or 0.0), 4),
                "beta": cfg.provenance.beta,
                **work_counters(sequences_scored=summary.scored,
                                tokens_scored=summary.scored_tokens),
                "teacher_logprob_source": ", ".join(
                    sorted(set(summary.samples["teacher_logprob_source"].drop_nulls()))),
                "preview": preview(sentences, ["query_id", "sentence_index", "category",
                                               "p_teacher", "p_student", "text"], rows=8),
            },
            data_version=content_version(sentences, ["request_key", "sentence_index",
                                                     "category", "lp_teacher", "lp_student"]),
            check_results=[dg.AssetCheckResult(
                check_name="all_sentences_scored", passed=counts["unscored"] == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"unscored": counts["unscored"]})],
        )

    return [provenance_scores]
