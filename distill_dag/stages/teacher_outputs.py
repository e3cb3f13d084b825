"""teacher_outputs: k verified samples per training query from one teacher (a partition)."""

from __future__ import annotations

import polars as pl

from distill_dag import tables
from distill_dag.errors import DistillError, StageError
from distill_dag.generation.run import generate_teacher_outputs, verify_outputs
from distill_dag.stage import WARN, Check, StageContext, StageOutput, content_version, preview


def run(ctx: StageContext) -> StageOutput:
    teacher = ctx.project.teacher(ctx.partition)
    db = ctx.store
    queries = db.read_table(tables.QUERIES)
    train = queries.filter(pl.col("split") == "train")
    try:
        summary = generate_teacher_outputs(teacher, train, db, device=ctx.device,
                                           dtype=ctx.dtype, show_progress=ctx.show_progress)
    except DistillError as exc:  # finished samples are stored; a rerun resumes after them
        raise StageError(f"teacher {teacher.name!r}: {exc}", retryable=exc.retryable) from exc
    outputs = verify_outputs(summary.outputs, queries)
    db.replace_rows(tables.TEACHER_OUTPUTS, outputs, "teacher", teacher.name)

    k = teacher.sampling.num_samples
    per_query = outputs.group_by("query_id").len()
    incomplete = train.height - per_query.filter(pl.col("len") == k).height
    correct = int(outputs["correct"].sum())
    tok_s = summary.tokens_generated / summary.seconds if summary.generated else 0.0
    ctx.log.info(f"{teacher.name}: {summary.generated} generated, "
                 f"{summary.requests - summary.generated} from the store, "
                 f"{summary.tokens_generated} tokens at {tok_s:.1f} tok/s; "
                 f"{correct}/{outputs.height} correct")
    return StageOutput(
        row_count=outputs.height,
        tables={tables.TEACHER_OUTPUTS: outputs},
        metadata={
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
            "mean_completion_tokens": round(float(outputs["completion_tokens"].mean() or 0), 1),
            "model": teacher.model,
            **{f"endpoint_{k}": (round(v, 6) if isinstance(v, float) else v)
               for k, v in summary.endpoint_usage.items()},
            "preview": preview(outputs, ["query_id", "sample_index", "correct",
                                         "extracted_answer", "response"]),
        },
        work={"samples_generated": summary.generated,
              "tokens_generated": summary.tokens_generated,
              "samples_verified": outputs.height},
        data_version=content_version(outputs, ["request_key", "response", "correct",
                                               "verifier_version"]),
        checks=[
            Check("all_samples_present", passed=incomplete == 0,
                  metadata={"queries_missing_samples": incomplete}),
            Check("some_correct", passed=correct > 0, severity=WARN,
                  metadata={"correct": correct}),
        ],
    )
