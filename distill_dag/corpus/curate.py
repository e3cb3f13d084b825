"""Build the curated query table: load every source, run the curation steps, assemble tables.

The steps themselves (clean, exact dedup, split, decontamination, near-duplicates) are objects
in steps.py; this module runs them in order and turns what they return into the query table,
the quarantine table, the counts, timings and rows in and out of each step.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from distill_dag.corpus.config import CorpusConfig
from distill_dag.corpus.generator import generate_word_problems
from distill_dag.corpus.loaders import load_file, quarantine_record, source_present
from distill_dag.corpus.semantic import QueryVectors
from distill_dag.corpus.steps import STEPS, CurationStep, Removal
from distill_dag.errors import DistillError

QUERY_SCHEMA: dict[str, Any] = {
    "query_id": pl.String,
    "prompt": pl.String,
    "reference_answer": pl.String,
    "domain": pl.String,
    "source": pl.String,
    "split": pl.String,
    "difficulty": pl.Int64,
    "source_file": pl.String,
    "source_line": pl.Int64,
    # "explicit" (a file's split column or a source's forced split) or "hash" (eval_fraction):
    # a file that disappears keeps its rows' splits, and only explicit eval rows make the
    # corpus one with an explicit eval set.
    "split_origin": pl.String,
}
QUARANTINE_SCHEMA: dict[str, Any] = {
    "source_file": pl.String,
    "line": pl.Int64,
    "field": pl.String,
    "reason": pl.String,
    "raw": pl.String,
    "stage": pl.String,
    # The row a duplicate or contamination removal matched (kept, or in the eval set) and how
    # close it was (1.0 for the same text, the estimated Jaccard or cosine for near-duplicates,
    # null for an n-gram match); null for rows removed on their own, and for conflicts.
    "matched_query_id": pl.String,
    "similarity": pl.Float64,
}


class EmptyCorpusError(DistillError, ValueError):
    """No training query survived loading and curation."""


@dataclass
class CorpusResult:
    """The curated queries, everything set aside (with reasons), and counts."""

    queries: pl.DataFrame
    quarantine: pl.DataFrame
    stats: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each step
    # Rows entering and leaving each filtering step, in order (for removal shares).
    step_rows: dict[str, tuple[int, int]] = field(default_factory=dict)
    # The embeddings of the kept queries (None when the embedding step is off), so the leakage
    # and duplicate checks can search the final table without encoding it again.
    embeddings: QueryVectors | None = None


def _quarantine_row(removal: Removal) -> dict:
    row = removal.row
    record = quarantine_record(row.get("source_file"), row.get("source_line"), removal.field,
                               removal.reason, row["prompt"])
    record.update(stage=removal.stage, matched_query_id=removal.matched,
                  similarity=removal.similarity)
    return record


def _reason_pattern(reason: str) -> str:
    # Group reasons that differ only in quoted values, numbers or ids.
    return re.sub(r"[0-9a-f]{16}|\d+", "N", re.sub(r"'[^']*'", "'…'", reason))


def _empty_message(stats: dict[str, int], quarantine: list[dict]) -> str:
    counts = Counter(_reason_pattern(q["reason"]) for q in quarantine)
    examples: dict[str, str] = {}
    for q in quarantine:
        examples.setdefault(_reason_pattern(q["reason"]), q["reason"])
    top = "; ".join(f"{c} x {examples[p]}" for p, c in counts.most_common(5)) or "none"
    return (
        f"no usable training queries: read {stats['rows_read']} rows, "
        f"{stats['rows_quarantined']} quarantined, {stats['eval']} in eval. "
        f"Top quarantine reasons: {top}"
    )


def _carried_rows(previous: pl.DataFrame | None, source_file: str) -> list[dict]:
    """The rows a previous build ingested from `source_file` (matched by path, else by file
    name, so a moved project folder still finds them), ready to curate again. A datasets
    folder's rows include those of its splits (source_file `<folder>/<split>`)."""
    if previous is None or previous.is_empty():
        return []
    column = pl.col("source_file")
    rows = previous.filter((column == source_file)
                           | column.str.starts_with(source_file.rstrip("/\\") + os.sep))
    if rows.is_empty():
        name = Path(source_file).name
        match = column.str.extract(r"([^/\\]+)$") == name
        if "source" in previous.columns:  # a split of a datasets folder of that name
            match = match | ((column.str.extract(r"([^/\\]+)[/\\][^/\\]+$") == name)
                             & (pl.col("source") == name))
        rows = previous.filter(match)
    # A carried row keeps the split it had (the split it was trained or evaluated in must not
    # change because its file is gone) and where that split came from (tables written before
    # split_origin existed: treated as hashed).
    return [{**{k: v for k, v in r.items() if k != "query_id"},
             "split_origin": r.get("split_origin") or "hash"} for r in rows.to_dicts()]


