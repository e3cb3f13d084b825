"""The held-out monitor: watch training for teacher hacking while it runs.

"On Teacher Hacking in Language Model Distillation" (2025) shows the student's distance to the
teacher on its training data (the proxy) falling while the same distance on held-out prompts
rises. Every `eval_steps` optimizer steps this measures both as the mean per-token negative
log-likelihood of teacher responses under the student (SFT's own loss; for the other objectives
the same distance to the teacher's text), on a fixed sample of the training records and on the
teacher responses of queries held out of training, plus greedy pass@1 on some of those queries.
The entries join the trainer's log history (so they reach the finished folder's marker, MLflow
and a resumed run), `teacher_hacking()` finds the paper's signature in them, and `keep_best`
puts the weights of the best held-out evaluation into the saved model instead of the last.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import polars as pl

from distill_dag.configbase import Config, ConfigError, check_int, setting
from distill_dag.training.data import IGNORE_INDEX, render_split, tokenize_records

PROXY, HELDOUT, DEV = "monitor_proxy", "monitor_heldout", "monitor_dev_pass_at_1"
KEPT = "monitor_kept_step"  # logged once at the end when keep_best put a step's weights back
BEST_WEIGHTS = "monitor_best.safetensors"
PLOT = "monitor.png"
log = logging.getLogger(__name__)


@dataclass
class MonitorConfig(Config):
    """What the held-out monitor measures during training, and how often."""

    WHERE: ClassVar[str] = "training.monitor"

    eval_steps: int = setting(
        0, "Measure the proxy and the held-out distance every this many optimizer steps (and "
        "once before the first); 0 turns the monitor off.")
    heldout_queries: int = setting(
        16, "Queries of filtered_dataset held out of training (a seeded choice): their teacher "
        "responses are the held-out measure. Training uses the others.")
    train_sample: int = setting(
        16, "Training records the proxy is measured on (a fixed seeded sample).")
    dev_queries: int = setting(
        8, "How many of the held-out queries are also answered greedily (pass@1) at each "
        "evaluation; 0 measures distances only.")
    max_new_tokens: int = setting(64, "Token budget of those greedy answers.")
    patience: int = setting(
        3, "The teacher_hacking check warns when the held-out distance rose at this many "
        "consecutive evaluations while the proxy fell over them.", output=False)
    keep_best: bool = setting(
        False, "Save the weights of the evaluation with the lowest held-out distance instead "
        "of the last step's.")
    seed: int = setting(0, "Seeds the held-out queries and the proxy's sample.")

    def __post_init__(self) -> None:
        check_int("eval_steps", self.eval_steps, 0)
        for name in ("heldout_queries", "train_sample", "max_new_tokens", "patience"):
            check_int(name, getattr(self, name))
        check_int("dev_queries", self.dev_queries, 0)
        check_int("seed", self.seed, 0)
        if self.dev_queries > self.heldout_queries:
            raise ConfigError(f"dev_queries ({self.dev_queries}) cannot exceed heldout_queries "
                              f"({self.heldout_queries}): the dev queries are held-out ones")
        if not isinstance(self.keep_best, bool):
            raise ConfigError(f"keep_best must be true or false, got {self.keep_best!r}")

    @property
    def enabled(self) -> bool:
        return self.eval_steps > 0


def _seeded(keys: list[str], seed: int, salt: str) -> list[str]:
    return sorted(keys, key=lambda k: hashlib.sha256(f"{k}|{salt}|{seed}".encode()).hexdigest())


def split_heldout(data: pl.DataFrame, cfg: MonitorConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """filtered_dataset's rows as (what trains, what is held out): whole queries are held out."""
    ids = _seeded(data["query_id"].unique().to_list(), cfg.seed, "monitor")
    if len(ids) <= cfg.heldout_queries:
        raise ConfigError(f"training.monitor.heldout_queries is {cfg.heldout_queries}, but "
                          f"filtered_dataset covers {len(ids)} queries: nothing would be left "
                          "to train on; lower it or turn the monitor off (eval_steps: 0)")
    held = pl.Series(ids[:cfg.heldout_queries]).implode()
    return data.filter(~pl.col("query_id").is_in(held)), data.filter(pl.col("query_id").is_in(held))


