"""Trial distillation in teacher_selection: a short fine-tune per teacher on the real student,
scored on a dev slice of the training split, memoized, and ranked by when the rule asks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl
import pytest
import yaml

from distill_dag import tables
from distill_dag.config import load_project_config
from distill_dag.configbase import ConfigError
from distill_dag.stage import StageContext
from distill_dag.stages import stage
from distill_dag.stages.trial_distillation import dev_slice, teacher_records

TINY = Path(__file__).parent / "configs" / "tiny.yaml"
TRIAL = {"steps": 2, "queries": 4, "dev_queries": 4}


def project_with(tmp_path: Path, ranking: dict, name: str = "trial.yaml"):
    config = yaml.safe_load(TINY.read_text())
    # Two teachers that both solve some queries (the tiny zero-shot one rarely does): both trial.
    config["teachers"][1] = {**config["teachers"][0], "name": "fewshot4",
                             "prompt": {**config["teachers"][0]["prompt"], "few_shot": 4}}
    config["teacher_ranking"] = {"min_pass_rate": 0.0, **ranking}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return load_project_config(path)


def upstream(ctx: StageContext) -> None:
    for name in ("query_corpus", "teacher_outputs", "provenance_scores"):
        s = stage(name)
        for partition in ([t.name for t in ctx.project.teachers] if s.partitioned else [None]):
            s.run(dataclasses.replace(ctx, partition=partition))


def test_trial_distillation_scores_each_teacher_and_reuses_its_work(tmp_path):
    project = project_with(tmp_path, {
        "trial": TRIAL, "order_by": ["trial_pass_at_1 desc", "yield_per_query desc"]})
    ctx = StageContext.local(project, tmp_path / "home", device="cpu", show_progress=False)
    upstream(ctx)
    selection = stage("teacher_selection")
    assert selection.gpus(project) == 1  # it trains: a GPU slot where there is one
    out = selection.run(ctx)
    table = out.tables[tables.TEACHER_METRICS]
    assert set(table["teacher"]) == {"fewshot", "fewshot4"}

    queries = ctx.store.read_table(tables.QUERIES)
    dev = dev_slice(queries, project.teacher_ranking.trial)
    eval_ids = set(queries.filter(pl.col("split") == "eval")["query_id"])
    assert dev.height == 4 and not set(dev["query_id"]) & eval_ids  # never the eval split
    trialed = table.filter(pl.col("trial_pass_at_1").is_not_null())
    for row in table.iter_rows(named=True):
        records, _ = teacher_records(ctx, row["teacher"], queries, dev,
                                     project.teacher_ranking.trial)
        assert not set(records["query_id"]) & (set(dev["query_id"]) | eval_ids)
        assert row["trial_records"] == records.height <= 4
        if row["trial_pass_at_1"] is None:  # no correct sample outside the dev slice
            assert records.is_empty() and row["trial_note"]
        else:
            assert row["trial_low"] <= row["trial_pass_at_1"] <= row["trial_high"]
            assert row["trial_steps"] == 2
    assert trialed.height == 2, table
    # The rule ranks by the trial first: scores fall (or tie) down the ranks.
    scores = table.sort("rank")["trial_pass_at_1"].drop_nulls().to_list()
    assert scores == sorted(scores, reverse=True)
    assert out.metadata["trial_dev_queries"] == 4
    assert out.work["trial_training_steps"] == 2 * trialed.height
    agreement = str(out.metadata["proxy_agreement"])
    assert "| pass_rate | higher |" in agreement and "| 2 |" in agreement  # both teachers
    assert "The trial's best teacher is" in agreement

    # Memoized per teacher data version: a rerun trains and generates nothing.
    again = selection.run(ctx)
    assert again.work == {"trial_training_steps": 0, "trial_generations": 0}
    assert again.tables[tables.TEACHER_METRICS].equals(table)
    # The trial's settings are part of the stage's version; the proxies' rule alone is not.
    longer = project_with(tmp_path, {"trial": {**TRIAL, "steps": 3},
                                     "order_by": ["trial_pass_at_1 desc"]}, "longer.yaml")
    assert selection.code_version(longer) != selection.code_version(project)
    off = project_with(tmp_path, {}, "off.yaml")
    assert selection.gpus(off) == 0 and "trial_pass_at_1" not in \
        selection.run(dataclasses.replace(ctx, project=off)).tables[tables.TEACHER_METRICS].columns


def test_an_unknown_trial_objective_is_named_at_load(tmp_path):
    with pytest.raises(ConfigError, match=r"teacher_ranking\.trial\.objective must be one of"):
        project_with(tmp_path, {"trial": {"steps": 2, "objective": "dpo"}})

