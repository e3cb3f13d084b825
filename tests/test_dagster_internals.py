"""Each wrapper around Dagster's private API, called on a real instance: after a Dagster upgrade
that moves or changes what one of them uses, the test named after that function fails."""

from __future__ import annotations

import warnings

import dagster as dg
import pytest

from distill_dag.orchestration import dagster_internals as internals


def _definitions(upstream_version: str = "1") -> dg.Definitions:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)

        @dg.observable_source_asset(name="source_files")
        def source_files():
            return dg.DataVersion("v1")

    partitions = dg.StaticPartitionsDefinition(["a", "b"])

    @dg.asset(deps=["source_files"], code_version=upstream_version)
    def upstream():
        return dg.MaterializeResult(data_version=dg.DataVersion("u1"))

    @dg.asset(deps=[upstream], code_version="1", partitions_def=partitions)
    def downstream():
        return dg.MaterializeResult(data_version=dg.DataVersion("d1"))

    return dg.Definitions(assets=[source_files, upstream, downstream])


@pytest.fixture
def graph_and_instance():
    defs = _definitions()
    with dg.instance_for_test() as instance:
        yield defs, defs.resolve_asset_graph(), instance


def test_stale_resolver_status_and_causes(graph_and_instance):
    defs, graph, instance = graph_and_instance
    resolver = internals.StaleResolver(instance, graph)
    assert resolver.status("upstream", None) == internals.MISSING
    assert resolver.status("downstream", "a") == internals.MISSING
    dg.materialize(defs.assets[1:2], instance=instance)
    assert internals.StaleResolver(instance, graph).status("upstream", None) == internals.FRESH
    # A new code version makes it stale, with a cause naming why.
    resolver = internals.StaleResolver(instance, _definitions("2").resolve_asset_graph())
    assert resolver.status("upstream", None) == internals.STALE
    assert any("code version" in c for c in resolver.causes("upstream", None))


def test_observation_and_data_version(graph_and_instance):
    _, graph, instance = graph_and_instance
    assert internals.StaleResolver(instance, graph).data_version("source_files", None) != "v7"
    instance.report_runless_asset_event(internals.observation("source_files", None, "v7"))
    assert internals.StaleResolver(instance, graph).data_version("source_files", None) == "v7"


def test_backfill_request(graph_and_instance):
    _, graph, _ = graph_and_instance
    request = internals.backfill_request([("upstream", None), ("downstream", "b")], graph,
                                         tags={"who": "test"})
    assert request.tags["who"] == "test"
    subset = request.asset_graph_subset
    assert dg.AssetKey("upstream") in subset.non_partitioned_asset_keys
    assert set(subset.partitions_subsets_by_asset_key[dg.AssetKey("downstream")]
               .get_partition_keys()) == {"b"}


def test_requested_backfill_tags(graph_and_instance):
    _, _, instance = graph_and_instance
    assert internals.requested_backfill_tags(instance) == []


def test_instance_scope(graph_and_instance):
    defs, _, instance = graph_and_instance
    with dg.instance_for_test() as closed:
        storage = closed.defs_state_storage
    # A caller left the context pointing at an instance it has closed since.
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    with set_defs_state_storage(storage):
        # Without the scope Dagster reads that closed instance ("undefined DagsterInstance
        # weakref" once it is collected; its deleted database before).
        with pytest.raises(Exception, match=r"weakref|unable to open database"):
            dg.materialize(defs.assets[1:2], instance=instance)
        with internals.instance_scope(instance):
            assert dg.materialize(defs.assets[1:2], instance=instance).success


def test_check_results_of_run():
    @dg.asset(check_specs=[dg.AssetCheckSpec("positive", asset="checked")])
    def checked():
        return dg.MaterializeResult(check_results=[dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.WARN, description="why",
            metadata={"n": 3})])

    with dg.instance_for_test() as instance:
        run_id = dg.materialize([checked], instance=instance).run_id
        dg.materialize([checked], instance=instance)  # a later run: not the one asked for
        [result] = internals.check_results_of_run(instance, "checked", run_id, ["positive"])
        assert (result.check_name, result.passed, result.severity, result.description) == (
            "positive", False, dg.AssetCheckSeverity.WARN, "why")
        assert result.metadata["n"].value == 3
        assert internals.check_results_of_run(instance, "checked", "no-such-run",
                                              ["positive"]) == []


def test_step_asset_graph():
    seen = {}

    @dg.asset
    def probe(context):
        seen["graph"] = internals.step_asset_graph(context)

    with dg.instance_for_test() as instance:
        dg.materialize([probe], instance=instance)  # in process: no repository on the step
        assert seen["graph"] is None


def test_asset_graph():
    defs = _definitions()
    graph = internals.asset_graph(defs.assets)
    assert graph.has(dg.AssetKey("downstream")) and graph.has(dg.AssetKey("source_files"))
    with dg.instance_for_test() as instance:  # the StaleResolver takes it as the web UI's
        assert internals.StaleResolver(instance, graph).status("upstream", None) == \
            internals.MISSING
