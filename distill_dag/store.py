"""The project's storage: a DuckDB catalog for stage tables, Parquet chunks for streamed results.

DuckDB allows one writing process per database file, and Dagster runs steps in separate
processes. So:

- Stage tables (queries, teacher_outputs, ...) live in ``catalog.duckdb``. Every access opens a
  short-lived connection while holding an inter-process file lock; a step that cannot get the
  lock within ``lock_timeout`` fails with a clear message and writes nothing. Each write is one
  transaction, so a crash never leaves half a table.
- Results that stream in for minutes (one row per generated sample, per scored sequence) are
  appended as small Parquet files, each written to a temporary name and renamed into place. A
  crash loses at most the batch in flight; concurrent partitions write to different folders and
  never wait on each other. Readers de-duplicate on the key column.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from distill_dag.errors import DistillError


class StoreLockedError(DistillError, RuntimeError):
    """Another process held the catalog for longer than the lock timeout (may pass later)."""

    retryable = True


class Store:
    def __init__(self, root: str | Path, lock_timeout: float = 300.0) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.catalog_path = self.root / "catalog.duckdb"
        self.lock_timeout = lock_timeout

    # -- catalog (DuckDB) ------------------------------------------------------------------------
    @contextmanager
    def connect(self) -> Iterator:
        """An exclusive, short-lived connection to the catalog."""
        import duckdb
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.catalog_path) + ".lock")
        try:
            lock.acquire(timeout=self.lock_timeout)
        except Timeout as exc:
            raise StoreLockedError(
                f"the store catalog {self.catalog_path} is locked by another process for more than "
                f"{self.lock_timeout:g} s; nothing was written. Retry when that run finishes."
            ) from exc
        try:
            conn = duckdb.connect(str(self.catalog_path))
            try:
                yield conn
            finally:
                conn.close()
        finally:
            lock.release()

    def table_exists(self, name: str) -> bool:
        with self.connect() as conn:
            return _exists(conn, name)

    def write_table(self, name: str, frame: pl.DataFrame) -> None:
        """Replace a whole table atomically."""
        with self.connect() as conn:
            conn.register("incoming", frame.to_arrow())
            conn.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM incoming')

    def replace_rows(self, name: str, frame: pl.DataFrame, column: str, value: str) -> None:
        """Replace the rows where ``column = value`` (one partition) in one transaction."""
        with self.connect() as conn:
            conn.register("incoming", frame.to_arrow())
            conn.execute("BEGIN TRANSACTION")
            try:
                if not _exists(conn, name):
                    conn.execute(f'CREATE TABLE "{name}" AS SELECT * FROM incoming')
                elif _columns(conn, name) == list(frame.columns):
                    conn.execute(f'DELETE FROM "{name}" WHERE "{column}" = ?', [value])
                    conn.execute(f'INSERT INTO "{name}" SELECT * FROM incoming')
                else:  # the schema changed with the code: keep other partitions, align by name
                    conn.execute(
                        f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM "{name}" '
                        f'WHERE "{column}" IS DISTINCT FROM ? '
                        "UNION ALL BY NAME SELECT * FROM incoming",
                        [value],
                    )
                conn.execute("COMMIT")
            except Exception:
                conn.execute("ROLLBACK")
                raise

    def read_table(self, name: str, where: str | None = None, params: list | None = None
                   ) -> pl.DataFrame:
        with self.connect() as conn:
            if not _exists(conn, name):
                raise KeyError(
                    f"table {name!r} is not in the store {self.catalog_path}; materialize the "
                    "asset that writes it first"
                )
            sql = f'SELECT * FROM "{name}"' + (f" WHERE {where}" if where else "")
            return pl.from_arrow(conn.sql(sql, params=params or None).to_arrow_table())

    def query(self, sql: str, params: list | None = None) -> pl.DataFrame:
        with self.connect() as conn:
            return pl.from_arrow(conn.sql(sql, params=params or None).to_arrow_table())

    # -- streamed chunks (Parquet) ---------------------------------------------------------------
    def chunk_dir(self, kind: str, name: str) -> Path:
        return self.root / kind / name

    def append_chunk(self, kind: str, name: str, frame: pl.DataFrame) -> Path:
        """Write one batch atomically: it is either fully there after a crash or not at all."""
        folder = self.chunk_dir(kind, name)
        folder.mkdir(parents=True, exist_ok=True)
        # Names sort in write order (a nanosecond clock, then a random tie-breaker), so "first
        # written wins" does not depend on file-system mtimes surviving a copy.
        final = folder / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = folder / f".{final.name}.tmp"
        frame.write_parquet(tmp)
        with open(tmp, "rb") as handle:  # make the bytes durable before the name is
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        return final

    def read_chunks(self, kind: str, name: str, key: str) -> pl.DataFrame | None:
        """All rows of a chunk folder, one per key (the first written wins), or None if empty."""
        folder = self.chunk_dir(kind, name)
        files = sorted(folder.glob("*.parquet")) if folder.exists() else []
        if not files:
            return None
        frames = [pl.read_parquet(f) for f in files]
        return pl.concat(frames, how="diagonal_relaxed").unique(subset=[key], keep="first",
                                                                 maintain_order=True)


def _exists(conn, name: str) -> bool:
    rows = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
    ).fetchall()
    return bool(rows and rows[0][0])


def _columns(conn, name: str) -> list[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
        "ORDER BY ordinal_position",
        [name],
    ).fetchall()
    return [r[0] for r in rows]
