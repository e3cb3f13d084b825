"""The distilled student in MLflow as users meet it: against a real `mlflow server` process on
127.0.0.1, the tiny DAG logs the student as a transformers-flavor model in its training run,
registers it, tags the version with eval_report's metrics, links run and version from the
Dagster metadata, and keeps an API key in the environment out of all of it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml

from distill_dag.orchestration.definitions import build_definitions, materialize_all
from tests.conftest import TINY_CONFIG

pytestmark = pytest.mark.slow
SECRET = "sk-distill-dag-test-7f3a9c"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            log.close()
            pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(1)
    yield url, root
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def tiny_tracked(mlflow_server, tmp_path_factory):
    url, _ = mlflow_server
    folder = tmp_path_factory.mktemp("tracked")
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["tracking"] = {"tracking_uri": url, "experiment": "registry-test",
                          "registered_model": "tiny-student"}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    defs = build_definitions(path, home=str(folder / "home"), device="cpu", show_progress=False)
    mp = pytest.MonkeyPatch()
    mp.setenv("OPENAI_API_KEY", SECRET)  # what a user with an endpoint teacher has set
    try:
        with dg.instance_for_test() as instance:
            first = materialize_all(defs, instance, log_level="WARNING")
            again = materialize_all(defs, instance, log_level="WARNING")
    finally:
        mp.undo()
    yield url, folder, first, again


def _materialization(results, asset: str):
    [event] = [e for r in results for e in r.get_asset_materialization_events()
               if e.asset_key.to_user_string() == asset]
    return event


def _run_id(results, asset: str) -> str:
    [run_id] = [r.run_id for r in results for e in r.get_asset_materialization_events()
                if e.asset_key.to_user_string() == asset]
    return run_id


def test_the_student_is_logged_registered_and_tagged_with_its_eval_metrics(tiny_tracked):
    import mlflow
    from mlflow.tracking import MlflowClient

    url, _, first, again = tiny_tracked
    client = MlflowClient(tracking_uri=url)
    [version] = client.search_model_versions("name='tiny-student'")
    assert version.version == "1" and version.status == "READY"
    ckpt = _materialization(first, "distilled_checkpoint")
    meta = {k: v.value for k, v in ckpt.materialization.metadata.items()}
    train_run = client.get_run(meta["mlflow_run_id"])
    assert version.run_id == train_run.info.run_id
    # The run carries the Dagster run id and the data version it trained on.
    assert train_run.data.tags["dagster.run_id"] == _run_id(first, "distilled_checkpoint")
    assert train_run.data.tags["dataset_version"] == meta["dataset_version"]
    # Links for the web UI: the run and the model version on this server.
    assert meta["mlflow_run_url"] == (f"{url}/#/experiments/{train_run.info.experiment_id}"
                                      f"/runs/{train_run.info.run_id}")
    assert meta["mlflow_model_version_url"] == f"{url}/#/models/tiny-student/versions/1"
    assert ckpt.materialization.metadata["mlflow_run_url"].__class__.__name__ == "UrlMetadataValue"
    # eval_report's figures are on the version, equal to its metadata.
    report = {k: v.value for k, v in _materialization(first, "eval_report")
              .materialization.metadata.items()}
    tags = client.get_model_version("tiny-student", "1").tags
    assert float(tags["eval.gain/pass_at_1"]) == pytest.approx(report["gain/pass@1"], abs=1e-5)
    assert report["mlflow_model_version_url"] == meta["mlflow_model_version_url"]
    # The registered model is a loadable transformers model with a text signature.
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(url)  # models:/ URIs resolve through the server's registry
    try:
        model_info = mlflow.models.get_model_info("models:/tiny-student/1")
        components = mlflow.transformers.load_model("models:/tiny-student/1",
                                                    return_type="components")
    finally:
        mlflow.set_tracking_uri(before)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    assert "transformers" in model_info.flavors
    assert model_info.signature.inputs.input_types()[0].name == "string"
    assert {"model", "tokenizer"} <= set(components)
    # A rerun reuses the checkpoint and logs no second version.
    assert _materialization(again, "distilled_checkpoint").materialization.metadata[
        "mlflow_model_version_url"].value == meta["mlflow_model_version_url"]
    assert len(client.search_model_versions("name='tiny-student'")) == 1


def test_an_api_key_in_the_environment_reaches_no_log_run_model_or_store(tiny_tracked,
                                                                           mlflow_server):
    from mlflow.tracking import MlflowClient

    url, folder, first, _ = tiny_tracked
    _, server_root = mlflow_server
    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("registry-test")
    for run in client.search_runs([experiment.experiment_id]):
        text = repr(run.data.params) + repr(run.data.tags) + repr(run.data.metrics)
        assert SECRET not in text
    for version in client.search_model_versions("name='tiny-student'"):
        assert SECRET not in repr(version.tags)
    # Every file the server stored (the model folder, MLmodel, requirements, reports) and
    # every file under the home (store, artifacts, checkpoints, logs).
    for root in (server_root, Path(folder)):
        for path in Path(root).rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                assert SECRET.encode() not in path.read_bytes(), path
    for result in first:
        for event in result.all_events:
            assert SECRET not in repr(event.event_specific_data)
