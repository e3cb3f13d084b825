"""Data-parallel training: train_student under torchrun, one process per GPU (or CPU worker).

The stage's process stays the parent. It writes the records and settings to
``<run_dir>/launch``, starts ``python -m torch.distributed.run --standalone --nproc_per_node N
-m distill_dag.training.worker <spec>``, streams the workers' output into its log, and reads
the result rank 0 wrote (training/worker.py is the other side). Everything else is as in one
process: the Trainer wraps the model in DistributedDataParallel (NCCL on GPUs, gloo on CPUs)
and shards each batch across the ranks; rank 0 saves the resumable checkpoints and the finished
folder, so a killed run resumes from its last saved step, with any number of processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from distill_dag.configbase import ConfigError
from distill_dag.errors import DistillError
from distill_dag.training.config import TrainingConfig
from distill_dag.training.run_folder import (
    TrainingResult,
    finished_result,
    last_complete_checkpoint,
)

log = logging.getLogger(__name__)
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b[^:]*: ")
_RANK_PREFIX = re.compile(r"^\[rank\d+\]:\s*")
RESULT_FILE = "result.json"


class TrainingLaunchError(DistillError, RuntimeError):
    """The training processes failed; the message carries the end of their output."""


TORCHRUN = "--torchrun"  # first argument of the launcher's own command line
WORKER_ENV = "DISTILL_DAG_TRAINING_WORKER"  # set in the workers: they train, never relaunch
RECORDS_FILE = "records.json"  # the training records, next to the spec


def _worker_env(n: int, device: str) -> dict[str, str]:
    env = dict(os.environ, **{WORKER_ENV: "1"})
    if not device.startswith("cuda") and "OMP_NUM_THREADS" not in env:
        # torchrun would give each worker 1 thread; CPU workers share the cores instead.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
    return env


def _exec_torchrun(args: list[str]) -> None:
    """Become torchrun, set to get SIGTERM when the Dagster step dies (even by SIGKILL), so it
    stops its workers instead of letting them train on, orphaned, into the run folder. (The
    death signal survives exec; a preexec_fn would not be safe in a threaded step.)"""
    import ctypes
    import signal

    parent = os.getppid()
    # Not Linux (no prctl): the step's own cleanup on interruption still applies.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the step died before the signal was armed
        raise SystemExit(1)
    os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", *args])


def first_exception(lines: Sequence[str]) -> str | None:
    """The first exception line a worker printed. torch prefixes a rank's traceback lines with
    "[rankN]: ", and torchrun's own summary (ChildFailedError) hides the cause."""
    for line in lines:
        text = _RANK_PREFIX.sub("", line)
        if _EXCEPTION_LINE.match(text) and "ChildFailedError" not in text:
            return text
    return None


def _stop(proc: subprocess.Popen) -> None:
    """Stop torchrun and its workers (their own process group): SIGTERM, then SIGKILL."""
    import signal

    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait_s)


def check_devices(n: int, device: str) -> None:
    """Fail before launching when N processes cannot each get a GPU."""
    if device.startswith("cuda") or device == "auto":
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus and n > gpus:
            raise ConfigError(f"training.num_processes is {n} but this machine has {gpus} "
                              "GPU(s): one process per GPU")


def train_distributed(
    records: Sequence[Any],
    student_model: str,
    cfg: TrainingConfig,
    run_dir: Path,
    *,
    info: dict[str, Any] | None = None,
    device: str = "auto",
    show_progress: bool = True,
    on_output: Callable[[str], None] | None = None,
    trust_remote_code: bool = False,
    allow_pickle_weights: bool = False,
) -> TrainingResult:
    """train_student in cfg.num_processes processes; returns rank 0's TrainingResult.
    `on_output` receives each line the workers print; the student's load permissions reach
    every worker."""
    run_dir = Path(run_dir)
    done = finished_result(run_dir / "model")
    if done is not None:  # finished earlier: nothing to launch
        return done
    n = cfg.num_processes
    check_devices(n, device)
    launch_dir = run_dir / "launch"
    launch_dir.mkdir(parents=True, exist_ok=True)
    # Partial checkpoints are cleaned up here, once, not by every rank at the same time.
    if (run_dir / "trainer").is_dir():
        last_complete_checkpoint(run_dir / "trainer")
    (launch_dir / RECORDS_FILE).write_text(json.dumps(list(records)))
    result_path = launch_dir / RESULT_FILE
    result_path.unlink(missing_ok=True)
    spec = {"student_model": student_model, "training": dataclasses.asdict(cfg),
            "run_dir": str(run_dir), "info": info or {}, "device": device,
            "show_progress": show_progress, "result": str(result_path),
            "trust_remote_code": trust_remote_code is True,
            "allow_pickle_weights": allow_pickle_weights is True}
    (launch_dir / "spec.json").write_text(json.dumps(spec, default=str))

    command = [sys.executable, "-m", "distill_dag.training.launch", TORCHRUN, "--standalone",
               f"--nproc_per_node={n}", "-m", "distill_dag.training.worker",
               str(launch_dir / "spec.json")]
    log.info("training: launching %d data-parallel processes: %s", n, " ".join(command))
    lines: list[str] = []
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_worker_env(n, device), bufsize=1, start_new_session=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if _EXCEPTION_LINE.match(_RANK_PREFIX.sub("", line)):
                lines.append(line)
            if on_output is not None:
                on_output(line)
        proc.wait()
    except BaseException:  # the step was interrupted: the workers must not train on
        _stop(proc)
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    if proc.returncode != 0 or not result_path.exists():
        cause = first_exception(lines)
        raise TrainingLaunchError(
            f"training with {n} processes failed (torchrun exit code {proc.returncode})"
            + (f": {cause}" if cause else "") + f"; saved steps under {run_dir / 'trainer'} "
            "are kept and a rerun resumes from them. Last output:\n" + "\n".join(tail))
    data = json.loads(result_path.read_text())
    data["path"] = Path(data["path"])
    shutil.rmtree(launch_dir, ignore_errors=True)  # a copy of the dataset; the folder is done
    return TrainingResult(**data)


def main(argv: list[str] | None = None) -> int:
    """``python -m distill_dag.training.launch --torchrun ARGS``: become torchrun (see
    _exec_torchrun); the ranks it starts run training/worker.py."""
    argv = list(argv if argv is not None else sys.argv[1:])
    if not argv or argv[0] != TORCHRUN:
        raise SystemExit(f"usage: python -m distill_dag.training.launch {TORCHRUN} ARGS...")
    _exec_torchrun(argv[1:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
