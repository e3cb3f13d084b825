"""One rank of a data-parallel training run: torchrun starts N of these (training/launch.py).

Each reads the spec and records the launcher wrote, and runs train_student in this process
(WORKER_ENV is set, so it trains instead of launching again); rank 0 writes the result file the
launcher reads back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from distill_dag.training.config import TrainingConfig
from distill_dag.training.launch import RECORDS_FILE
from distill_dag.training.train import train_student


def main(argv: list[str] | None = None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text())
    records = json.loads((spec_path.parent / RECORDS_FILE).read_text())
    cfg = TrainingConfig.from_dict(spec["training"])
    # The launcher streams this process's output into the stage's log: one line per message,
    # and one per logged training step (training/progress.py).
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = train_student(records, spec["student_model"], cfg, Path(spec["run_dir"]),
                           info=spec["info"], device=spec["device"],
                           show_progress=spec["show_progress"],
                           trust_remote_code=spec.get("trust_remote_code", False) is True,
                           allow_pickle_weights=spec.get("allow_pickle_weights", False) is True)
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
