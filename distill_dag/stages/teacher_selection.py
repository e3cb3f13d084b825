"""teacher_selection: measure every teacher on the same queries; rank them by an explicit rule."""

from __future__ import annotations

import polars as pl

from distill_dag import tables
from distill_dag.config import ProjectConfig
from distill_dag.configbase import stable_hash
from distill_dag.errors import StageError
from distill_dag.generation.run import teacher_change_notes
from distill_dag.selection import (
    RankingResult,
    compute_teacher_metrics,
    proxy_agreement,
    rank_teachers,
    sample_costs,
)
from distill_dag.stage import Markdown, StageContext, StageOutput, content_version
from distill_dag.stages.trial_distillation import run_trials


def settings(project: ProjectConfig) -> str:
    """What teacher_selection's table depends on beyond its inputs' data: the ranking rule and
    the prices; with trial distillation on, also what trains and scores the trial students."""
    sections = ["teacher_ranking"]
    if project.teacher_ranking.trial.enabled:
        sections += ["student", "training", "filtering", "evaluation"]
    prices = {t.name: t.prices() for t in project.teachers if any(t.prices().values())}
    return project.section_hash(*sections) + (f"+{stable_hash(prices, length=8)}"
                                              if prices else "")


def _with_trial(ctx: StageContext, metrics: pl.DataFrame
                ) -> tuple[pl.DataFrame, dict, dict[str, int]]:
    """The metrics with each eligible teacher's trial score joined on, the trial's metadata
    and work counters."""
    rule = ctx.project.teacher_ranking
    eligible = metrics.filter(pl.col("pass_rate") >= rule.min_pass_rate)["teacher"].to_list()
    trial = run_trials(ctx, eligible, rule.trial)
    meta = {"trial_dev_queries": trial.dev_queries,
            "trial_base_pass_at_1": round(trial.base_pass_at_1, 4),
            "trial_steps_run_now": trial.steps_run,
            "trial_generated_now": trial.generated}
    return (metrics.join(trial.table, on="teacher", how="left"), meta,
            {"trial_training_steps": trial.steps_run, "trial_generations": trial.generated})


def _agreement_markdown(agreement: pl.DataFrame, ranking: RankingResult) -> str:
    """Kendall tau per proxy against the trial, and whether the rule chose the trial's best."""
    scored = ranking.table.filter(pl.col("trial_pass_at_1").is_not_null())
    best = (scored.sort("trial_pass_at_1", descending=True)["teacher"][0]
            if scored.height else None)
    lines = ["| proxy | better | Kendall tau vs trial | teachers | agrees |",
             "|---|---|---|---|---|"]
    for row in agreement.iter_rows(named=True):
        tau = "n/a" if row["kendall_tau"] is None else f"{row['kendall_tau']:+.2f}"
        agrees = {None: "n/a", True: "yes", False: "no"}[row["agrees"]]
        lines.append(f"| {row['metric']} | {row['better']} | {tau} | {row['teachers']} | "
                     f"{agrees} |")
    if best is not None:
        verdict = "agrees" if best in ranking.chosen else "disagrees"
        lines += ["", f"The trial's best teacher is {best}; the rule chose "
                      f"{', '.join(ranking.chosen)}: the ranking {verdict} with the trial."]
    return "\n".join(lines)


def run(ctx: StageContext) -> StageOutput:
    cfg = ctx.project
    db = ctx.store
    names = [t.name for t in cfg.teachers]
    samples = db.query(f"SELECT p.*, o.prompt_tokens FROM {tables.PROVENANCE_SAMPLES} p "
                       f"LEFT JOIN {tables.TEACHER_OUTPUTS} o USING (request_key, teacher) "
                       "WHERE list_contains(?, p.teacher)", [names])
    samples = samples.with_columns(sample_costs(
        samples, {t.name: t.prices() for t in cfg.teachers}))
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
    trial_meta: dict = {}
    work: dict[str, int] = {}
    if rule.trial.enabled:
        metrics, trial_meta, work = _with_trial(ctx, metrics)
    try:
        ranking = rank_teachers(metrics, rule)
    except ValueError as exc:
        raise StageError(f"teacher_selection: {exc}") from exc
    if rule.trial.enabled:
        agreement = proxy_agreement(ranking.table)
        trial_meta["proxy_agreement"] = Markdown(_agreement_markdown(agreement, ranking))
        ctx.log.info(_agreement_markdown(agreement, ranking))
    db.write_table(tables.TEACHER_METRICS, ranking.table)
    ctx.log.info(ranking.explanation)
    return StageOutput(
        tables={tables.TEACHER_METRICS: ranking.table},
        work=work,
        metadata={
            "chosen": ", ".join(ranking.chosen),
            "teachers_ranked": ranking.table.height,
            "teachers_missing": ", ".join(missing) or "none",
            "rule": Markdown(rule.describe()),
            "table": Markdown(ranking.to_markdown()),
            "explanation": Markdown(ranking.explanation),
            **{f"{row['teacher']}/{m}": float(row[m])
               for row in ranking.table.iter_rows(named=True)
               for m in ("pass_rate", "yield_per_query", "teacher_sentence_fraction",
                         "tokens_per_correct", "seconds_per_correct", "cost_per_correct",
                         "trial_pass_at_1")
               if row.get(m) is not None},
            **trial_meta,
        },
        data_version=content_version(ranking.table, ["teacher", "rank", "chosen"]),
    )
