"""Data-parallel training: train_student under torchrun, one process per GPU (or CPU worker).

The Dagster step stays the parent. It writes the records and settings to ``<run_dir>/launch``,
starts ``python -m torch.distributed.run --standalone --nproc_per_node N -m
distill_dag.training.launch <spec>``, streams the workers' output into its log, and reads the
result rank 0 wrote. Everything else is as in one process: the Trainer wraps the model in
DistributedDataParallel (NCCL on GPUs, gloo on CPUs) and shards each batch across the ranks;
rank 0 saves the resumable checkpoints and the finished folder, so a killed run resumes from its
last saved step, with any number of processes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from distill_dag.training.config import TrainingConfig

log = logging.getLogger(__name__)
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b[^:]*: ")
RESULT_FILE = "result.json"


class TrainingLaunchError(RuntimeError):
    """The training processes failed; the message carries the end of their output."""


def _worker_env(n: int, device: str) -> dict[str, str]:
    env = dict(os.environ)
    if not device.startswith("cuda") and "OMP_NUM_THREADS" not in env:
        # torchrun would give each worker 1 thread; CPU workers share the cores instead.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
    return env


def train_distributed(
    messages: Sequence[Any],
    student_model: str,
    cfg: TrainingConfig,
    run_dir: Path,
    *,
    info: dict[str, Any] | None = None,
    device: str = "auto",
    show_progress: bool = True,
    on_output: Callable[[str], None] | None = None,
):
    """train_student in cfg.num_processes processes; returns rank 0's TrainingResult."""
    from distill_dag.training.train import TrainingResult, last_complete_checkpoint, read_finished

    run_dir = Path(run_dir)
    final = run_dir / "model"
    done = read_finished(final)
    if done is not None:  # finished earlier: nothing to launch
        return TrainingResult(final, done["checkpoint_hash"], False,
                              global_step=done.get("global_step", 0),
                              loss_history=done.get("loss_history", []),
                              examples=done.get("examples", 0), info=done)
    launch_dir = run_dir / "launch"
    launch_dir.mkdir(parents=True, exist_ok=True)
    # Partial checkpoints are cleaned up here, once, not by every rank at the same time.
    if (run_dir / "trainer").is_dir():
        last_complete_checkpoint(run_dir / "trainer")
    (launch_dir / "messages.json").write_text(json.dumps(list(messages)))
    result_path = launch_dir / RESULT_FILE
    result_path.unlink(missing_ok=True)
    spec = {"student_model": student_model, "training": dataclasses.asdict(cfg),
            "run_dir": str(run_dir), "info": info or {}, "device": device,
            "show_progress": show_progress, "result": str(result_path)}
    (launch_dir / "spec.json").write_text(json.dumps(spec, default=str))

    n = cfg.num_processes
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={n}", "-m", "distill_dag.training.launch",
               str(launch_dir / "spec.json")]
    log.info("training: launching %d data-parallel processes: %s", n, " ".join(command))
    tail: deque[str] = deque(maxlen=40)
    errors: list[str] = []  # the workers' exception lines (torchrun's summary hides them)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=_worker_env(n, device), bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if _EXCEPTION_LINE.match(line) and "ChildFailedError" not in line:
                errors.append(line)
            if on_output is not None:
                on_output(line)
    if proc.returncode != 0 or not result_path.exists():
        cause = f": {errors[0]}" if errors else ""
        raise TrainingLaunchError(
            f"training with {n} processes failed (torchrun exit code {proc.returncode}){cause}; "
            f"saved steps under {run_dir / 'trainer'} are kept and a rerun resumes from them. "
            "Last output:\n" + "\n".join(tail))
    data = json.loads(result_path.read_text())
    data["path"] = Path(data["path"])
    return TrainingResult(**data)


def main(argv: list[str] | None = None) -> int:
    """One rank (torchrun starts N of these)."""
    from distill_dag.training.train import train_student

    spec_path = Path((argv if argv is not None else sys.argv[1:])[0])
    spec = json.loads(spec_path.read_text())
    messages = json.loads((spec_path.parent / "messages.json").read_text())
    cfg = TrainingConfig.from_dict(spec["training"])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = train_student(messages, spec["student_model"], cfg, Path(spec["run_dir"]),
                           info=spec["info"], device=spec["device"],
                           show_progress=spec["show_progress"])
    if int(os.environ.get("RANK", "0")) == 0:
        data = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)
                if f.name != "model"}
        data["path"] = str(result.path)
        tmp = Path(spec["result"] + ".tmp")
        tmp.write_text(json.dumps(data, default=str))
        os.replace(tmp, spec["result"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
