"""Small helpers shared by the asset modules: content hashes and markdown previews."""

from __future__ import annotations

import hashlib
import json

import dagster as dg
import polars as pl


def content_version(frame: pl.DataFrame, columns: list[str]) -> dg.DataVersion:
    """A data version from the content of `columns` (row order does not matter)."""
    rows = frame.select(columns).sort(columns).rows()
    digest = hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()[:16]
    return dg.DataVersion(digest)


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