@dataclass
class MonitorData:
    """What the monitor measures on (JSON-serializable records)."""

    train: list[Any]  # chat records: a fixed sample of what trains
    heldout: list[Any]  # chat records of the held-out queries
    dev: list[dict[str, Any]]  # {"messages", "reference"} of the first dev_queries held-out ones

    @classmethod
    def build(cls, train: pl.DataFrame, heldout: pl.DataFrame, queries: pl.DataFrame,
              cfg: MonitorConfig) -> MonitorData:
        keys = _seeded(train["request_key"].to_list(), cfg.seed, "proxy")[:cfg.train_sample]
        sample = train.filter(pl.col("request_key").is_in(pl.Series(keys).implode()))
        dev_ids = _seeded(heldout["query_id"].unique().to_list(), cfg.seed, "dev")
        dev = (heldout.filter(pl.col("query_id").is_in(pl.Series(dev_ids[:cfg.dev_queries])
                                                        .implode()))
               .unique("query_id", keep="first").sort("query_id")
               .join(queries.select("query_id", "reference_answer"), on="query_id"))
        return cls(sample.sort("request_key")["messages"].to_list(),
                   heldout.sort("request_key")["messages"].to_list(),
                   [{"messages": m, "reference": r} for m, r in
                    zip(dev["messages"].to_list(), dev["reference_answer"], strict=True)])


def mean_nll(model: Any, tokenizer: Any, examples: list[Any], batch_size: int = 8) -> float:
    """Mean negative log-likelihood per supervised token (reply tokens) of tokenized examples."""
    import torch

    total, count = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        width = max(len(e.input_ids) for e in batch)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in batch],
                           device=device)
        labels = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e.labels))
                               for e in batch], device=device)
        mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids))
                             for e in batch], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), target.reshape(-1),
            ignore_index=IGNORE_INDEX, reduction="sum")
        total += float(nll)
        count += int((target != IGNORE_INDEX).sum())
    return total / max(count, 1)


def greedy_pass_at_1(model: Any, tokenizer: Any, dev: list[dict[str, Any]],
                     max_new_tokens: int, batch_size: int = 8) -> float:
    """Greedy answers to the dev records' prompts (the student's zero-shot format), verified."""
    from distill_dag.verify import verify_answer

    device = next(model.parameters()).device
    prompts = [render_split(tokenizer, d["messages"], "monitor dev")[0] for d in dev]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    correct = 0
    try:
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[start:start + batch_size], return_tensors="pt",
                            padding=True, add_special_tokens=False).to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                           skip_special_tokens=True)
            for text, d in zip(texts, dev[start:start + batch_size], strict=True):
                correct += verify_answer(text, d["reference"]).correct
    finally:
        tokenizer.padding_side = side
    return correct / len(dev)


def make_callback(cfg: MonitorConfig, data: MonitorData, run_dir: Path, max_length: int):
    """A transformers TrainerCallback measuring every cfg.eval_steps (built lazily: transformers
    is imported only when training runs)."""
    import torch
    from transformers import TrainerCallback

    class HeldOutMonitor(TrainerCallback):
        def __init__(self) -> None:
            self.ready = False
            self.best: float | None = None  # the lowest held-out distance with saved weights

        def _prepare(self, tokenizer: Any) -> None:
            if not self.ready:
                self.train = tokenize_records(tokenizer, data.train, max_length,
                                              "monitor sample").examples
                self.heldout = tokenize_records(tokenizer, data.heldout, max_length,
                                                "monitor held-out").examples
                self.ready = True

        def _measure(self, model: Any, tokenizer: Any, state: Any) -> None:
            self._prepare(tokenizer)
            was_training = model.training
            model.eval()
            with torch.no_grad():
                entry = {"step": state.global_step,
                         PROXY: mean_nll(model, tokenizer, self.train),
                         HELDOUT: mean_nll(model, tokenizer, self.heldout)}
                if data.dev:
                    entry[DEV] = greedy_pass_at_1(model, tokenizer, data.dev, cfg.max_new_tokens)
            if was_training:
                model.train()
            state.log_history.append(entry)
            log.info("monitor step %d: proxy %.4f, held-out %.4f%s", entry["step"], entry[PROXY],
                     entry[HELDOUT], f", dev pass@1 {entry[DEV]:.3f}" if DEV in entry else "")
            if cfg.keep_best and (self.best is None or entry[HELDOUT] < self.best):
                from safetensors.torch import save_file

                weights = {n: p.detach().cpu().clone().contiguous()
                           for n, p in model.named_parameters() if p.requires_grad}
                save_file(weights, str(run_dir / BEST_WEIGHTS),
                          metadata={"step": str(state.global_step)})
                self.best = entry[HELDOUT]

        def on_train_begin(self, args, state, control, model=None, processing_class=None,
                           **kwargs):
            path = run_dir / BEST_WEIGHTS
            path.unlink(missing_ok=True)  # a crashed run's: it may be newer than its checkpoint
            if best_entry(state.log_history) is None:
                self._measure(model, processing_class, state)
                return
            # Resumed: the best weights as of the checkpoint were saved with it (on_save).
            saved = Path(args.output_dir) / f"checkpoint-{state.global_step}" / BEST_WEIGHTS
            if cfg.keep_best and saved.exists():
                shutil.copyfile(saved, path)
                self.best = _saved_heldout(path, state.log_history)

        def on_save(self, args, state, control, **kwargs):
            path = run_dir / BEST_WEIGHTS
            if cfg.keep_best and path.exists():  # the best weights so far are checkpoint state
                checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                shutil.copyfile(path, checkpoint / BEST_WEIGHTS)

        def on_step_end(self, args, state, control, model=None, processing_class=None,
                        **kwargs):
            if state.global_step % cfg.eval_steps == 0:
                self._measure(model, processing_class, state)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            path = run_dir / BEST_WEIGHTS
            if cfg.keep_best and path.exists():
                from safetensors import safe_open
                from safetensors.torch import load_file

                with safe_open(str(path), "pt") as f:
                    kept = int(f.metadata().get("step", -1))
                loaded = model.load_state_dict(load_file(str(path)), strict=False)
                if loaded.unexpected_keys:
                    raise RuntimeError(f"monitor: {path} does not fit the model "
                                       f"({loaded.unexpected_keys[:3]})")
                # Recorded, not inferred from the history: after a resume the kept weights
                # can be those of another step than the history's best entry.
                state.log_history.append({"step": state.global_step, KEPT: kept})
                log.info("monitor: keeping the weights of held-out evaluation step %d "
                         "(training.monitor.keep_best)", kept)

    return HeldOutMonitor()