def _load_sources(cfg: CorpusConfig, previous: pl.DataFrame | None, rows: list[dict],
                  setaside: list[dict], stats: Counter, warnings: list[str]) -> None:
    """Read every source. A file that disappeared after it was ingested keeps its queries."""
    for source in cfg.all_sources():
        if not source_present(source):
            carried = _carried_rows(previous, str(Path(source.path)))
            if not carried:
                load_file(source)  # raises FileNotFoundError naming the file
            what = "datasets folder" if source.resolved_format == "datasets" else "file"
            warnings.append(f"corpus {what} {source.path} is gone; its {len(carried)} queries "
                            "ingested earlier are kept")
            rows.extend(carried)
            stats["rows_carried"] += len(carried)
            continue
        loaded = load_file(source)
        stats["rows_read"] += loaded.rows_read
        rows.extend(loaded.rows)
        setaside.extend({**q, "stage": "load"} for q in loaded.quarantine)
    if cfg.inbox is None or previous is None or previous.is_empty():
        return
    # Inbox files are listed from the folder, so a removed one is simply not listed.
    listed = {Path(s.path).name for s in cfg.inbox.sources()}
    folder = Path(cfg.inbox.folder)
    ingested = previous.filter(pl.col("source_file").is_not_null())
    origin = (dict(zip(ingested["source_file"], ingested["source"], strict=True))
              if "source" in ingested.columns else {})
    gone: dict[str, str] = {}  # what is gone -> what it was, in order
    for name in sorted(ingested["source_file"].unique()):
        # Matched by folder name too, so a moved project folder still finds its inbox rows.
        path = Path(name)
        if path.parent.name == folder.name and path.name not in listed:
            gone.setdefault(name, "file")
        elif (path.parent.parent.name == folder.name and path.parent.name not in listed
              and origin.get(name) == path.parent.name):  # a split of a DatasetDict folder
            gone.setdefault(str(path.parent), "datasets folder")
    for name, what in gone.items():
        carried = _carried_rows(previous, name)
        warnings.append(f"inbox {what} {name} is gone; its {len(carried)} queries ingested "
                        "earlier are kept")
        rows.extend(carried)
        stats["rows_carried"] += len(carried)


def _load(cfg: CorpusConfig, previous: pl.DataFrame | None, stats: Counter,
          warnings: list[str]) -> tuple[list[dict], list[dict]]:
    """The generated queries, then every source's rows; and the rows the loaders set aside."""
    rows: list[dict] = []
    setaside: list[dict] = []
    gen = cfg.effective_generator()
    if gen is not None:
        for i, row in enumerate(generate_word_problems(gen.n, gen.seed, gen.levels), 1):
            rows.append({**row, "source_file": None, "source_line": i})
        stats["rows_read"] += gen.n
    _load_sources(cfg, previous, rows, setaside, stats, warnings)
    return rows, setaside


def _apply(step: CurationStep, rows: list[dict], cfg: CorpusConfig, setaside: list[dict],
           stats: Counter, warnings: list[str]) -> tuple[list[dict], np.ndarray | None]:
    """Run one step: its removals become quarantine records and counts. Returns the kept rows
    and the step's embeddings (None unless it computed them)."""
    out = step.apply(rows, cfg)
    counted = Counter(removal.count for removal in out.removed) + out.noted
    undeclared = sorted(set(counted) - set(step.counts))
    if undeclared:
        raise TypeError(f"curation step {step.name!r} counted {undeclared}, which are not in "
                        f"its counts {step.counts}")
    setaside.extend(_quarantine_row(removal) for removal in out.removed)
    stats.update(counted)
    warnings.extend(out.warnings)
    return out.kept, out.vectors


def _kept_vectors(vectors: QueryVectors | None, rows: list[dict]) -> QueryVectors | None:
    """The embeddings of the final rows (a step after the embedding step may remove rows)."""
    if vectors is None:
        return None
    ids = [r["query_id"] for r in rows]
    return vectors if ids == vectors.ids else QueryVectors(ids, vectors.rows(ids))


def build_corpus(cfg: CorpusConfig, previous: pl.DataFrame | None = None,
                 steps: Sequence[CurationStep] = STEPS) -> CorpusResult:
    """Load every source and run the curation `steps` in order (default: steps.STEPS). Raises
    EmptyCorpusError when no training query remains.

    `previous` is the last query table: queries of a file that has since disappeared are taken
    from it (with a warning) rather than lost."""
    stats: Counter = Counter()
    warnings: list[str] = []
    seconds: dict[str, float] = {}
    step_rows: dict[str, tuple[int, int]] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = now - clock
        clock = now

    names = [step.name for step in steps]
    if len(set(names)) < len(names) or {"load", "tables"} & set(names):
        raise TypeError(f"curation step names must be unique and not load or tables: {names}")
    rows, setaside = _load(cfg, previous, stats, warnings)
    lap("load")
    vectors: QueryVectors | None = None
    for step in steps:
        before = len(rows)
        rows, found = _apply(step, rows, cfg, setaside, stats, warnings)
        if found is not None:
            vectors = QueryVectors([r["query_id"] for r in rows], found)
        lap(step.name)
        step_rows[step.name] = (before, len(rows))

    queries = pl.DataFrame(
        [{col: r.get(col) for col in QUERY_SCHEMA} for r in rows], schema=QUERY_SCHEMA
    ).sort(["split", "query_id"])
    quarantine = pl.DataFrame(
        [{col: q.get(col) for col in QUARANTINE_SCHEMA} for q in setaside], schema=QUARANTINE_SCHEMA
    )
    # Every step's counts, zero when it removed nothing, between what loading read and carried.
    keys = ["rows_read", *(key for step in steps for key in step.counts), "rows_carried"]
    result_stats = {key: int(stats[key]) for key in keys}
    result_stats["rows_quarantined"] = quarantine.height
    result_stats["train"] = queries.filter(pl.col("split") == "train").height
    result_stats["eval"] = queries.filter(pl.col("split") == "eval").height
    if result_stats["train"] == 0:
        raise EmptyCorpusError(_empty_message(result_stats, setaside))
    lap("tables")
    return CorpusResult(queries=queries, quarantine=quarantine, stats=result_stats,
                        warnings=warnings, seconds=seconds, step_rows=step_rows,
                        embeddings=_kept_vectors(vectors, rows))
