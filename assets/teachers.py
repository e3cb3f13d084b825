"""teacher_outputs: k verified samples per training query, one partition per teacher."""


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
from distill_dag import verify
from distill_dag.config import ProjectConfig
from distill_dag.generation.openai_backend import EndpointError
from distill_dag.generation.run import generate_teacher_outputs, verify_outputs
from distill_dag.generation.vllm_backend import VLLMSetupError, VLLMUnavailable
from distill_dag.models import ModelResolutionError
from resources import ProjectResource, RuntimeResource, StoreResource

STAGE_VERSION = "1"


def build(project: ProjectConfig, teachers: dg.PartitionsDefinition) -> list:
    @dg.asset(
        group_name="distill",
        automation_condition=stale_or_updated(),
        retry_policy=retry_policy(project),
        partitions_def=teachers,
        # teacher_config (same partition) carries this teacher's settings as a data version, so
        # editing one teacher makes only its partition stale; the code version covers the code
        # and the verifier, whose bump re-verifies stored samples without regenerating them.
        deps=["query_corpus", "teacher_config"],
        code_version=f"{STAGE_VERSION}+verifier{verify.VERIFIER_VERSION}",
        kinds={"pytorch", "duckdb"},
        pool="gpu",
        op_tags=project.orchestration.gpu_op_tags(project.teacher_gpus()),
        check_specs=[
            dg.AssetCheckSpec("all_samples_present", asset="teacher_outputs",
                              description="Every training query has k samples."),
            dg.AssetCheckSpec("some_correct", asset="teacher_outputs",
                              description="The teacher solves at least one training query."),
        ],
        description="Samples from one teacher (partition): text, token counts, finish reason, "
                    "latency and per-token log-probs, verified with math-verify. Every request "
                    "is stored under a hash of what determines it as soon as its batch "
                    "completes: reruns and crash resumes never generate it again.",
    )
    def teacher_outputs(context: dg.AssetExecutionContext, project: ProjectResource,
                        store: StoreResource, runtime: RuntimeResource):
        cfg = project.load()
        teacher = cfg.teacher(context.partition_key)
        db = store.store()
        queries = db.read_table("queries")
        train = queries.filter(pl.col("split") == "train")
        try:
            summary = generate_teacher_outputs(teacher, train, db, device=runtime.device,
                                               dtype=runtime.dtype,
                                               show_progress=runtime.show_progress)
        except (ModelResolutionError, VLLMUnavailable, VLLMSetupError) as exc:
            raise fail(f"teacher {teacher.name!r} (teachers[].model): {exc}") from exc
        except EndpointError as exc:  # finished samples are stored; a rerun resumes after them
            if not exc.retryable:
                raise fail(str(exc)) from exc
            raise dg.Failure(description=str(exc)) from exc
        outputs = verify_outputs(summary.outputs, queries)
        db.replace_rows("teacher_outputs", outputs, "teacher", teacher.name)

        k = teacher.sampling.num_samples
        per_query = outputs.group_by("query_id").len()
        incomplete = train.height - per_query.filter(pl.col("len") == k).height
        correct = int(outputs["correct"].sum())
        tok_s = summary.tokens_generated / summary.seconds if summary.generated else 0.0
        context.log.info(f"{teacher.name}: {summary.generated} generated, "
                         f"{summary.requests - summary.generated} from the store, "
                         f"{summary.tokens_generated} tokens at {tok_s:.1f} tok/s; "
                         f"{correct}/{outputs.height} correct")
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": outputs.height,
                "requests": summary.requests,
                "generated_now": summary.generated,
                "from_store": summary.requests - summary.generated,
                "tokens_generated_now": summary.tokens_generated,
                "generation_seconds": round(summary.seconds, 2),
                "tokens_per_second": round(tok_s, 1),
                "pass_rate": round(correct / max(outputs.height, 1), 4),
                "correct": correct,
                "no_answer": int((outputs["verdict"] == "no_answer").sum()),
                "truncated": int((outputs["finish_reason"] == "length").sum()),
                "mean_completion_tokens": round(float(outputs["completion_tokens"].mean() or 0),
                                                1),
                "model": teacher.model,
                **{f"endpoint_{k}": (round(v, 6) if isinstance(v, float) else v)
                   for k, v in summary.endpoint_usage.items()},
                **work_counters(samples_generated=summary.generated,
                                tokens_generated=summary.tokens_generated,
                                samples_verified=outputs.height),
                "preview": preview(outputs, ["query_id", "sample_index", "correct",
                                             "extracted_answer", "response"]),
            },
            data_version=content_version(outputs, ["request_key", "response", "correct",
                                                   "verifier_version"]),
            check_results=[
                dg.AssetCheckResult(check_name="all_samples_present", passed=incomplete == 0,
                                    metadata={"queries_missing_samples": incomplete}),
                dg.AssetCheckResult(check_name="some_correct", passed=correct > 0,
                                    severity=dg.AssetCheckSeverity.WARN,
                                    metadata={"correct": correct}),
            ],
        )

    return [teacher_outputs]
