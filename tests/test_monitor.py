"""The held-out monitor: teacher hacking provoked on the real student (many steps on a handful of
examples) trips the distilled_checkpoint check; keep_best keeps the best held-out weights; the
curves reach the metadata, the plot and MLflow; a crash resumes without losing its entries."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import yaml

from distill_dag import tables
from distill_dag.config import load_project_config
from distill_dag.configbase import ConfigError, build_config
from distill_dag.filtering import _messages
from distill_dag.generation.config import PromptConfig
from distill_dag.stage import StageContext
from distill_dag.stages import stage
from distill_dag.store import Store
from distill_dag.training.config import TrainingConfig
from distill_dag.training.monitor import (
    DEV,
    HELDOUT,
    PROXY,
    MonitorConfig,
    MonitorData,
    best_entry,
    kept_step,
    make_callback,
    mean_nll,
    monitor_entries,
    split_heldout,
    teacher_hacking,
)
from tests.conftest import SMOLLM, TINY_CONFIG

NAMES = ["Ana", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ida", "Jon", "Kai", "Liv"]


def _entry(step: int, proxy: float, heldout: float) -> dict[str, float]:
    return {"step": step, PROXY: proxy, HELDOUT: heldout}


def test_teacher_hacking_is_the_held_out_rising_while_the_proxy_falls():
    hacked = [_entry(0, 1.0, 1.0), _entry(2, 0.5, 0.6), _entry(4, 0.3, 0.7), _entry(6, 0.2, 0.8),
              _entry(8, 0.1, 0.9), {"step": 8, "loss": 0.1}]  # loss entries are not the monitor's
    found = teacher_hacking(hacked, patience=3)
    assert found is not None and (found["from_step"], found["to_step"]) == (2, 8)
    assert found["heldout_rise"] == pytest.approx(0.3) and found["proxy_fall"] == pytest.approx(0.4)
    assert teacher_hacking(hacked, patience=4) is None  # only 3 rises in a row
    # Both rising is not hacking (training diverges); nor is a held-out dip between rises.
    assert teacher_hacking([_entry(s, 0.1 * s, 0.1 * s) for s in range(6)], 3) is None
    assert teacher_hacking([_entry(0, 1, 0.5), _entry(1, 0.9, 0.6), _entry(2, 0.8, 0.55),
                            _entry(3, 0.7, 0.6), _entry(4, 0.6, 0.65)], 3) is None
    assert best_entry(hacked)["step"] == 2 and monitor_entries([{"step": 1, "loss": 1.0}]) == []
    assert kept_step(hacked) is None
    assert kept_step([*hacked, {"step": 8, "monitor_kept_step": 2}]) == 2


def _dataset(n: int) -> pl.DataFrame:
    rows = []
    for i in range(n):
        a, b = 3 + 2 * i, 4 + i
        prompt = (f"{NAMES[i]} has {a} apples and buys {b} more. How many apples does "
                  f"{NAMES[i]} have now?")
        rows.append({"query_id": f"q{i:02d}", "teacher": "t", "request_key": f"k{i:02d}",
                     "prompt": prompt, "reference_answer": str(a + b),
                     "messages": _messages(PromptConfig(style="chat"), prompt,
                                           f"{a} + {b} = {a + b}. The answer is {a + b}.")})
    return pl.DataFrame(rows)


def test_held_out_queries_leave_training_whole_seeded_and_never_all():
    data = pl.concat([_dataset(8), _dataset(8).with_columns(  # a second record per query
        pl.col("request_key") + "b")])
    cfg = MonitorConfig(eval_steps=1, heldout_queries=3, train_sample=4, dev_queries=2)
    kept, held = split_heldout(data, cfg)
    assert held["query_id"].n_unique() == 3 and held.height == 6  # both records of each
    assert not set(kept["query_id"]) & set(held["query_id"]) and kept.height == 10
    assert split_heldout(data, cfg)[1].equals(held)  # the same choice every time
    other = split_heldout(data, MonitorConfig(eval_steps=1, heldout_queries=3, dev_queries=2,
                                              seed=1))[1]
    assert set(other["query_id"]) != set(held["query_id"])
    monitored = MonitorData.build(kept, held, data.unique("query_id"), cfg)
    assert len(monitored.train) == 4 and len(monitored.heldout) == 6
    assert len(monitored.dev) == 2  # dev queries are held-out ones, with their references
    assert {d["reference"] for d in monitored.dev} <= set(held["reference_answer"])
    with pytest.raises(ConfigError, match=r"heldout_queries is 8.*covers 8 queries"):
        split_heldout(data, MonitorConfig(eval_steps=1, heldout_queries=8, dev_queries=2))


def test_monitor_settings_are_checked_and_off_keeps_older_run_keys():
    with pytest.raises(ConfigError, match=r"dev_queries .*cannot exceed heldout_queries"):
        MonitorConfig(eval_steps=5, heldout_queries=2, dev_queries=3)
    with pytest.raises(ConfigError, match=r"training\.monitor: eval_steps must be an integer >= 0"):
        build_config(TrainingConfig, {"monitor": {"eval_steps": -1}}, "training")
    with pytest.raises(ValueError, match="num_processes 1"):
        TrainingConfig(num_processes=2, monitor={"eval_steps": 5})
    # A store made before the monitor existed keeps its run keys while the monitor is off.
    assert TrainingConfig().fingerprint() == TrainingConfig(monitor={}).fingerprint()
    assert TrainingConfig(monitor={"eval_steps": 5}).fingerprint() != TrainingConfig().fingerprint()
    assert (TrainingConfig(monitor={"eval_steps": 5}).fingerprint()
            == TrainingConfig(monitor={"eval_steps": 5, "patience": 9}).fingerprint())


def _monitored_project(tmp_path: Path, keep_best: bool, n: int = 8):
    """8 queries: 4 train for 24 steps at a constant high learning rate (12 epochs on a
    handful of examples), 4 are held out; measured every 3 steps."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["training"] = {
        "method": "full", "max_steps": 24, "batch_size": 2, "max_length": 128,
        "learning_rate": 2e-3, "lr_scheduler": "constant", "warmup_ratio": 0.0,
        "save_steps": 100, "logging_steps": 1, "dtype": "fp32",
        "monitor": {"eval_steps": 3, "heldout_queries": 4, "train_sample": 4, "dev_queries": 2,
                    "max_new_tokens": 16, "patience": 2, "keep_best": keep_best}}
    path = tmp_path / "monitored.yaml"
    path.write_text(yaml.safe_dump(config))
    project = load_project_config(path)
    store = Store(tmp_path / "home" / "store")
    data = _dataset(n)
    store.write_table(tables.FILTERED_DATASET, data.select(
        "query_id", "teacher", "request_key", "messages"))
    store.write_table(tables.QUERIES, data.select("query_id", "prompt", "reference_answer")
                      .with_columns(split=pl.lit("train")))
    return project, StageContext.local(project, tmp_path / "home", device="cpu",
                                       show_progress=False)


