"""Behaviour of the project store: DuckDB stage tables behind a file lock, Parquet chunk folders."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from distill_dag.store import Store, StoreLockedError


def _sorted(frame: pl.DataFrame, *by: str) -> pl.DataFrame:
    return frame.sort(*by)


# -- catalog tables -------------------------------------------------------------------------------


def test_write_then_read_round_trips_values_and_list_columns(tmp_path: Path) -> None:
    store = Store(tmp_path)
    frame = pl.DataFrame(
        {
            "request_key": ["k1", "k2", "k3"],
            "score": [0.5, -1.25, None],
            "n": [1, 2, 3],
            "tokens": [[1, 2, 3], [], [7]],
            "sentences": [["a.", "b."], ["c."], []],
        }
    )
    store.write_table("teacher_outputs", frame)
    back = store.read_table("teacher_outputs")
    assert back.schema == frame.schema
    assert_frame_equal(_sorted(back, "request_key"), frame)
    assert store.table_exists("teacher_outputs")
    assert not store.table_exists("other")


def test_write_table_replaces_the_whole_table(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write_table("t", pl.DataFrame({"a": [1, 2, 3]}))
    store.write_table("t", pl.DataFrame({"b": ["x"]}))
    assert_frame_equal(store.read_table("t"), pl.DataFrame({"b": ["x"]}))


def test_read_table_with_where_and_params(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write_table("t", pl.DataFrame({"teacher": ["a", "b", "a"], "v": [1, 2, 3]}))
    got = store.read_table("t", "teacher = ?", ["a"])
    assert sorted(got["v"].to_list()) == [1, 3]


def test_replace_rows_replaces_only_one_partition(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.replace_rows("t", pl.DataFrame({"teacher": ["a", "a"], "v": [1, 2]}), "teacher", "a")
    store.replace_rows("t", pl.DataFrame({"teacher": ["b"], "v": [10]}), "teacher", "b")
    store.replace_rows("t", pl.DataFrame({"teacher": ["a"], "v": [3]}), "teacher", "a")
    got = _sorted(store.read_table("t"), "teacher", "v")
    assert got.rows() == [("a", 3), ("b", 10)]


def test_replace_rows_with_new_schema_keeps_other_partitions(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.replace_rows("t", pl.DataFrame({"teacher": ["a", "a"], "v": [1, 2]}), "teacher", "a")
    store.replace_rows("t", pl.DataFrame({"teacher": ["b"], "v": [10]}), "teacher", "b")
    # The code now writes an extra column for partition "a" only.
    store.replace_rows(
        "t", pl.DataFrame({"teacher": ["a"], "v": [3], "extra": ["new"]}), "teacher", "a"
    )
    got = _sorted(store.read_table("t"), "teacher")
    assert set(got.columns) == {"teacher", "v", "extra"}
    assert got.select("teacher", "v", "extra").rows() == [("a", 3, "new"), ("b", 10, None)]


def test_replace_rows_with_dropped_column_keeps_other_partitions(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write_table("t", pl.DataFrame({"teacher": ["a", "b"], "v": [1, 2], "old": ["x", "y"]}))
    store.replace_rows("t", pl.DataFrame({"teacher": ["b"], "v": [5]}), "teacher", "b")
    got = _sorted(store.read_table("t"), "teacher")
    assert got.select("teacher", "v", "old").rows() == [("a", 1, "x"), ("b", 5, None)]


def test_replace_rows_with_new_schema_keeps_rows_with_null_partition(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write_table("t", pl.DataFrame({"teacher": ["a", None], "v": [1, 2]}))
    store.replace_rows("t", pl.DataFrame({"teacher": ["a"], "v": [3], "w": [1]}), "teacher", "a")
    assert store.read_table("t").height == 2


def test_read_missing_table_raises_key_error_naming_it(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write_table("present", pl.DataFrame({"a": [1]}))
    with pytest.raises(KeyError, match="teacher_metrics"):
        store.read_table("teacher_metrics")


# -- chunk folders --------------------------------------------------------------------------------


def test_chunks_dedup_on_key_first_written_wins(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append_chunk("gen", "t1", pl.DataFrame({"key": ["a", "b"], "v": [1, 2]}))
    time.sleep(0.01)
    store.append_chunk("gen", "t1", pl.DataFrame({"key": ["b", "c"], "v": [20, 30]}))
    time.sleep(0.01)
    store.append_chunk("gen", "t1", pl.DataFrame({"key": ["a"], "v": [100]}))
    got = store.read_chunks("gen", "t1", key="key")
    assert got is not None
    assert dict(zip(got["key"], got["v"], strict=True)) == {"a": 1, "b": 2, "c": 30}
    # Another name of the same kind is a separate folder.
    assert store.read_chunks("gen", "t2", key="key") is None


def test_chunks_ignore_leftover_tmp_files_from_a_crash(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append_chunk("gen", "t1", pl.DataFrame({"key": ["a"], "v": [1]}))
    folder = store.chunk_dir("gen", "t1")
    # A crash after writing the temporary file, before the rename: a complete Parquet file ...
    pl.DataFrame({"key": ["a", "z"], "v": [99, 99]}).write_parquet(
        folder / f".{uuid.uuid4().hex}.parquet.tmp"
    )
    # ... and one cut off mid-write.
    (folder / f".{uuid.uuid4().hex}.parquet.tmp").write_bytes(b"PAR1\x00\x01trunc")
    got = store.read_chunks("gen", "t1", key="key")
    assert got is not None
    assert got.rows() == [("a", 1)]


def test_append_chunk_leaves_no_tmp_file(tmp_path: Path) -> None:
    store = Store(tmp_path)
    path = store.append_chunk("gen", "t1", pl.DataFrame({"key": ["a"]}))
    assert path.exists() and path.suffix == ".parquet"
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_chunks_with_evolving_columns_are_combined(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append_chunk("gen", "t", pl.DataFrame({"key": ["a"], "v": [1]}))
    time.sleep(0.01)
    store.append_chunk("gen", "t", pl.DataFrame({"key": ["b"], "v": [2], "w": ["x"]}))
    got = store.read_chunks("gen", "t", key="key")
    assert got is not None
    assert _sorted(got, "key").rows() == [("a", 1, None), ("b", 2, "x")]


def test_read_chunks_of_missing_or_empty_folder_is_none(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.read_chunks("gen", "never", key="key") is None
    store.chunk_dir("gen", "empty").mkdir(parents=True)
    assert store.read_chunks("gen", "empty", key="key") is None
    (store.chunk_dir("gen", "empty") / ".abc.parquet.tmp").write_bytes(b"junk")
    assert store.read_chunks("gen", "empty", key="key") is None


def test_first_written_wins_even_when_mtimes_are_equal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = iter([uuid.UUID(int=(1 << 128) - 1), uuid.UUID(int=0)])  # 2nd sorts before 1st
    monkeypatch.setattr(uuid, "uuid4", lambda: next(names))
    store = Store(tmp_path)
    first = store.append_chunk("gen", "t", pl.DataFrame({"key": ["a"], "v": [1]}))
    second = store.append_chunk("gen", "t", pl.DataFrame({"key": ["a"], "v": [2]}))
    stamp = first.stat().st_mtime_ns
    os.utime(second, ns=(stamp, stamp))
    got = store.read_chunks("gen", "t", key="key")
    assert got is not None and got["v"].to_list() == [1]


# -- inter-process locking ------------------------------------------------------------------------

_HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from filelock import FileLock
    lock = FileLock(sys.argv[1] + ".lock")
    lock.acquire()
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    lock.release()
    """
)


