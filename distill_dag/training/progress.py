"""The training log: one line per logged step, ours, instead of transformers' printed dict too.

transformers prints every logged dict ({'loss': ..., 'grad_norm': ...}) from its progress bar
(or, without a bar, from its PrinterCallback), and the caller printed its own line as well. Here
the bar stays (without the dict) and each logged entry goes to the caller's `on_log`, or, with
none, to this module's logger as one line. A data-parallel worker's line crosses the process
boundary as text; `parse_step_line` turns it back into the entry.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
_LINE = re.compile(r"^training (?:step|finished at step) (\d+)/-?\d+: (\{.*\})\s*$")
_NOT_SHOWN = ("step", "total_flos")  # the step is in the prefix; the FLOP count is noise


def step_line(entry: dict[str, Any], max_steps: int) -> str:
    """One logged entry as one line, e.g. ``training step 3/40: {'loss': 0.9272, ...}``; the
    run's closing summary (train_runtime, train_loss) as ``training finished at step 40/40``."""
    values = {k: float(f"{v:.4g}") if isinstance(v, float) else v
              for k, v in entry.items() if k not in _NOT_SHOWN}
    what = "step" if "train_runtime" not in entry else "finished at step"
    return f"training {what} {entry.get('step', 0)}/{max_steps}: {values}"


def parse_step_line(line: str) -> dict[str, Any] | None:
    """The entry a `step_line` shows ({"step": N, "loss": ...}), or None for any other line."""
    match = _LINE.match(line.strip())
    if match is None:
        return None
    try:
        values = ast.literal_eval(match.group(2))
    except (ValueError, SyntaxError):
        return None
    return {"step": int(match.group(1)), **values} if isinstance(values, dict) else None


def log_callback(on_log: Callable[[dict[str, Any]], None] | None):
    """A TrainerCallback passing each entry logged on the main process, {"step": N, **logs},
    to `on_log`, or logging it as one `step_line` when there is none."""
    from transformers import TrainerCallback

    class StepLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or not state.is_world_process_zero:
                return
            entry = {"step": state.global_step,
                     **{k: v for k, v in logs.items() if k != "total_flos"}}
            if on_log is not None:
                on_log(entry)
            else:
                log.info(step_line(entry, state.max_steps))

    return StepLog()


def quiet_default_printing(trainer: Any) -> None:
    """Keep the trainer's progress bar but drop its printed dict of every logged step (the
    PrinterCallback it uses without a bar, and the bar's own write of each dict)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class BarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass  # log_callback's line is the one line per logged step

    handler = trainer.callback_handler
    handler.callbacks = [BarOnly() if type(cb) is ProgressCallback else cb
                         for cb in handler.callbacks if not isinstance(cb, PrinterCallback)]
