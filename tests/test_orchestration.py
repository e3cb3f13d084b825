"""Orchestration wiring: code versions, observed sources, the inbox, the backfill schedule, the
inbox sensor, retries and their limits. Only query_corpus runs here (no model is loaded)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from distill_dag.config import ConfigError, load_project_config
from distill_dag.corpus import CorpusConfig, build_corpus
from distill_dag.orchestration.definitions import build_definitions
from distill_dag.orchestration.stale import downstream_closure, record_observations, stale_items
from distill_dag.orchestration_config import OrchestrationConfig
from distill_dag.resources import StoreResource
from tests.conftest import TINY_CONFIG

DISTILL = ["query_corpus", "teacher_outputs", "provenance_scores", "teacher_selection",
           "filtered_dataset", "distilled_checkpoint", "eval_report"]


def _rows(n: int, start: int = 0) -> str:
    return "".join(json.dumps({"prompt": f"Kim has {i} pears. Kim buys 2 more pears. How many "
                                         f"pears does Kim have now?",
                               "reference_answer": str(i + 2)}) + "\n"
                   for i in range(start, start + n))


def _config(tmp_path: Path, **orchestration) -> Path:
    data = yaml.safe_load(TINY_CONFIG.read_text())
    data["corpus"]["inbox"] = {"folder": "inbox", "split": "train"}
    data["orchestration"] = orchestration
    (tmp_path / "inbox").mkdir(exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_asset_has_a_code_version_automation_and_retries(tmp_path):
    defs = build_definitions(_config(tmp_path), home=str(tmp_path / "home"))
    graph = defs.resolve_asset_graph()
    for name in DISTILL:
        node = graph.get(dg.AssetKey(name))
        assert node.code_version, name
        assert node.automation_condition is not None, name
        assert node.automation_condition.get_label() == "stale_or_updated"
    assert {s.name for s in defs.sensors} == {"corpus_inbox_sensor", "distill_automation"}
    assert [s.name for s in defs.schedules] == ["stale_backfill_schedule"]
    policy = defs.get_assets_def("teacher_outputs").op.retry_policy
    assert policy.max_retries == 2 and policy.backoff == dg.Backoff.EXPONENTIAL


def _code_versions(config: Path, home: Path) -> dict[str, str]:
    graph = build_definitions(config, home=str(home)).resolve_asset_graph()
    return {name: graph.get(dg.AssetKey(name)).code_version for name in DISTILL}


def test_editing_one_teacher_changes_only_its_observed_version(tmp_path):
    before = load_project_config(_config(tmp_path))
    versions = _code_versions(tmp_path / "config.yaml", tmp_path / "home")
    data = yaml.safe_load((tmp_path / "config.yaml").read_text())
    data["teachers"][1]["sampling"]["temperature"] = 0.5
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    after = load_project_config(tmp_path / "config.yaml")
    assert before.teacher_version("fewshot") == after.teacher_version("fewshot")
    assert before.teacher_version("zeroshot") != after.teacher_version("zeroshot")
    # ...and no asset's code version moves: the change reaches Dagster as an observation.
    assert _code_versions(tmp_path / "config.yaml", tmp_path / "home") == versions


def test_moving_the_project_folder_changes_no_version(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        _config(tmp_path / folder)
        (tmp_path / folder / "inbox" / "q.jsonl").write_text(_rows(2))
    a, b = (load_project_config(tmp_path / f / "config.yaml") for f in ("a", "b"))
    assert a.corpus_sources_version() == b.corpus_sources_version()
    assert _code_versions(tmp_path / "a" / "config.yaml", tmp_path / "h") == \
        _code_versions(tmp_path / "b" / "config.yaml", tmp_path / "h")


def test_corpus_sources_version_follows_file_contents(tmp_path):
    project = load_project_config(_config(tmp_path))
    empty = project.corpus_sources_version()
    (tmp_path / "inbox" / "a.jsonl").write_text(_rows(2))
    added = project.corpus_sources_version()
    (tmp_path / "inbox" / "a.jsonl").write_text(_rows(3))
    edited = project.corpus_sources_version()
    (tmp_path / "inbox" / "notes.txt").write_text("not a query file")  # ignored
    assert len({empty, added, edited}) == 3 and project.corpus_sources_version() == edited


def test_inbox_files_are_read_and_a_vanished_file_keeps_its_queries(tmp_path):
    (tmp_path / "inbox").mkdir()
    cfg = CorpusConfig.from_dict({"inbox": {"folder": str(tmp_path / "inbox"), "split": "train"},
                                  "generator": {"n": 8, "seed": 1, "levels": [1]}})
    (tmp_path / "inbox" / "a.jsonl").write_text(_rows(3))
    (tmp_path / "inbox" / "b.jsonl").write_text(_rows(2, start=10))
    first = build_corpus(cfg)
    from_inbox = first.queries.filter(pl.col("source_file").is_not_null())
    assert from_inbox.height == 5 and set(from_inbox["split"]) == {"train"}
    (tmp_path / "inbox" / "a.jsonl").unlink()
    second = build_corpus(cfg, previous=first.queries)
    assert second.queries.equals(first.queries)
    assert second.stats["rows_carried"] == 3
    assert len(second.warnings) == 1 and "a.jsonl is gone" in second.warnings[0]
    # Without the previous table there is nothing to keep: the queries are simply absent.
    assert build_corpus(cfg).queries.height == first.queries.height - 3


def test_a_vanished_file_with_its_own_split_column_moves_no_query_between_splits(tmp_path):
    rows = [{"prompt": f"Lee has {i} cups. Lee buys 3 more cups. How many cups does Lee have "
                       f"now?", "reference_answer": str(i + 3), "split": "eval" if i < 3 else
             "train"} for i in range(10)]
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = CorpusConfig.from_dict({"files": [{"path": str(path), "fields": {"split": "split"}}],
                                  "generator": {"n": 30, "seed": 2, "levels": [1]}})
    first = build_corpus(cfg)
    assert first.queries.filter(pl.col("split") == "eval").height == 3  # explicit eval only
    path.unlink()
    kept = build_corpus(cfg, previous=first.queries)
    assert kept.queries.equals(first.queries)


def test_a_configured_file_that_vanished_keeps_its_queries_or_fails_clearly(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(_rows(4))
    cfg = CorpusConfig.from_dict({"files": [{"path": str(path)}]})
    first = build_corpus(cfg)
    path.unlink()
    kept = build_corpus(cfg, previous=first.queries)
    assert kept.queries.equals(first.queries) and "q.jsonl is gone" in kept.warnings[0]
    with pytest.raises(FileNotFoundError, match=r"q\.jsonl"):
        build_corpus(cfg)  # never ingested: a clear error, not an empty corpus


def test_orchestration_settings_are_validated():
    assert OrchestrationConfig().run_tags() == {"dagster/max_runtime": "21600"}
    assert OrchestrationConfig(max_runtime_s=0).run_tags() == {}
    for bad in ({"retries": -1}, {"backfill_cron": "every hour"}, {"max_runtime_s": 1.5},
                {"retry_delay_s": "soon"}, {"unknown": 1}):
        with pytest.raises(ConfigError, match="orchestration"):
            OrchestrationConfig.from_dict(bad)
    with pytest.raises(ConfigError, match="inbox"):
        CorpusConfig.from_dict({"inbox": {"folder": ""}})


def _materialize(defs, instance, *selection):
    return dg.materialize(list(defs.assets), selection=list(selection), instance=instance,
                          resources=dict(defs.resources))


def test_backfill_schedule_launches_the_earliest_stale_stage(tmp_path):
    defs = build_definitions(_config(tmp_path), home=str(tmp_path / "home"))
    schedule = defs.resolve_schedule_def("stale_backfill_schedule")
    (tmp_path / "dh").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dh")) as instance:
        def tick():
            # As a context manager: it enters the instance and must leave it (left to the
            # garbage collector, the exit would later restore a closed instance in Dagster's
            # definitions-state context, failing an unrelated test).
            with dg.build_schedule_context(instance=instance,
                                           repository_def=defs.get_repository_def(),
                                           resources=dict(defs.resources),
                                           scheduled_execution_time=datetime.now(UTC)) as context:
                return schedule.evaluate_tick(context)

        first = tick()
        assert [list(r.asset_selection) for r in first.run_requests] == [
            [dg.AssetKey("query_corpus")]]
        assert first.run_requests[0].tags["distill_dag/launched_by"] == "stale_backfill_schedule"
        _materialize(defs, instance, "query_corpus")
        second = tick()
        assert sorted(r.partition_key for r in second.run_requests) == ["fewshot", "zeroshot"]
        assert set(second.run_requests[0].asset_selection) == {
            dg.AssetKey("teacher_outputs"), dg.AssetKey("provenance_scores")}


def test_inbox_sensor_backfills_the_corpus_and_everything_downstream(tmp_path):
    defs = build_definitions(_config(tmp_path), home=str(tmp_path / "home"))
    sensor = defs.resolve_sensor_def("corpus_inbox_sensor")
    (tmp_path / "dh").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dh")) as instance:
        graph = defs.resolve_asset_graph()
        record_observations(instance, graph, defs.resources["project"].load())
        _materialize(defs, instance, "query_corpus")

        def tick(cursor=None):
            with dg.build_sensor_context(instance=instance, cursor=cursor,
                                         repository_def=defs.get_repository_def(),
                                         resources=dict(defs.resources)) as context:
                return sensor.evaluate_tick(context)

        quiet = tick()
        assert not quiet.run_requests  # nothing new: the corpus is up to date
        (tmp_path / "inbox" / "new.jsonl").write_text(_rows(3, start=50))
        result = tick(quiet.cursor)
        [request] = result.run_requests
        subset = request.asset_graph_subset
        partitions = subset.partitions_subsets_by_asset_key[dg.AssetKey("teacher_outputs")]
        assert set(partitions.get_partition_keys()) == {"fewshot", "zeroshot"}
        keys = {k.to_user_string() for k in subset.asset_keys}
        assert keys == set(DISTILL)
        assert not tick(result.cursor).run_requests  # the same files again: no new backfill
        items = stale_items(instance, graph, ["query_corpus"])
        assert [i.causes for i in items] == [("has a new dependency data version: "
                                              "corpus_files",)]
        closure = downstream_closure(graph, items)
        assert ("teacher_outputs", "fewshot") in closure and ("eval_report", None) in closure


_HOLD = textwrap.dedent("""
    import sys, time
    from filelock import FileLock
    lock = FileLock(sys.argv[1] + ".lock")
    lock.acquire()
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def test_a_locked_store_is_retried_and_a_data_error_is_not(tmp_path):
    config = _config(tmp_path, retries=3, retry_delay_s=2.0)
    defs = build_definitions(config, home=str(tmp_path / "home"))
    resources = dict(defs.resources)
    resources["store"] = StoreResource(home=str(tmp_path / "home"), lock_timeout_s=0.5)
    catalog = tmp_path / "home" / "store" / "catalog.duckdb"
    catalog.parent.mkdir(parents=True)
    with dg.instance_for_test() as instance:
        holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(catalog), "4"],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "locked"
        result = dg.materialize(list(defs.assets), selection=["query_corpus"],
                                instance=instance, resources=resources)
    holder.wait()
    types = [e.event_type_value for e in result.all_events]
    assert result.success and "STEP_UP_FOR_RETRY" in types  # failed on the lock, then retried

    # An empty corpus is a data error: it fails at once, without waiting for a retry.
    data = yaml.safe_load(config.read_text())
    data["corpus"] = {"files": [{"path": str(tmp_path / "empty.jsonl")}]}
    (tmp_path / "empty.jsonl").write_text("")
    config.write_text(yaml.safe_dump(data))
    defs = build_definitions(config, home=str(tmp_path / "home2"))
    with dg.instance_for_test() as instance:
        failed = dg.materialize(list(defs.assets), selection=["query_corpus"],
                                instance=instance, resources=dict(defs.resources),
                                raise_on_error=False)
    types = [e.event_type_value for e in failed.all_events]
    assert not failed.success and "STEP_UP_FOR_RETRY" not in types


