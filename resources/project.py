"""Resources: the project config file, the store, and where models run (device, dtype)."""


import os

import dagster as dg

from distill_dag.config import ProjectConfig, load_project_config
from distill_dag.store import Store


def default_home() -> str:
    """Run-time state (store, artifacts) lives here: $DISTILL_DAG_HOME or ./var."""
    return os.environ.get("DISTILL_DAG_HOME", "var")


class ProjectResource(dg.ConfigurableResource):
    """The project config file (corpus, teachers, student, stage knobs)."""

    config_path: str
    # The config's fingerprint when the code location loaded it ("" = do not check). Partitions
    # and code versions were derived from that content, so a run on an edited file must stop.
    loaded_fingerprint: str = ""

    def load(self) -> ProjectConfig:
        project = load_project_config(self.config_path)
        if self.loaded_fingerprint and project.fingerprint() != self.loaded_fingerprint:
            raise dg.Failure(allow_retries=False,
                description=f"{self.config_path} changed since the code location loaded it; "
                "its teachers (partitions) and code versions come from the loaded content. "
                "Reload the code location (Reload definitions in the web UI, or restart) and "
                "materialize again.")
        return project


class StoreResource(dg.ConfigurableResource):
    """The DuckDB catalog and Parquet chunks under home/store; artifacts under home/artifacts."""

    home: str
    lock_timeout_s: float = 300.0  # how long a step waits for the catalog before failing

    def store(self) -> Store:
        return Store(os.path.join(self.home, "store"), lock_timeout=self.lock_timeout_s)

    def artifact_dir(self, *parts: str) -> str:
        path = os.path.join(self.home, "artifacts", *parts)
        os.makedirs(path, exist_ok=True)
        return path


class RuntimeResource(dg.ConfigurableResource):
    """Where models run. 'auto' = CUDA when present, bf16 where the hardware has it natively."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | bf16 | fp16 | fp32
    show_progress: bool = True  # tqdm bars on stderr (visible in the run's compute logs)
