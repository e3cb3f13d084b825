"""teacher_selection: measure every teacher on the same queries; rank them by an explicit rule."""


import dagster as dg

from assets._common import content_version, fail, retry_policy, stale_or_updated
from distill_dag.config import ProjectConfig
from distill_dag.generation.run import teacher_change_notes
from distill_dag.selection import compute_teacher_metrics, rank_teachers
from resources import ProjectResource, StoreResource

STAGE_VERSION = "1"


def build(project: ProjectConfig) -> list:
    @dg.asset(
        group_name="distill",
        automation_condition=stale_or_updated(),
        retry_policy=retry_policy(project),
        deps=["provenance_scores", "teacher_outputs"],
        code_version=f"{STAGE_VERSION}+{project.section_hash('selection')}",
        kinds={"duckdb"},
        description="Per teacher on the common queries: pass rate, yield, length mean/std, "
                    "student perplexity of correct outputs, mean pT - pS, Teacher-sentence "
                    "fraction, tokens and seconds. Ranked by the configured lexicographic rule; "
                    "the table, the rule and the reasons are in the metadata.",
    )
    def teacher_selection(context: dg.AssetExecutionContext, project: ProjectResource,
                          store: StoreResource):
        cfg = project.load()
        db = store.store()
        names = [t.name for t in cfg.teachers]
        samples = db.query("SELECT * FROM provenance_samples WHERE list_contains(?, teacher)",
                           [names])
        sentences = db.query("SELECT teacher, query_id, sample_index, category, d_ts FROM "
                             "provenance_sentences WHERE list_contains(?, teacher)", [names])
        for note in teacher_change_notes(db, names):  # a renamed or removed teacher
            context.log.warning(note)
        missing = sorted(set(names) - set(samples["teacher"].unique()))
        if missing:
            context.log.warning(f"teachers without provenance scores yet (not ranked): {missing}")
        if samples.is_empty():
            raise fail("teacher_selection: no teacher has provenance scores; "
                       "materialize teacher_outputs and provenance_scores first")
        metrics = compute_teacher_metrics(samples, sentences)
        try:
            ranking = rank_teachers(metrics, cfg.selection)
        except ValueError as exc:
            raise fail(f"teacher_selection: {exc}") from exc
        db.write_table("teacher_metrics", ranking.table)
        context.log.info(ranking.explanation)
        return dg.MaterializeResult(
            metadata={
                "chosen": ", ".join(ranking.chosen),
                "teachers_ranked": ranking.table.height,
                "teachers_missing": ", ".join(missing) or "none",
                "rule": dg.MetadataValue.md(cfg.selection.describe()),
                "table": dg.MetadataValue.md(ranking.to_markdown()),
                "explanation": dg.MetadataValue.md(ranking.explanation),
                **{f"{row['teacher']}/{m}": float(row[m])
                   for row in ranking.table.iter_rows(named=True)
                   for m in ("pass_rate", "yield_per_query", "teacher_sentence_fraction")
                   if row[m] is not None},
            },
            data_version=content_version(ranking.table, ["teacher", "rank", "chosen"]),
        )

    return [teacher_selection]
