"""Staleness benchmark: one full run of the DAG, then one edit at a time, each followed by
`materialize_stale`. Prints what each scenario ran, its work counters and its wall time as a
ratio of the first full run, all measured in this one process on this machine.

    .venv/bin/python benchmarks/bench_staleness.py [--config distill_dag/configs/default.yaml]

Scenarios build on each other (in this order): nothing changed; eval settings changed; a filter
threshold changed; the verifier's version bumped; a new corpus file in the inbox; a teacher
added. Takes about 16 minutes on 2 CPU cores with the default config.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import dagster as dg
import yaml

from distill_dag import verify
from distill_dag.config import DEFAULT_CONFIG
from distill_dag.orchestration.definitions import build_definitions
from distill_dag.orchestration.stale import materialize_stale

NEW_QUERIES = [
    ("Zed has 13 marbles. Zed finds 4 more marbles. How many marbles does Zed have now?", "17"),
    ("Quinn has 19 shells. Quinn gives away 5 shells. How many shells does Quinn have left?",
     "14"),
    ("Ravi has 6 boxes. Each box holds 7 pens. How many pens does Ravi have?", "42"),
    ("Uma has 11 stamps. Uma buys 9 more stamps. How many stamps does Uma have now?", "20"),
]
COUNTERS = ["samples_generated", "tokens_generated", "samples_verified", "sequences_scored",
            "training_steps", "eval_generations"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--workdir", help="keep the state here (default: a temp folder)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_stale_"))
    (work / "inbox").mkdir(parents=True, exist_ok=True)
    (work / "dagster").mkdir(exist_ok=True)
    config = yaml.safe_load(Path(args.config).read_text())
    config.setdefault("corpus", {})["inbox"] = {"folder": str(work / "inbox"), "split": "train"}

    def write(cfg: dict) -> Path:
        path = work / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def run(cfg: dict):
        defs = build_definitions(write(cfg), home=str(work / "home"), show_progress=False)
        with dg.instance_for_test(temp_dir=str(work / "dagster")) as instance:
            return materialize_stale(defs, instance, log_level="WARNING")

    rows = []

    def record(name: str, result, first_seconds: float | None) -> None:
        ratio = result.seconds / first_seconds if first_seconds else 1.0
        rows.append((name, result, ratio))
        counts = ", ".join(f"{k}={result.work.get(k, 0)}" for k in COUNTERS)
        ran = ", ".join(i.label for i in result.ran) or "nothing"
        print(f"\n## {name}: {result.seconds:.1f} s ({ratio:.1%} of the first run)\n"
              f"   ran: {ran}\n   work: {counts}", flush=True)

    first = run(config)
    record("first full run", first, None)
    base = first.seconds
    record("nothing changed", run(config), base)

    config["evaluation"] = {**config.get("evaluation", {}), "num_samples":
                            config.get("evaluation", {}).get("num_samples", 4) + 2}
    record("eval settings changed (num_samples +2)", run(config), base)

    filtering = config.setdefault("filtering", {})
    filtering["max_completion_tokens"] = max(8, filtering.get("max_completion_tokens", 32) - 8)
    record(f"filter changed (max_completion_tokens={filtering['max_completion_tokens']})",
           run(config), base)

    verify.VERIFIER_VERSION = f"{verify.VERIFIER_VERSION}-bench"
    record("verifier version bumped", run(config), base)

    (work / "inbox" / "new.jsonl").write_text("".join(
        json.dumps({"prompt": p, "reference_answer": a}) + "\n" for p, a in NEW_QUERIES))
    record(f"new corpus file ({len(NEW_QUERIES)} queries)", run(config), base)

    added = dict(config["teachers"][0], name="added_greedy_teacher")
    added["sampling"] = {**added.get("sampling", {}), "temperature": 0.0, "num_samples": 1}
    config["teachers"] = [*config["teachers"], added]
    record("teacher added (greedy, k=1)", run(config), base)

    print("\n| scenario | wall s | ratio to first run | " + " | ".join(COUNTERS) + " | ran |")
    print("|---|---|---|" + "---|" * len(COUNTERS) + "---|")
    for name, result, ratio in rows:
        counts = " | ".join(str(result.work.get(k, 0)) for k in COUNTERS)
        ran = ", ".join(i.label for i in result.ran) or "nothing"
        print(f"| {name} | {result.seconds:.1f} | {ratio:.1%} | {counts} | {ran} |")
    print(f"\nstate kept in {work}" if args.workdir else "")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
