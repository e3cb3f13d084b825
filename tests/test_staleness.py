"""Only stale work reruns: each scenario edits one thing after a full run, runs
`materialize_stale`, and asserts what ran and the work counters (tokens generated, sequences
scored, training steps, eval generations). Real models, store and Dagster instance.

Every scenario starts from a copy of one full run on the tiny config (plus an empty inbox)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from distill_dag import verify
from distill_dag.generation.run import teacher_change_notes
from distill_dag.orchestration.definitions import build_definitions
from distill_dag.orchestration.stale import materialize_stale, record_observations, stale_items
from distill_dag.store import Store
from tests.conftest import TINY_CONFIG

NEW_QUERIES = [
    {"prompt": "Zed has 3 marbles. Zed finds 4 more marbles. How many marbles does Zed have now?",
     "reference_answer": "7"},
    {"prompt": "Quinn has 9 shells. Quinn gives away 5 shells. How many shells does Quinn have "
               "left?", "reference_answer": "4"},
]


def _write_config(folder: Path, edit=None) -> Path:
    data = yaml.safe_load(TINY_CONFIG.read_text())
    data["corpus"]["inbox"] = {"folder": "inbox", "split": "train"}
    if edit:
        edit(data)
    (folder / "inbox").mkdir(exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(folder: Path, config: Path):
    defs = build_definitions(config, home=str(folder / "home"), device="cpu",
                             show_progress=False)
    (folder / "dagster").mkdir(exist_ok=True)
    with dg.instance_for_test(temp_dir=str(folder / "dagster")) as instance:
        return materialize_stale(defs, instance, log_level="WARNING")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("stale_base")
    first = _run(folder, _write_config(folder))
    assert [i.label for i in first.ran][:3] == ["query_corpus", "teacher_outputs[fewshot]",
                                                "teacher_outputs[zeroshot]"]
    assert first.work["samples_generated"] > 0 and first.work["training_steps"] == 2
    yield folder
    shutil.rmtree(folder, ignore_errors=True)  # a checkpoint of ~0.5 GB; not kept past the module


@pytest.fixture
def scenario(base, tmp_path) -> Path:
    """A copy of the base run: config, inbox, home (store, artifacts) and Dagster instance."""
    folder = tmp_path / "s"
    shutil.copytree(base, folder)
    return folder


def _labels(run) -> list[str]:
    return [item.label for item in run.ran]


def _train_queries(folder: Path) -> int:
    queries = Store(folder / "home" / "store").read_table("queries")
    return queries.filter(pl.col("split") == "train").height


def test_nothing_changed_runs_nothing(scenario):
    run = _run(scenario, scenario / "config.yaml")
    assert run.ran == [] and run.work == {} and run.observed == []


def test_added_teacher_generates_only_its_partition(scenario):
    def add(data):
        data["teachers"].append({
            "name": "greedy", "model": "pkg:smollm2-135m-instruct",
            "prompt": data["teachers"][0]["prompt"],
            "sampling": {"temperature": 0.0, "max_new_tokens": 40, "num_samples": 1}})
    run = _run(scenario, _write_config(scenario, add))
    labels = _labels(run)
    assert labels[:2] == ["teacher_outputs[greedy]", "provenance_scores[greedy]"]
    assert "teacher_selection" in labels
    assert not any(label.endswith(("[fewshot]", "[zeroshot]")) for label in labels)
    assert run.work["samples_generated"] == _train_queries(scenario)  # k=1, new teacher only
    # Scores are cached by (model, text): a response another teacher also gave is not rescored.
    assert 0 < run.work["sequences_scored"] <= _train_queries(scenario)


def test_filter_change_reruns_dataset_checkpoint_report_only(scenario):
    def tighten(data):
        data["filtering"]["max_completion_tokens"] = 20
    run = _run(scenario, _write_config(scenario, tighten))
    assert _labels(run) == ["filtered_dataset", "distilled_checkpoint", "eval_report"]
    assert run.work.get("samples_generated", 0) == 0 and "sequences_scored" not in run.work
    assert run.work["training_steps"] == 2 and run.work["eval_generations"] > 0


def test_eval_settings_change_reruns_only_the_report(scenario):
    def more_samples(data):
        data["evaluation"]["num_samples"] = 3
    run = _run(scenario, _write_config(scenario, more_samples))
    assert _labels(run) == ["eval_report"]
    evals = Store(scenario / "home" / "store").read_table("queries").filter(
        pl.col("split") == "eval").height
    # Only the third sample per query is new, for the base and the distilled student.
    assert run.work == {"eval_generations": 2 * evals,
                        "eval_tokens_generated": run.work["eval_tokens_generated"]}


def test_verifier_version_bump_reverifies_without_regenerating(scenario, monkeypatch):
    monkeypatch.setattr(verify, "VERIFIER_VERSION", "test-bump")
    run = _run(scenario, scenario / "config.yaml")
    labels = _labels(run)
    assert labels[:2] == ["teacher_outputs[fewshot]", "teacher_outputs[zeroshot]"]
    assert run.work["samples_generated"] == 0 and run.work["tokens_generated"] == 0
    assert run.work["samples_verified"] == 2 * 2 * _train_queries(scenario)
    assert run.work.get("sequences_scored", 0) == 0
    assert run.work.get("training_steps", 0) == 0
    outputs = Store(scenario / "home" / "store").read_table("teacher_outputs")
    assert set(outputs["verifier_version"]) == {"test-bump"}


def test_new_corpus_file_generates_only_new_queries(scenario):
    before = _train_queries(scenario)
    inbox = scenario / "inbox" / "batch1.jsonl"
    inbox.write_text("".join(json.dumps(q) + "\n" for q in NEW_QUERIES))
    run = _run(scenario, scenario / "config.yaml")
    assert run.observed == ["corpus_files"]
    assert _labels(run)[:3] == ["query_corpus", "teacher_outputs[fewshot]",
                                "teacher_outputs[zeroshot]"]
    assert _train_queries(scenario) == before + len(NEW_QUERIES)
    # Two teachers x two samples for each new query; nothing for the old ones.
    assert run.work["samples_generated"] == 2 * 2 * len(NEW_QUERIES)
    assert run.work["sequences_scored"] == 2 * 2 * len(NEW_QUERIES)

    # The file disappears after it was ingested: its queries stay, nothing downstream reruns.
    inbox.unlink()
    gone = _run(scenario, scenario / "config.yaml")
    assert _labels(gone) == ["query_corpus"]  # same queries, same data version: nothing else
    assert _train_queries(scenario) == before + len(NEW_QUERIES)


def test_renamed_teacher_keeps_the_old_partition_and_generates_the_new(scenario):
    def rename(data):
        data["teachers"][1]["name"] = "zeroshot_v2"
    config = _write_config(scenario, rename)
    store = Store(scenario / "home" / "store")
    notes = teacher_change_notes(store, ["fewshot", "zeroshot_v2"])
    assert any("'zeroshot' has" in n and "kept in the store" in n for n in notes)
    assert any("['zeroshot_v2'] are new" in n for n in notes)
    run = _run(scenario, config)
    assert "teacher_outputs[zeroshot_v2]" in _labels(run)
    assert "teacher_outputs[fewshot]" not in _labels(run)
    outputs = store.read_table("teacher_outputs")
    assert set(outputs["teacher"]) == {"fewshot", "zeroshot", "zeroshot_v2"}


def test_dry_run_lists_stale_items_with_their_causes(scenario):
    def more_samples(data):
        data["evaluation"]["num_samples"] = 3
    config = _write_config(scenario, more_samples)
    defs = build_definitions(config, home=str(scenario / "home"), device="cpu",
                             show_progress=False)
    with dg.instance_for_test(temp_dir=str(scenario / "dagster")) as instance:
        graph = defs.resolve_asset_graph()
        assert record_observations(instance, graph, defs.resources["project"].load()) == []
        items = stale_items(instance, graph)
    assert [(i.label, i.status) for i in items] == [("eval_report", "stale")]
    assert items[0].causes == ("has a new code version",)


def test_materializing_everything_recomputes_exactly_what_stale_does(base, scenario, tmp_path):
    """One rerun mechanism: a run of every asset and partition (what "Materialize all" in the
    web UI, a backfill or the schedule launch) checks each step as `--stale` does, so after an
    edit it does the same work; the steps that are up to date re-emit their last
    materialization with zero work, their checks included."""
    from distill_dag.assets.stage_asset import FORCE_TAG, UP_TO_DATE
    from distill_dag.orchestration.dagster_internals import instance_scope
    from distill_dag.orchestration.definitions import materialize_all
    from distill_dag.orchestration.stale import work_done

    def tighten(data):
        data["filtering"]["max_completion_tokens"] = 20
    stale = _run(scenario, _write_config(scenario, tighten))
    twin = tmp_path / "twin"
    shutil.copytree(base, twin)
    config = _write_config(twin, tighten)
    defs = build_definitions(config, home=str(twin / "home"), device="cpu", show_progress=False)
    with dg.instance_for_test(temp_dir=str(twin / "dagster")) as instance:
        results = materialize_all(defs, instance, log_level="WARNING")
        checks = {e.asset_check_key.name: e.passed for r in results
                  for e in r.get_asset_check_evaluations()}
        events = [e.materialization for r in results for e in r.get_asset_materialization_events()]
        replayed = sorted(m.asset_key.to_user_string() for m in events if UP_TO_DATE in m.metadata)
        # Again: now every step is up to date.
        again = materialize_all(defs, instance, log_level="WARNING")
        # The force tag runs a stage although it is up to date (its memoized work is reused).
        with instance_scope(instance):
            forced = dg.materialize(list(defs.assets), selection=["eval_report"],
                                    instance=instance, resources=defs.resources,
                                    tags={FORCE_TAG: "true"})
    [event] = forced.get_asset_materialization_events()
    assert UP_TO_DATE not in event.materialization.metadata
    assert event.materialization.metadata["work/eval_generations"].value == 0
    nonzero = {k: v for k, v in work_done(results).items() if v}
    assert nonzero == {k: v for k, v in stale.work.items() if v}
    assert replayed == sorted(["query_corpus", "teacher_outputs", "teacher_outputs",
                               "provenance_scores", "provenance_scores", "teacher_selection"])
    assert "distilled_beats_base" in checks and "all_sentences_scored" in checks  # replayed too
    assert not any(work_done(again).values())
    assert all(UP_TO_DATE in e.materialization.metadata
               for r in again for e in r.get_asset_materialization_events())
