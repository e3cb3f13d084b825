"""The distilled student as an MLflow model: logged in its training run, registered, linked.

distilled_checkpoint logs the saved folder with MLflow's transformers flavor (loaded from its
safetensors on the CPU and saved again: MLflow 3.17 cannot log a folder as is with transformers 5)
with a text-in, text-out signature and the folder's model card, in the training run, and
registers it under `tracking.registered_model`. eval_report then puts its
metrics on that model version (tags) and on the logged model (metrics), so the registry shows
what each version scored. Links for the Dagster metadata point at the MLflow UI
(`tracking.ui_url`, else the tracking server itself). What is written beside the checkpoint
(`mlflow_model.json`) lets a reused checkpoint and eval_report find the model again without
logging it twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from distill_dag.tracking import Tracker, redact_uri

MODEL_FILE = "mlflow_model.json"  # beside the checkpoint's model folder
ARTIFACT_NAME = "model"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoggedStudent:
    """Where the logged student is: its model URI and, when registered, its version."""

    run_id: str
    experiment_id: str
    model_uri: str
    model_id: str | None
    registered_name: str | None
    version: str | None

    def save(self, run_dir: Path) -> None:
        path = Path(run_dir) / MODEL_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, run_dir: Path) -> LoggedStudent | None:
        path = Path(run_dir) / MODEL_FILE
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


@contextlib.contextmanager
def _fluent_uri(uri: str) -> Iterator[None]:
    """MLflow's flavor API logs through the process-wide tracking URI. Set it, then put back
    what was there: mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into the
    environment, where open_tracker would later read it as the user's choice."""
    import mlflow

    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    uri_before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(uri_before if env_before is not None else None)
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]))


def _requirements() -> list[str]:
    """Pinned from what is installed here (MLflow's inference would import and probe)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("torch", "transformers", "safetensors",
                                                    "accelerate", "mlflow")]


def log_student(tracker: Tracker, run_id: str, folder: Path, registered_name: str | None,
                tags: Mapping[str, str]) -> LoggedStudent:
    """Log the model folder in run `run_id` (transformers flavor) and register it."""
    import mlflow
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # From memory: MLflow 3.17's from-a-folder path fails on transformers 5's task registry
    # ("'str' object has no attribute '__name__'"); the weights are saved again as they are.
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    card = Path(folder) / "README.md"  # our model card (cards.py), else MLflow asks the Hub
    extra = {"model_card": ModelCard.load(str(card))} if card.exists() else {}
    with _fluent_uri(tracker.uri), mlflow.start_run(run_id=run_id):
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer}, name=ARTIFACT_NAME,
            task="text-generation",
            signature=_signature(), pip_requirements=_requirements(),
            registered_model_name=registered_name, tags=dict(tags), await_registration_for=60,
            **extra)
    version = info.registered_model_version
    return LoggedStudent(run_id=run_id, experiment_id=tracker.experiment_id,
                         model_uri=info.model_uri, model_id=info.model_id,
                         registered_name=registered_name,
                         version=str(version) if version is not None else None)


def record_eval(tracker: Tracker, logged: LoggedStudent, eval_run_id: str,
                metrics: Mapping[str, float]) -> None:
    """eval_report's figures on the model: tags on the registered version, metrics on the
    logged model (linked to the eval run)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracker.uri)
    for name, value in metrics.items():
        key = name.replace("@", "_at_")  # MLflow keys allow letters, digits, _ - . / and space
        if logged.registered_name and logged.version:
            client.set_model_version_tag(logged.registered_name, logged.version,
                                         f"eval.{key}", f"{value:.6g}")
        if logged.model_id:
            client.log_metric(eval_run_id, f"eval.{key}", float(value), model_id=logged.model_id)


def ui_base(tracker: Tracker, configured: str | None) -> str:
    """The MLflow UI's address for links: the configured one, else the tracking server (an
    http(s) URI, credentials removed), else what `mlflow ui` serves by default."""
    if configured:
        return configured.rstrip("/")
    if tracker.uri.startswith(("http://", "https://")):
        return redact_uri(tracker.uri).rstrip("/")
    return "http://127.0.0.1:5000"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def version_url(base: str, name: str, version: str) -> str:
    return f"{base}/#/models/{name}/versions/{version}"
