"""MLflow logging for training and evaluation runs, through an explicit client (no global state).

The default backend is a local SQLite database (``sqlite:///<home>/mlflow/mlflow.db``) with
artifacts in ``<home>/mlflow/artifacts``; any tracking URI works by config. A remote server is
health-checked before work starts, so an unreachable server fails the step at once (or, when
configured, falls back to the local database and says so) instead of after an hour of training.
Secrets stay in the environment: MLflow reads MLFLOW_TRACKING_TOKEN / _USERNAME / _PASSWORD
itself; nothing here logs environment variables.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill_dag.errors import DistillError
from distill_dag.training.config import TrackingConfig

log = logging.getLogger(__name__)


class TrackingUnavailableError(DistillError, RuntimeError):
    """The configured MLflow tracking server cannot be reached."""


def redact_uri(uri: str) -> str:
    """The URI without any user:password@ part: what may be stored, logged or shown."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def local_tracking_uri(home: str | os.PathLike) -> str:
    db = Path(home).resolve() / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def _check_reachable(uri: str, timeout_s: float) -> None:
    """A GET on the server's /health endpoint (http and https URIs only). Credentials in the URI
    travel as a basic-auth header; messages show the URI without them."""
    import base64
    import urllib.error
    import urllib.request
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(uri)
    uri = redact_uri(uri)
    request = urllib.request.Request(uri.rstrip("/") + "/health")
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            if response.status >= 500:
                raise TrackingUnavailableError(f"MLflow server {uri} answered {response.status}")
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:
            raise TrackingUnavailableError(f"MLflow server {uri} answered {exc.code}") from exc
        # 401/403/404: the server is up (auth or an older server without /health).
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingUnavailableError(
            f"MLflow tracking server {uri} is unreachable ({reason}). Start it (e.g. `mlflow "
            "server --host 127.0.0.1 --port 5000`), fix tracking.tracking_uri, set "
            "tracking.on_unreachable: local to log to the local SQLite database instead, or "
            "tracking.enabled: false") from exc


@dataclass
class Tracker:
    """An MLflow experiment to log runs into; create with ``open_tracker``."""

    uri: str
    experiment_id: str
    fallback_note: str = ""  # set when the configured server was unreachable and we fell back

    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def start_run(self, name: str, tags: Mapping[str, str] | None = None) -> TrackedRun:
        client = self._client()
        run = client.create_run(self.experiment_id, run_name=name, tags=dict(tags or {}))
        return TrackedRun(client, run.info.run_id, self)

    def resume_run(self, run_id: str) -> TrackedRun | None:
        """Reopen a run of this experiment (e.g. one whose process was killed), or None if it
        is not there (another tracking server, or deleted)."""
        from mlflow.exceptions import MlflowException

        client = self._client()
        try:
            run = client.get_run(run_id)
        except MlflowException:
            return None
        if run.info.experiment_id != self.experiment_id or run.info.lifecycle_stage != "active":
            return None
        client.update_run(run_id, status="RUNNING")
        return TrackedRun(client, run_id, self)


class TrackedRun:
    """One MLflow run: params, metrics (with steps), artifacts; close with ``end``."""

    def __init__(self, client, run_id: str, tracker: Tracker) -> None:
        self.client, self.run_id, self.tracker = client, run_id, tracker

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        for begin in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[begin:begin + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.log_history([(step or 0, dict(metrics))])

    def log_history(self, history: Iterable[tuple[int, Mapping[str, float]]]) -> None:
        """Metric series, e.g. the loss curve: (step, {name: value}) pairs."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(str(k), float(v), now, int(step))
                 for step, values in history for k, v in values.items()
                 if isinstance(v, int | float) and math.isfinite(float(v))]
        for begin in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[begin:begin + 1000])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | os.PathLike, subdir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), subdir)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def open_tracker(cfg: TrackingConfig, home: str | os.PathLike) -> Tracker | None:
    """The experiment to log into, or None when tracking is disabled.

    Raises TrackingUnavailableError for an unreachable remote server unless
    ``cfg.on_unreachable == "local"``."""
    if not cfg.enabled:
        return None
    # As for Dagster (dagster.yaml): no usage telemetry from a pipeline that runs offline.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow  # noqa: F401  (imported for its side effect of registering URI schemes)
    from mlflow.tracking import MlflowClient

    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri(home)
    note = ""
    if uri.startswith(("http://", "https://")):
        try:
            _check_reachable(uri, cfg.timeout_s)
        except TrackingUnavailableError as exc:
            if cfg.on_unreachable != "local":
                raise
            note = f"{exc}; logging to the local database {local_tracking_uri(home)} instead"
            log.warning(note)
            uri = local_tracking_uri(home)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        location = None
        if uri.startswith("sqlite:///"):
            # Without an explicit location, artifacts would go to ./mlruns of the working dir.
            location = (Path(home).resolve() / "mlflow" / "artifacts").as_uri()
        experiment_id = client.create_experiment(cfg.experiment, artifact_location=location)
    return Tracker(uri, experiment_id, note)


RUN_ID_FILE = "mlflow_run_id"


def start_or_resume_run(tracker: Tracker | None, run_dir: str | os.PathLike, name: str,
                        tags: Mapping[str, str]) -> tuple[TrackedRun | None, bool]:
    """The MLflow run of the work in `run_dir`: the one a killed process left there (its id is
    kept in run_dir/mlflow_run_id), reopened, or a new one. Returns (run, resumed)."""
    if tracker is None:
        return None, False
    id_file = Path(run_dir) / RUN_ID_FILE
    if id_file.exists():
        run = tracker.resume_run(id_file.read_text().strip())
        if run is not None:
            return run, True
    run = tracker.start_run(name, tags=tags)
    id_file.parent.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run.run_id)
    return run, False


def flat_params(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """A config dataclass as flat MLflow parameters: {"lora.r": 16, ...}."""
    out: dict[str, Any] = {}
    for key, value in (cfg.__dict__ if hasattr(cfg, "__dict__") else cfg).items():
        if hasattr(value, "__dataclass_fields__"):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
