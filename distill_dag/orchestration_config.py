"""Settings for how Dagster runs the stages: retries, run time limits, the backfill schedule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distill_dag.configbase import build_config, check_int, check_number


@dataclass
class OrchestrationConfig:
    """How steps are retried and bounded, and when the backfill schedule ticks.

    Changing these never makes an asset stale: they shape how work runs, not what it produces."""

    # Retries of a step that failed for a reason that may pass: out of memory on the GPU, a lost
    # endpoint, a killed worker, a store catalog locked for too long by another run. Errors in
    # config or data fail at once: they are raised as non-retryable.
    retries: int = 2
    # Seconds before the first retry; doubled for each later one, with jitter.
    retry_delay_s: float = 30.0
    # Run tag dagster/max_runtime on the runs distill-dag launches (command, schedule, sensor,
    # the distill_all job): with run monitoring on (dagster.yaml), the daemon fails a run that
    # takes longer, so a hung GPU step does not hold the pool forever. 0 = no limit.
    max_runtime_s: int = 6 * 3600
    # Cron expression of stale_backfill_schedule (it starts stopped; turn it on in the UI).
    backfill_cron: str = "*/15 * * * *"

    def __post_init__(self) -> None:
        check_int("retries", self.retries, minimum=0)
        check_number("retry_delay_s", self.retry_delay_s, 0.0)
        check_int("max_runtime_s", self.max_runtime_s, minimum=0)
        from dagster._utils.schedules import is_valid_cron_string

        if not isinstance(self.backfill_cron, str) or not is_valid_cron_string(self.backfill_cron):
            raise ValueError(f"backfill_cron must be a cron expression, got {self.backfill_cron!r}")

    def run_tags(self) -> dict[str, str]:
        return {"dagster/max_runtime": str(self.max_runtime_s)} if self.max_runtime_s else {}

    @classmethod
    def from_dict(cls, data: Any, where: str = "orchestration") -> OrchestrationConfig:
        return build_config(cls, data, where)
