"""Crash safety with real process kills: `distill-dag materialize --stale` is SIGKILLed during
generation, then during scoring, then during training; each rerun loses no finished row, adds
no duplicate and resumes training from its last saved step. Two Dagster processes writing the
store at the same time both succeed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from distill_dag.generation.run import GENERATIONS
from distill_dag.provenance.run import SCORES
from distill_dag.store import Store
from tests.conftest import TINY_CONFIG

CLI = [sys.executable, "-m", "distill_dag.orchestration.cli", "materialize", "--stale",
       "--no-progress", "--device", "cpu"]


def _config(folder: Path) -> Path:
    """One teacher, small batches (one stored chunk every couple of seconds), more steps."""
    data = yaml.safe_load(TINY_CONFIG.read_text())
    data["corpus"]["generator"]["n"] = 24
    data["teachers"] = [dict(data["teachers"][0], batch_size=2)]
    data["provenance"] = {"batch_size": 1}
    data["training"].update(max_steps=6, save_steps=2, batch_size=1)
    data["tracking"] = {"enabled": False}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _env(folder: Path) -> dict[str, str]:
    return dict(os.environ, DAGSTER_HOME=str(folder / "dagster"), HF_HUB_OFFLINE="1",
                PYTHONPATH=str(Path(__file__).resolve().parents[1]))


def _run_until(folder: Path, config: Path, ready, timeout: float = 600) -> None:
    """Start the stale command and SIGKILL its whole process group once `ready()` holds."""
    proc = subprocess.Popen([*CLI, "--config", str(config), "--home", str(folder / "home")],
                            env=_env(folder), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "the run finished before the kill point"
            assert time.monotonic() < deadline, "the kill point never came"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _chunk_rows(store: Store, kind: str, name: str, key: str) -> pl.DataFrame:
    rows = store.read_chunks(kind, name, key)
    return rows if rows is not None else pl.DataFrame()


def _score_rows(store: Store) -> int:
    root = store.chunk_dir(SCORES, "")
    if not root.is_dir():
        return 0
    return sum(_chunk_rows(store, SCORES, d.name, "score_key").height
               for d in root.iterdir() if d.is_dir())


def _score_files(store: Store) -> int:
    return len(list(store.chunk_dir(SCORES, "").glob("*/*.parquet")))


def _checkpoints(home: Path) -> list[Path]:
    return sorted(home.glob("artifacts/distilled_checkpoint/*/trainer/checkpoint-*"))


@pytest.mark.slow
def test_sigkill_during_generation_scoring_and_training_then_rerun(tmp_path):
    config = _config(tmp_path)
    (tmp_path / "dagster").mkdir()
    home = tmp_path / "home"
    store = Store(home / "store")

    # 1. Killed while generating: some samples are stored, not all.
    _run_until(tmp_path, config, lambda: _chunk_rows(store, GENERATIONS, "fewshot",
                                                     "request_key").height >= 4)
    before_gen = _chunk_rows(store, GENERATIONS, "fewshot", "request_key")
    train = store.read_table("queries").filter(pl.col("split") == "train").height
    assert before_gen.height < 2 * train and not store.table_exists("teacher_outputs")

    # 2. Rerun, killed while scoring (one stored chunk of 8 sequences): generation finishes
    # first, reusing every stored sample.
    _run_until(tmp_path, config, lambda: _score_files(store) >= 1)
    assert not store.table_exists("provenance_samples")  # killed before scoring finished
    outputs = store.read_table("teacher_outputs")
    assert outputs.height == 2 * train  # k=2
    assert outputs["request_key"].n_unique() == outputs.height  # 0 duplicates
    kept = before_gen.select("request_key", "response").join(
        outputs.select("request_key", "response"), on="request_key", how="left", suffix="_now")
    assert kept["response_now"].null_count() == 0  # 0 finished rows lost
    assert (kept["response"] == kept["response_now"]).all()  # and none regenerated
    scored_before = _score_rows(store)

    # 3. Rerun, killed once training has saved step 2.
    _run_until(tmp_path, config, lambda: any(
        (c / "trainer_state.json").exists() for c in _checkpoints(home)))
    assert _score_rows(store) >= scored_before  # scores are kept
    sentences = store.read_table("provenance_sentences")
    assert sentences.select("request_key", "sentence_index").is_duplicated().sum() == 0
    saved = max(int(c.name.rsplit("-", 1)[1]) for c in _checkpoints(home))

    # 4. Rerun to the end: training resumes from the last saved step.
    done = subprocess.run([*CLI, "--config", str(config), "--home", str(home)],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    work = dict(re.findall(r"(\w+)=(\d+)", done.stdout.split("Work done:")[-1]))
    assert int(work.get("samples_generated", 0)) == 0 and int(work.get("sequences_scored", 0)) == 0
    assert int(work["training_steps"]) == 6 - saved
    instance = dg.DagsterInstance.from_config(str(tmp_path / "dagster"))
    event = instance.get_latest_materialization_event(dg.AssetKey("distilled_checkpoint"))
    metadata = event.asset_materialization.metadata
    assert metadata["resumed_from_step"].value == saved and metadata["global_step"].value == 6
    final = store.read_table("provenance_samples")
    assert final.height == outputs.height and final["request_key"].n_unique() == final.height


@pytest.mark.slow
def test_two_teacher_partitions_materialize_at_the_same_time(tmp_path):
    """Two `dagster asset materialize` processes write the same store concurrently: both
    succeed (the catalog lock serializes the short DuckDB writes) and both partitions land."""
    env = dict(_env(tmp_path), DISTILL_DAG_CONFIG=str(TINY_CONFIG),
               DISTILL_DAG_HOME=str(tmp_path / "home"))
    (tmp_path / "dagster").mkdir()
    dagster = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
               "distill_dag.definitions"]
    corpus = subprocess.run([*dagster, "--select", "query_corpus"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert corpus.returncode == 0, corpus.stderr[-3000:]
    procs = [subprocess.Popen([*dagster, "--select", "teacher_outputs,provenance_scores",
                               "--partition", name], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for name in ("fewshot", "zeroshot")]
    for proc in procs:
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-3000:]
    store = Store(tmp_path / "home" / "store")
    outputs = store.read_table("teacher_outputs")
    assert sorted(outputs["teacher"].unique()) == ["fewshot", "zeroshot"]
    assert outputs.select("teacher", "request_key").is_duplicated().sum() == 0
    samples = store.read_table("provenance_samples")
    assert sorted(samples["teacher"].unique()) == ["fewshot", "zeroshot"]
