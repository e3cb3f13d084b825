"""teacher_selection: measure every teacher on the same queries; rank them by an explicit rule."""

from __future__ import annotations

from distill_dag import tables
from distill_dag.errors import StageError
from distill_dag.generation.run import teacher_change_notes
from distill_dag.selection import compute_teacher_metrics, rank_teachers
from distill_dag.stage import Markdown, StageContext, StageOutput, content_version


def run(ctx: StageContext) -> StageOutput:
    cfg = ctx.project
    db = ctx.store
    names = [t.name for t in cfg.teachers]
    samples = db.query(f"SELECT * FROM {tables.PROVENANCE_SAMPLES} "
                       "WHERE list_contains(?, teacher)", [names])
    sentences = db.query("SELECT teacher, query_id, sample_index, category, d_ts FROM "
                         f"{tables.PROVENANCE_SENTENCES} WHERE list_contains(?, teacher)",
                         [names])
    for note in teacher_change_notes(db, names):  # a renamed or removed teacher
        ctx.log.warning(note)
    missing = sorted(set(names) - set(samples["teacher"].unique()))
    if missing:
        ctx.log.warning(f"teachers without provenance scores yet (not ranked): {missing}")
    if samples.is_empty():
        raise StageError("teacher_selection: no teacher has provenance scores; "
                         "materialize teacher_outputs and provenance_scores first")
    metrics = compute_teacher_metrics(samples, sentences)
    rule = cfg.teacher_ranking
    try:
        ranking = rank_teachers(metrics, rule)
    except ValueError as exc:
        raise StageError(f"teacher_selection: {exc}") from exc
    db.write_table(tables.TEACHER_METRICS, ranking.table)
    ctx.log.info(ranking.explanation)
    return StageOutput(
        tables={tables.TEACHER_METRICS: ranking.table},
        metadata={
            "chosen": ", ".join(ranking.chosen),
            "teachers_ranked": ranking.table.height,
            "teachers_missing": ", ".join(missing) or "none",
            "rule": Markdown(rule.describe()),
            "table": Markdown(ranking.to_markdown()),
            "explanation": Markdown(ranking.explanation),
            **{f"{row['teacher']}/{m}": float(row[m])
               for row in ranking.table.iter_rows(named=True)
               for m in ("pass_rate", "yield_per_query", "teacher_sentence_fraction")
               if row[m] is not None},
        },
        data_version=content_version(ranking.table, ["teacher", "rank", "chosen"]),
    )