def _saved_step(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return int(f.metadata().get("step", -1))


def _saved_heldout(path: Path, history: list[dict[str, Any]]) -> float | None:
    """The held-out distance of the evaluation whose weights `path` holds."""
    step = _saved_step(path)
    return next((h[HELDOUT] for h in monitor_entries(history) if int(h["step"]) == step), None)


def kept_step(history: list[dict[str, Any]]) -> int | None:
    """The step whose weights keep_best saved in place of the last step's, or None."""
    kept = [h[KEPT] for h in history if KEPT in h]
    return int(kept[-1]) if kept else None


def monitor_entries(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The monitor's entries of a training log history, in step order."""
    return sorted((h for h in history if HELDOUT in h), key=lambda h: h["step"])


def best_entry(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The evaluation with the lowest held-out distance (the earliest among equals)."""
    entries = monitor_entries(history)
    return min(entries, key=lambda h: (h[HELDOUT], h["step"])) if entries else None


def teacher_hacking(history: list[dict[str, Any]], patience: int) -> dict[str, Any] | None:
    """The paper's signature: the held-out distance rose at `patience` consecutive evaluations
    while the proxy fell over the same span. The first such span, or None."""
    entries = monitor_entries(history)
    for end in range(patience, len(entries)):
        span = entries[end - patience:end + 1]
        rising = all(b[HELDOUT] > a[HELDOUT] for a, b in itertools.pairwise(span))
        if rising and span[-1][PROXY] < span[0][PROXY]:
            return {"from_step": int(span[0]["step"]), "to_step": int(span[-1]["step"]),
                    "heldout_rise": span[-1][HELDOUT] - span[0][HELDOUT],
                    "proxy_fall": span[0][PROXY] - span[-1][PROXY]}
    return None


def plot_monitor(history: list[dict[str, Any]], path: Path,
                 flagged: dict[str, Any] | None = None) -> bool:
    """The two distances (and dev pass@1) against the step as a PNG, with the span that
    `teacher_hacking()` flagged shaded; False without entries."""
    entries = monitor_entries(history)
    if not entries:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in entries]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, [h[PROXY] for h in entries], marker="o", label="proxy: training sample")
    ax.plot(steps, [h[HELDOUT] for h in entries], marker="o", label="held-out queries")
    if flagged is not None:
        ax.axvspan(flagged["from_step"], flagged["to_step"], color="#d62728", alpha=0.12,
                   label="teacher hacking")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("NLL of the teacher's tokens")
    if all(DEV in h and not math.isnan(h[DEV]) for h in entries):
        twin = ax.twinx()
        twin.plot(steps, [h[DEV] for h in entries], color="#2ca02c", linestyle="--",
                  label="dev greedy pass@1")
        twin.set_ylim(0, 1)
        twin.set_ylabel("dev greedy pass@1")
        twin.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title("Held-out monitor (teacher hacking: held-out up while proxy down)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True