def test_locked_catalog_raises_and_writes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path, lock_timeout=0.5)
    original = pl.DataFrame({"teacher": ["a", "b"], "v": [1, 2]})
    store.write_table("t", original)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(store.catalog_path), "30"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        with pytest.raises(StoreLockedError) as info:
            store.replace_rows("t", pl.DataFrame({"teacher": ["a"], "v": [9]}), "teacher", "a")
        waited = time.monotonic() - start
        message = str(info.value)
        assert str(store.catalog_path) in message
        assert "nothing was written" in message
        assert 0.4 <= waited < 5
    finally:
        holder.kill()
        holder.wait()
    # Once the other process is gone, the table is exactly as it was.
    assert_frame_equal(_sorted(store.read_table("t"), "teacher"), original)


_WRITER = textwrap.dedent(
    """
    import sys
    import polars as pl
    from distill_dag.store import Store
    root, teacher, n_writes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = Store(root, lock_timeout=60)
    for i in range(n_writes):
        frame = pl.DataFrame({"teacher": [teacher] * 3, "i": [i] * 3, "j": [0, 1, 2]})
        store.replace_rows("outputs", frame, "teacher", teacher)
    """
)


def test_two_processes_write_partitions_concurrently(tmp_path: Path) -> None:
    # Separate interpreters (like Dagster's multiprocess executor), not threads: DuckDB's
    # one-writer-per-file rule is only at stake across processes.
    n_writes = 12  # each write is one ~80 ms DuckDB transaction on 2 CPU cores
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path), teacher, str(n_writes)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for teacher in ("alpha", "beta")
    ]
    errors = [proc.communicate(timeout=60)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], errors
    got = _sorted(Store(tmp_path).read_table("outputs"), "teacher", "j")
    assert got.rows() == [
        (teacher, n_writes - 1, j) for teacher in ("alpha", "beta") for j in range(3)
    ]