@pytest.mark.slow
def test_many_steps_on_a_handful_of_examples_trip_the_teacher_hacking_check(tmp_path):
    from mlflow.tracking import MlflowClient
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill_dag.training.data import tokenize_records

    project, ctx = _monitored_project(tmp_path, keep_best=True)
    out = stage("distilled_checkpoint").run(ctx)
    checks = {c.name: c for c in out.checks}
    hacking = checks["teacher_hacking"]
    curve = out.metadata["monitor_curve"].value
    assert not hacking.passed and "teacher hacking" in hacking.metadata["note"], curve
    curve = out.metadata["monitor_curve"].value
    assert [e["step"] for e in curve] == list(range(0, 25, 3))
    assert all(PROXY in e and HELDOUT in e and 0 <= e[DEV] <= 1 for e in curve)
    assert curve[-1][PROXY] < curve[0][PROXY] / 2  # the handful is learned by heart ...
    low = min(e[HELDOUT] for e in curve)
    assert curve[-1][HELDOUT] > low  # ... and the held-out queries drift away after their best
    assert str(out.metadata["monitor_plot"]).startswith("![held-out monitor](data:image/png")

    # keep_best: the saved folder holds the weights of the lowest held-out evaluation.
    best = min(curve, key=lambda e: (e[HELDOUT], e["step"]))
    assert out.metadata["monitor_best_step"] == best["step"] < 24
    assert out.metadata["monitor_weights"].startswith(f"held-out evaluation step {best['step']}")
    path = Path(out.metadata["path"])
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    _, held = split_heldout(ctx.store.read_table(tables.FILTERED_DATASET),
                               project.training.monitor)
    examples = tokenize_records(tokenizer, held["messages"].to_list(), 128, "held").examples
    assert mean_nll(model, tokenizer, examples) == pytest.approx(best[HELDOUT], abs=2e-3)

    # Both curves reach MLflow, one point per evaluation.
    run_id = out.metadata["mlflow_run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{ctx.home / 'mlflow' / 'mlflow.db'}")
    for name in (PROXY, HELDOUT, DEV):
        steps = [m.step for m in client.get_metric_history(run_id, name)]
        assert steps == [e["step"] for e in curve]
    assert "monitor.png" in {a.path for a in client.list_artifacts(run_id)}

    # A rerun reuses the checkpoint and still reports what the monitor saw.
    again = stage("distilled_checkpoint").run(ctx)
    assert again.work == {"training_steps": 0}
    assert not {c.name: c for c in again.checks}["teacher_hacking"].passed


@pytest.mark.slow
def test_a_crash_keeps_the_monitor_entries_and_measures_each_step_once(tmp_path):
    """Killed at step 7, after the step-6 evaluation but with its last checkpoint at step 4:
    the resumed run keeps the entries of steps 0, 2 and 4 (saved with the checkpoint), measures
    6 and 8 once each, and keep_best restores the best weights as of that checkpoint, so the
    weights it keeps are those of the best entry of the final history."""
    from transformers import TrainerCallback

    from distill_dag.training.train import train_student

    data = _dataset(6)
    cfg = TrainingConfig(max_steps=8, batch_size=2, max_length=128, save_steps=4,
                         logging_steps=1, dtype="fp32", learning_rate=1e-3,
                         monitor={"eval_steps": 2, "heldout_queries": 2, "train_sample": 2,
                                  "dev_queries": 0, "keep_best": True})
    kept, held = split_heldout(data, cfg.monitor)
    monitored = MonitorData.build(kept, held, data, cfg.monitor)
    records = kept["messages"].to_list()

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 7:
                raise RuntimeError("simulated crash at step 7")

    def run(*extra):
        return train_student(records, SMOLLM, cfg, tmp_path, device="cpu", show_progress=False,
                             callbacks=[make_callback(cfg.monitor, monitored, tmp_path, 128),
                                        *extra])

    with pytest.raises(RuntimeError, match="simulated crash"):
        run(Crash())
    assert (tmp_path / "trainer" / "checkpoint-4" / "monitor_best.safetensors").exists()
    result = run()
    assert result.resumed_from_step == 4
    assert [e["step"] for e in monitor_entries(result.loss_history)] == [0, 2, 4, 6, 8]
    assert kept_step(result.loss_history) == best_entry(result.loss_history)["step"]
