"""The shape of a stage: what it declares (Stage), what it is given (StageContext) and what it
returns (StageOutput with Check results). Pure Python: Dagster, a script or a notebook run the
same stage function.

A stage function takes a StageContext and returns a StageOutput. It reads its inputs from the
store, writes the tables it owns, and returns its metadata (plain values, or Markdown / Path /
Json for richer display), its check results, a content-based data version and counters of the
expensive work it did (what it reused is not counted).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

    from distill_dag.config import ProjectConfig
    from distill_dag.store import Store

WARN = "warn"
ERROR = "error"


class Markdown(str):
    """A metadata value shown as rendered markdown."""


class PathValue(str):
    """A metadata value that is a file or folder path."""


class Url(str):
    """A metadata value that is a link (the MLflow run, the registered model version)."""


@dataclass(frozen=True)
class Json:
    """A metadata value shown as JSON (lists, nested dicts)."""

    value: Any


@dataclass(frozen=True)
class CheckSpec:
    """A check a stage declares: its result comes back in every StageOutput."""

    name: str
    description: str
    # A failed blocking check stops the downstream stages of the same run (Dagster semantics).
    blocking: bool = False


@dataclass
class Check:
    """One check result. severity "warn" reports without failing; "error" marks a defect."""

    name: str
    passed: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    severity: str = ERROR
    description: str | None = None


@dataclass
class StageOutput:
    """What a stage returns: the tables it wrote, metadata, checks, data version, work done."""

    data_version: str
    metadata: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    # Counters of expensive work done now (samples generated, training steps, ...): summed over
    # a run they show what a rerun recomputed.
    work: dict[str, int] = field(default_factory=dict)
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    row_count: int | None = None


@dataclass
class StageContext:
    """Everything a stage function gets: the config, the store, where artifacts go, where models
    run, which teacher partition (partitioned stages), and a logger."""

    project: ProjectConfig
    store: Store
    home: Path  # run-time state: store/ and artifacts/ live under it
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | bf16 | fp16 | fp32
    show_progress: bool = True  # tqdm bars on stderr
    partition: str | None = None  # the teacher name, for partitioned stages
    run_id: str | None = None  # the orchestrator's run id, recorded in MLflow runs
    log: Any = field(default_factory=lambda: logging.getLogger("distill_dag"))

    def artifact_dir(self, *parts: str) -> Path:
        path = Path(self.home) / "artifacts" / Path(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @classmethod
    def local(cls, project: ProjectConfig, home: str | os.PathLike = "var",
              **kwargs: Any) -> StageContext:
        """A context for running stages from a script or notebook."""
        from distill_dag.store import Store

        home = Path(home).resolve()
        return cls(project=project, store=Store(home / "store"), home=home, **kwargs)


@dataclass(frozen=True)
class Stage:
    """One stage of the DAG, declared once in distill_dag/stages/__init__.py. The assets' deps,
    code versions, run order and the stale engine are derived from these declarations."""

    name: str  # the asset name
    run: Callable[[StageContext], StageOutput]
    description: str
    reads: tuple[str, ...] = ()  # tables read (from distill_dag.tables); deps derive from them
    writes: tuple[str, ...] = ()  # tables this stage owns
    observes: tuple[str, ...] = ()  # observed inputs (corpus files, teacher settings)
    partitioned: bool = False  # one partition per teacher
    # The config sections whose content is part of the code version (editing them shows the
    # stage as changed); `settings` overrides that with a function of the whole config.
    config_sections: tuple[str, ...] = ()
    settings: Callable[[ProjectConfig], str] | None = None
    version: str = "1"  # bump when the stage's code changes what it produces
    # GPUs one step needs (0 = a CPU stage): GPU stages share the "gpu" concurrency pool.
    gpus: Callable[[ProjectConfig], int] = lambda project: 0
    checks: tuple[CheckSpec, ...] = ()
    kinds: tuple[str, ...] = ()

    def code_version(self, project: ProjectConfig) -> str:
        if self.settings is not None:
            return f"{self.version}+{self.settings(project)}"
        if self.config_sections:
            return f"{self.version}+{project.section_hash(*self.config_sections)}"
        return self.version


def writers(stages: Sequence[Stage]) -> dict[str, str]:
    """Table -> the stage that writes it; a table written by two stages is an error."""
    owner: dict[str, str] = {}
    for stage in stages:
        for table in stage.writes:
            if table in owner:
                raise ValueError(f"table {table!r} is written by both {owner[table]!r} and "
                                 f"{stage.name!r}: a table has one owner")
            owner[table] = stage.name
    return owner


def upstream(stage: Stage, stages: Sequence[Stage]) -> list[str]:
    """The stages whose tables `stage` reads, in declaration order."""
    owner = writers(stages)
    missing = [t for t in stage.reads if t not in owner]
    if missing:
        raise ValueError(f"stage {stage.name!r} reads {missing}, which no stage writes")
    names = {owner[t] for t in stage.reads} - {stage.name}
    return [s.name for s in stages if s.name in names]


def in_order(stages: Sequence[Stage]) -> list[Stage]:
    """The stages in dependency order (declaration order among independent ones); a cycle is
    an error naming it."""
    by_name = {s.name: s for s in stages}
    done: list[Stage] = []
    state: dict[str, str] = {}

    def visit(stage: Stage, path: list[str]) -> None:
        if state.get(stage.name) == "done":
            return
        if state.get(stage.name) == "visiting":
            raise ValueError("stages depend on each other in a cycle: "
                             + " -> ".join([*path, stage.name]))
        state[stage.name] = "visiting"
        for name in upstream(stage, stages):
            visit(by_name[name], [*path, stage.name])
        state[stage.name] = "done"
        done.append(stage)

    for stage in stages:
        visit(stage, [])
    return done


def content_version(frame: pl.DataFrame, columns: Sequence[str]) -> str:
    """A data version from the content of `columns` (row order does not matter)."""
    rows = frame.select(list(columns)).sort(list(columns)).rows()
    return hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()[:16]


def removal_share_check(shares: dict[str, float], limit: float) -> Check:
    """The `removal_share` check: a warning when a curation step removed more than `limit` of
    what it was given (`shares`: step -> removed share)."""
    heavy = {step: share for step, share in shares.items() if share > limit}
    return Check("removal_share", passed=not heavy, severity=WARN,
                 metadata={**{f"removed_share_{k}": round(v, 4) for k, v in shares.items()},
                           "over_limit": ", ".join(f"{k} removed {v:.0%}"
                                                   for k, v in heavy.items()) or "none",
                           "warn_removed_share": limit})


def preview(frame: pl.DataFrame, columns: Sequence[str], rows: int = 5, width: int = 80
            ) -> Markdown:
    """The first rows as a markdown table, long cells cut to `width` characters."""
    head = frame.select([c for c in columns if c in frame.columns]).head(rows)
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    for row in head.iter_rows():
        cells = [str(v).replace("\n", " ").replace("|", "\\|") for v in row]
        lines.append("| " + " | ".join(c if len(c) <= width else c[: width - 1] + "…"
                                       for c in cells) + " |")
    return Markdown("\n".join(lines))
