"""MLflow logging against a real local SQLite backend, and an unreachable server."""

from __future__ import annotations

import socket

import pytest

from distill_dag.tracking import TrackingUnavailableError, local_tracking_uri, open_tracker
from distill_dag.training.config import TrackingConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_logs_params_loss_curve_and_artifacts_to_local_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = open_tracker(TrackingConfig(experiment="t"), tmp_path)
    assert tracker.uri == local_tracking_uri(tmp_path)
    assert tracker.uri.startswith("sqlite:///") and (tmp_path / "mlflow" / "mlflow.db").exists()
    run = tracker.start_run("train", tags={"stage": "x"})
    run.log_params({"lr": 3e-4, "method": "lora"})
    run.log_history([(1, {"loss": 1.0}), (2, {"loss": 0.5}), (3, {"loss": float("nan")})])
    artifact = tmp_path / "note.txt"
    artifact.write_text("hello")
    run.log_artifact(artifact, "reports")
    run.end()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracker.uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params == {"lr": "0.0003", "method": "lora"}
    history = client.get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5)]  # NaN is skipped
    assert [a.path for a in client.list_artifacts(run.run_id, "reports")] == ["reports/note.txt"]
    # Artifacts live under the run home, not in ./mlruns of the working directory.
    assert (tmp_path / "mlflow" / "artifacts").is_dir()
    # A second open reuses the experiment.
    assert open_tracker(TrackingConfig(experiment="t"), tmp_path).experiment_id == \
        tracker.experiment_id


def test_a_killed_run_can_be_resumed_and_finished(tmp_path):
    tracker = open_tracker(TrackingConfig(experiment="r"), tmp_path)
    run = tracker.start_run("train")  # its process dies: the run stays RUNNING
    again = tracker.resume_run(run.run_id)
    again.log_metrics({"loss": 0.5}, step=3)
    again.end()
    from mlflow.tracking import MlflowClient

    got = MlflowClient(tracking_uri=tracker.uri).get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.metrics == {"loss": 0.5}
    assert tracker.resume_run("0" * 32) is None
    other = open_tracker(TrackingConfig(experiment="other"), tmp_path)
    assert other.resume_run(run.run_id) is None  # not this experiment's run


def test_unreachable_server_is_a_clear_error(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(TrackingUnavailableError, match=r"unreachable.*on_unreachable: local"):
        open_tracker(TrackingConfig(tracking_uri=uri, timeout_s=1), tmp_path)


def test_credentials_in_the_uri_never_reach_messages(tmp_path):
    from distill_dag.tracking import redact_uri

    assert redact_uri("https://me:s3cret@mlflow.example.com:8443/x") == \
        "https://mlflow.example.com:8443/x"
    assert redact_uri("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    port = _free_port()
    with pytest.raises(TrackingUnavailableError) as info:
        open_tracker(TrackingConfig(tracking_uri=f"http://me:s3cret@127.0.0.1:{port}",
                                    timeout_s=1), tmp_path)
    assert f"http://127.0.0.1:{port} is unreachable" in str(info.value)
    assert "s3cret" not in str(info.value)  # and the host was parsed right (not "me:s3cret@")


def test_unreachable_server_can_fall_back_to_local_and_says_so(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    tracker = open_tracker(TrackingConfig(tracking_uri=uri, timeout_s=1,
                                          on_unreachable="local"), tmp_path)
    assert tracker.uri == local_tracking_uri(tmp_path)
    assert uri in tracker.fallback_note and "local database" in tracker.fallback_note


def test_disabled_tracking_opens_nothing(tmp_path):
    assert open_tracker(TrackingConfig(enabled=False), tmp_path) is None
    assert not (tmp_path / "mlflow").exists()


def test_tracking_config_validation():
    from distill_dag.configbase import ConfigError

    with pytest.raises(ConfigError, match="on_unreachable must be one of"):
        TrackingConfig.from_dict({"on_unreachable": "ignore"})
    with pytest.raises(ConfigError, match="tracking_uri"):
        TrackingConfig.from_dict({"tracking_uri": " "})