def test_gpu_deployment_example_loads_and_its_gpu_steps_request_gpus(tmp_path):
    example = Path(__file__).parents[1] / "examples" / "gpu_deployment.yaml"
    defs = build_definitions(example, home=str(tmp_path / "home"))
    # The vLLM teacher is sharded over 2 GPUs and training runs 2 data-parallel processes.
    wanted = {"teacher_outputs": "2", "provenance_scores": "2", "distilled_checkpoint": "2",
              "eval_report": "1"}
    for name, gpus in wanted.items():
        k8s = defs.get_assets_def(name).op.tags["dagster-k8s/config"]
        k8s = json.loads(k8s) if isinstance(k8s, str) else k8s  # Dagster stores it as JSON
        limits = k8s["container_config"]["resources"]["limits"]
        assert limits == {"nvidia.com/gpu": gpus}, name
    assert "dagster-k8s/config" not in defs.get_assets_def("filtered_dataset").op.tags
    assert defs.resolve_implicit_global_asset_job_def().executor_def.name == "k8s"


@pytest.mark.parametrize(("executor", "name"), [("k8s", "k8s"), ("in_process", "in_process"),
                                                ("multiprocess", "multi_or_in_process_executor")])
def test_the_executor_setting_reaches_the_asset_jobs(tmp_path, executor, name):
    """orchestration.executor: k8s puts every step of a run in its own pod (dagster-k8s's real
    k8s_job_executor; no cluster is needed to build the job)."""
    defs = build_definitions(_config(tmp_path, executor=executor, k8s_gpus=1),
                             home=str(tmp_path / "home"))
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.executor_def.name == name


def test_an_unknown_executor_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"orchestration.*executor must be one of"):
        load_project_config(_config(tmp_path, executor="ray"))
