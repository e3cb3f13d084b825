"""Settings for how Dagster runs the stages: retries, run time limits, the backfill schedule."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from distill_dag.configbase import Config, ConfigError, check_int, check_number, setting

EXECUTORS = ("multiprocess", "in_process", "k8s")
_CRON = re.compile(r"^([0-9A-Za-z*/,?-]+\s+){4}[0-9A-Za-z*/,?-]+$")


@dataclass
class OrchestrationConfig(Config):
    """How steps are retried and bounded, and when the backfill schedule ticks.

    Changing these never makes an asset stale: they shape how work runs, not what it produces
    (every field is output=False). Retries and the schedule's cron are read when the code
    location loads: reload it (or restart `dagster dev`) after editing them."""

    WHERE: ClassVar[str] = "orchestration"

    retries: int = setting(
        2, "Retries of a step that raised an error that may pass: out of memory on the GPU, a "
        "lost endpoint, a store catalog locked too long by another run. Errors in config or "
        "data are raised as non-retryable and fail at once. (A killed run process needs "
        "Dagster's run retries, `run_retries` in dagster.yaml.)", output=False)
    retry_delay_s: float = setting(
        30.0, "Seconds before the first retry; doubled for each later one, with jitter.",
        output=False)
    max_runtime_s: int = setting(
        6 * 3600, "Run tag dagster/max_runtime on the runs distill-dag launches (the command, "
        "the schedule, the sensors): with run monitoring on (dagster.yaml), the daemon fails a "
        "run that takes longer, so a hung GPU step does not hold the pool forever. 0 = no "
        "limit.", output=False)
    backfill_cron: str = setting(
        "*/15 * * * *", "Cron expression of stale_backfill_schedule (it starts stopped; turn it "
        "on in the UI).", output=False)
    k8s_gpus: int = setting(
        0, "GPUs each GPU step (generation, scoring, training, eval) requests from Kubernetes "
        "when the code location runs with dagster-k8s's k8s_job_executor (op tag "
        "dagster-k8s/config, resource limit nvidia.com/gpu). 0 = no request (CPU, or one local "
        'GPU shared via the "gpu" concurrency pool). teacher_outputs asks for at least the '
        "largest vllm tensor_parallel_size, distilled_checkpoint for at least "
        "training.num_processes.", output=False)
    executor: str = setting(
        "multiprocess", 'How a run\'s steps execute: "multiprocess" (Dagster\'s default: one '
        'process per step on this machine), "in_process" (one process for the whole run), or '
        "\"k8s\" (dagster-k8s's k8s_job_executor: one Kubernetes pod per step, GPU requests "
        "from k8s_gpus; needs the `k8s` extra, pip install 'distill-dag[k8s]'). `distill-dag "
        "materialize` always runs in process.", output=False)

    def __post_init__(self) -> None:
        check_int("retries", self.retries, minimum=0)
        check_number("retry_delay_s", self.retry_delay_s, 0.0)
        check_int("max_runtime_s", self.max_runtime_s, minimum=0)
        check_int("k8s_gpus", self.k8s_gpus, minimum=0)
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor must be one of {list(EXECUTORS)}, got {self.executor!r}")
        if not isinstance(self.backfill_cron, str) or not _CRON.match(self.backfill_cron.strip()):
            raise ConfigError("backfill_cron must be a 5-field cron expression such as "
                              f"'*/15 * * * *', got {self.backfill_cron!r}")

    def gpu_op_tags(self, at_least: int = 1) -> dict:
        """Op tags for GPU steps: a Kubernetes GPU request when k8s_gpus > 0, raised to
        `at_least` for a step that needs more (vLLM tensor parallelism, data-parallel training)."""
        if not self.k8s_gpus:
            return {}
        limits = {"nvidia.com/gpu": str(max(self.k8s_gpus, at_least))}
        return {"dagster-k8s/config": {"container_config": {"resources": {
            "requests": limits, "limits": limits}}}}

    def run_tags(self) -> dict[str, str]:
        return {"dagster/max_runtime": str(self.max_runtime_s)} if self.max_runtime_s else {}
