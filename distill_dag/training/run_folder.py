"""A training run's folder and how to read it: the finished model and its marker, the resumable
checkpoints, and the result a run reports.

``<run_dir>/model`` is the finished Hugging Face folder; its MARKER file is written last, so its
presence means the folder is complete. ``<run_dir>/trainer/checkpoint-N`` are the resumable
checkpoints of a run in progress. Both the in-process trainer and the data-parallel launcher
read these.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER = "distill_dag_checkpoint.json"  # written last: its presence means the folder is complete
log = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    path: Path  # the Hugging Face folder of the distilled student
    checkpoint_hash: str  # content hash of its weights, tokenizer and chat template
    trained_now: bool  # False when the finished folder already existed (nothing trained)
    global_step: int = 0  # optimizer steps of the finished run
    resumed_from_step: int = 0  # the saved step this call resumed from (0: a fresh start)
    steps_run: int = 0  # optimizer steps run in this call
    loss_history: list[dict[str, float]] = field(default_factory=list)  # {step, loss, lr, ...}
    examples: int = 0
    dropped_too_long: int = 0
    tokens_per_epoch: int = 0  # all tokens of the kept examples
    supervised_tokens_per_epoch: int = 0  # tokens with loss (the assistant replies)
    seconds: float = 0.0  # wall time of trainer.train() in this call
    supervised_tokens_trained: int = 0  # loss-carrying tokens the model trained on in this call
    supervised_tokens_per_s: float = 0.0  # the same per second of trainer.train()
    peak_rss_gb: float = 0.0  # the process's peak RSS (includes earlier steps of an in-process run)
    precision: str = "fp32"
    info: dict[str, Any] = field(default_factory=dict)  # the marker file's content
    model: Any = None  # the trained model in memory, only with train_student(keep_model=True)


def read_finished(path: Path) -> dict[str, Any] | None:
    """The marker of a finished checkpoint folder, or None if the folder is not complete."""
    marker = path / MARKER
    if not marker.exists():
        return None
    try:
        return json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def finished_result(final: Path) -> TrainingResult | None:
    """The result of a run whose folder is already complete (nothing is trained), or None."""
    done = read_finished(final)
    if done is None:
        return None
    return TrainingResult(final, done["checkpoint_hash"], False,
                          global_step=done.get("global_step", 0),
                          loss_history=done.get("loss_history", []),
                          examples=done.get("examples", 0), info=done)


def last_complete_checkpoint(trainer_dir: Path) -> str | None:
    """The newest checkpoint-N folder that was saved completely, deleting newer partial ones.

    transformers writes trainer_state.json last; a folder without it is what a kill during a
    save leaves behind, and resuming from it would fail on every rerun."""
    from transformers.trainer_utils import get_last_checkpoint

    while (last := get_last_checkpoint(str(trainer_dir))) is not None:
        state = Path(last) / "trainer_state.json"
        try:
            json.loads(state.read_text())
            return last
        except (OSError, json.JSONDecodeError):
            log.warning("training: %s was not saved completely (killed mid-save?); deleting it "
                        "and resuming from the one before", last)
            shutil.rmtree(last)
    return None
