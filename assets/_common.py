"""Small helpers shared by the asset modules: content hashes and markdown previews."""

from __future__ import annotations

import hashlib
import json

import dagster as dg
import polars as pl

from distill_dag.config import ProjectConfig


def content_version(frame: pl.DataFrame, columns: list[str]) -> dg.DataVersion:
    """A data version from the content of `columns` (row order does not matter)."""
    rows = frame.select(columns).sort(columns).rows()
    digest = hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()[:16]
    return dg.DataVersion(digest)


WORK_PREFIX = "work/"


def fail(description: str) -> dg.Failure:
    """A step failure caused by config or data: retrying cannot help, so it is not retried."""
    return dg.Failure(description=description, allow_retries=False)


def retry_policy(project: ProjectConfig) -> dg.RetryPolicy | None:
    """Retries for transient failures (see OrchestrationConfig.retries); errors in config or
    data are raised with `fail` and are never retried."""
    cfg = project.orchestration
    if not cfg.retries:
        return None
    return dg.RetryPolicy(max_retries=cfg.retries, delay=cfg.retry_delay_s,
                          backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def stale_or_updated() -> dg.AutomationCondition:
    """Declarative Automation for every stage: request an asset (partition) when it is missing,
    its code version changed, or an input's data version changed (a rerun that produced the
    same content pulls nothing along); wait while an input is missing or running, and never run
    it twice at once. Evaluated by the distill_automation sensor."""
    return (
        (dg.AutomationCondition.newly_missing()
         | dg.AutomationCondition.code_version_changed()
         | dg.AutomationCondition.any_deps_match(
             dg.AutomationCondition.data_version_changed())).since_last_handled()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("stale_or_updated")


def work_counters(**counts: int) -> dict[str, dg.MetadataValue]:
    """Metadata entries that count the expensive work a step did (not what it reused), e.g.
    work/tokens_generated. The stale command sums them over a run to show what was recomputed."""
    return {WORK_PREFIX + name: dg.MetadataValue.int(int(value)) for name, value in counts.items()}


def preview(frame: pl.DataFrame, columns: list[str], rows: int = 5, width: int = 80
            ) -> dg.MetadataValue:
    """The first rows as a markdown table, long cells cut to `width` characters."""
    head = frame.select([c for c in columns if c in frame.columns]).head(rows)
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    for row in head.iter_rows():
        cells = [str(v).replace("\n", " ").replace("|", "\\|") for v in row]
        lines.append("| " + " | ".join(c if len(c) <= width else c[: width - 1] + "…"
                                       for c in cells) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def removal_share_check(shares: dict[str, float], limit: float) -> dg.AssetCheckResult:
    """The `removal_share` check: a warning when a curation step removed more than `limit` of
    what it was given (`shares`: step -> removed share)."""
    heavy = {step: share for step, share in shares.items() if share > limit}
    return dg.AssetCheckResult(
        check_name="removal_share", passed=not heavy, severity=dg.AssetCheckSeverity.WARN,
        metadata={**{f"removed_share_{k}": round(v, 4) for k, v in shares.items()},
                  "over_limit": ", ".join(f"{k} removed {v:.0%}" for k, v in heavy.items())
                  or "none",
                  "warn_removed_share": limit})
