"""The declared stage list is the single source of the DAG: the assets' deps, code versions,
partitions, pools and checks, the run order and the stale engine all derive from it. A new stage
is one function and one entry; the stage functions also run without Dagster."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest

from distill_dag import tables
from distill_dag.config import load_project_config
from distill_dag.orchestration.definitions import build_definitions, run_plan
from distill_dag.orchestration.stale import materialize_stale, partitioned_names, stage_names
from distill_dag.stage import (
    Check,
    CheckSpec,
    Stage,
    StageContext,
    StageOutput,
    content_version,
    in_order,
    upstream,
    writers,
)
from distill_dag.stages import STAGES, query_corpus
from tests.conftest import TINY_CONFIG

DAG = ["query_corpus", "teacher_outputs", "provenance_scores", "teacher_selection",
       "filtered_dataset", "distilled_checkpoint", "eval_report"]


def test_the_declared_order_is_the_dag():
    assert [s.name for s in in_order(STAGES)] == DAG
    assert stage_names() == DAG
    assert partitioned_names() == ["teacher_outputs", "provenance_scores"]


def test_every_table_has_one_owner_and_every_read_table_a_writer():
    owner = writers(STAGES)
    declared = {v for k, v in vars(tables).items() if k.isupper()}
    assert set(owner) == declared
    for stage in STAGES:
        assert set(stage.reads) <= set(owner), stage.name


def test_two_writers_of_one_table_and_dependency_cycles_are_errors():
    def noop(ctx):
        return StageOutput(data_version="x")

    a = Stage("a", noop, "", reads=("t2",), writes=("t1",))
    b = Stage("b", noop, "", reads=("t1",), writes=("t2",))
    with pytest.raises(ValueError, match="cycle: a -> b -> a"):
        in_order([a, b])
    with pytest.raises(ValueError, match="written by both"):
        writers([a, Stage("c", noop, "", writes=("t1",))])
    with pytest.raises(ValueError, match="which no stage writes"):
        upstream(Stage("d", noop, "", reads=("nowhere",)), [a])


def test_assets_derive_from_the_declarations():
    project = load_project_config(TINY_CONFIG)
    defs = build_definitions(TINY_CONFIG, home="unused")
    graph = defs.resolve_asset_graph()
    for stage in STAGES:
        node = graph.get(dg.AssetKey(stage.name))
        parents = {k.to_user_string() for k in node.parent_keys}
        assert parents == {*stage.observes, *upstream(stage, STAGES)}, stage.name
        assert node.code_version == stage.code_version(project)
        assert (node.partitions_def is not None) == stage.partitioned
        assert {c.name for c in node.check_keys} == {c.name for c in stage.checks}
        assert (node.pools == {"gpu"}) == (stage.gpus(project) > 0), stage.name
    # Editing a section a stage declares changes that stage's code version only.
    edited = load_project_config(TINY_CONFIG)
    edited.evaluation.max_new_tokens += 1
    changed = [s.name for s in STAGES if s.code_version(edited) != s.code_version(project)]
    assert changed == ["eval_report"]


def test_the_run_plan_groups_partitioned_stages_per_teacher():
    assert run_plan(STAGES, ["t1", "t2"]) == [
        (["query_corpus"], None),
        (["teacher_outputs", "provenance_scores"], "t1"),
        (["teacher_outputs", "provenance_scores"], "t2"),
        (["teacher_selection", "filtered_dataset", "distilled_checkpoint", "eval_report"], None),
    ]


# -- a new stage: one function, one entry ---------------------------------------------------------

def query_lengths(ctx: StageContext) -> StageOutput:
    """A trivial stage: prompt lengths per split."""
    queries = ctx.store.read_table(tables.QUERIES)
    lengths = queries.group_by("split").agg(pl.col("prompt").str.len_chars().mean()
                                            .alias("mean_chars")).sort("split")
    ctx.store.write_table("query_lengths", lengths)
    return StageOutput(data_version=content_version(lengths, ["split", "mean_chars"]),
                       metadata={"splits": lengths.height}, tables={"query_lengths": lengths},
                       checks=[Check("has_eval", passed="eval" in lengths["split"].to_list())],
                       work={"queries_measured": queries.height}, row_count=lengths.height)


QUERY_LENGTHS = Stage("query_lengths", query_lengths, "Mean prompt length per split.",
                      reads=(tables.QUERIES,), writes=("query_lengths",),
                      config_sections=("corpus",),
                      checks=(CheckSpec("has_eval", "The eval split has queries."),))


def test_a_new_stage_is_one_function_and_one_entry(tmp_path):
    order = [s.name for s in in_order([QUERY_LENGTHS, *STAGES])]  # declared first, runs later
    assert order.index("query_lengths") == order.index("query_corpus") + 1
    # Materialized in a DAG of the corpus and the new stage (no models to run).
    stages = [STAGES[0], QUERY_LENGTHS]
    defs = build_definitions(TINY_CONFIG, home=str(tmp_path), device="cpu",
                             show_progress=False, stages=stages)
    node = defs.resolve_asset_graph().get(dg.AssetKey("query_lengths"))
    assert {k.to_user_string() for k in node.parent_keys} == {"query_corpus"}
    with dg.instance_for_test() as instance:
        run = materialize_stale(defs, instance, stages=stages)
        assert [item.asset for item in run.ran] == ["query_corpus", "query_lengths"]
        assert run.work["queries_measured"] > 0
        event = instance.get_latest_materialization_event(dg.AssetKey("query_lengths"))
        metadata = event.asset_materialization.metadata
        assert metadata["splits"].value == 2 and metadata["dagster/row_count"].value == 2
        checks = [e for r in run.results for e in r.get_asset_check_evaluations()
                  if e.asset_key == dg.AssetKey("query_lengths")]
        assert [(c.check_name, c.passed) for c in checks] == [("has_eval", True)]
        assert materialize_stale(defs, instance, stages=stages).ran == []


def test_a_stage_runs_without_dagster(tmp_path):
    project = load_project_config(TINY_CONFIG)
    ctx = StageContext.local(project, tmp_path)
    out = query_corpus.run(ctx)
    assert out.tables[tables.QUERIES].height == out.row_count > 0
    assert {c.name for c in out.checks} == {c.name for c in STAGES[0].checks}
    assert ctx.store.read_table(tables.QUERIES).height == out.row_count
    second = query_lengths(ctx)
    assert second.metadata["splits"] == 2
