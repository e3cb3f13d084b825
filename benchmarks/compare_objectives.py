"""Greedy pass@1 on the held-out queries for each training objective, on the same teacher data.

Issue 14's result that matters: the upstream stages run once (query_corpus .. filtered_dataset,
through the stages' core functions, memoized in --home), then every variant trains the base
student from the same filtered_dataset with the same number of optimizer steps (sft's, from its
epochs and batch size; redi adds its own second stage on top of the sft checkpoint) and is scored
by greedy pass@1 on the eval split, with a paired bootstrap 95% interval against the base student
and against sft (one pair per held-out query).

Usage:
  .venv/bin/python benchmarks/compare_objectives.py                      # the embedded default
  .venv/bin/python benchmarks/compare_objectives.py --levels 1 2         # one- and two-step
  .venv/bin/python benchmarks/compare_objectives.py --variants sft kd_forward_kl

Everything is memoized in --home (default var/compare-<levels>): a rerun trains and generates
nothing, and a new variant trains only itself. Prints a markdown table (docs/training.md quotes it).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import yaml

from distill_dag import tables
from distill_dag.config import DEFAULT_CONFIG, load_project_config
from distill_dag.evaluation.metrics import bootstrap_mean, paired_bootstrap_mean_diff
from distill_dag.evaluation.run import BASE, eval_queries, evaluate_model
from distill_dag.stage import StageContext, in_order
from distill_dag.stages import STAGES
from distill_dag.stages.distilled_checkpoint import train, training_records

UPSTREAM = ("query_corpus", "teacher_outputs", "provenance_scores", "teacher_selection",
            "filtered_dataset")

# name -> the training section's overrides (merged into the config's own training section).
VARIANTS: dict[str, dict[str, Any]] = {
    "sft": {"objective": "sft"},
    "kd_forward_kl": {"objective": "kd", "kd": {"divergence": "forward_kl"}},
    "kd_reverse_kl": {"objective": "kd", "kd": {"divergence": "reverse_kl"}},
    "kd_skew_reverse_kl": {"objective": "kd", "kd": {"divergence": "skew_reverse_kl"}},
    "kd_taid": {"objective": "kd", "kd": {"divergence": "taid"}},
    "on_policy": {"objective": "on_policy"},
    "sft_then_redi": {"objective": "redi", "redi": {"after": "sft"}},
    # REDI's own default rate is a tenth of training's; this one keeps training's rate.
    "sft_then_redi_full_lr": {"objective": "redi", "redi": {"after": "sft",
                                                            "learning_rate": 3.0e-4}},
}
DEFAULT_VARIANTS = ("sft", "kd_forward_kl", "kd_reverse_kl", "kd_taid", "on_policy",
                    "sft_then_redi")


def project_with(base: dict, training: dict, workdir: Path, name: str):
    """The project config with `training` merged into its training section."""
    config = yaml.safe_load(yaml.safe_dump(base))
    config.setdefault("training", {}).update(training)
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_project_config(path)


def materialize_upstream(ctx: StageContext) -> None:
    """query_corpus .. filtered_dataset through the core (memoized: a rerun generates nothing)."""
    for stage in in_order(STAGES):
        if stage.name not in UPSTREAM:
            continue
        started = time.perf_counter()
        partitions = [t.name for t in ctx.project.teachers] if stage.partitioned else [None]
        for partition in partitions:
            stage.run(dataclasses.replace(ctx, partition=partition))
        print(f"  {stage.name}: {time.perf_counter() - started:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--levels", type=int, nargs="+", help="corpus.generator.levels "
                        "(and the teachers' few_shot_levels) instead of the config's")
    parser.add_argument("--home", help="default var/compare-<levels>")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                        choices=sorted(VARIANTS))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    base = yaml.safe_load(Path(args.config).read_text())
    if args.levels:
        base["corpus"]["generator"]["levels"] = args.levels
        for teacher in base.get("teachers", []):
            teacher.setdefault("prompt", {})["few_shot_levels"] = args.levels
    levels = base["corpus"].get("generator", {}).get("levels", [1])
    home = Path(args.home or f"var/compare-{'-'.join(map(str, levels))}").resolve()
    workdir = Path(tempfile.mkdtemp(prefix="compare-objectives-"))
    wall = time.perf_counter()

    print(f"upstream stages in {home} (levels {levels}):", flush=True)
    sft_project = project_with(base, VARIANTS["sft"], workdir, "sft")
    sft_ctx = StageContext.local(sft_project, home, device=args.device, show_progress=False)
    materialize_upstream(sft_ctx)
    data = training_records(sft_ctx)
    queries = sft_ctx.store.read_table(tables.QUERIES)
    # Greedy pass@1 only: the sampled pass@k of eval_report is not what the objectives differ in.
    eval_cfg = dataclasses.replace(sft_project.evaluation, num_samples=0, pass_k=[1])
    held_out = eval_queries(queries, eval_cfg)
    student = sft_project.student

    def greedy(label: str, model: str):
        ev = evaluate_model(label, model, student.prompt, held_out, eval_cfg, sft_ctx.store,
                            device=args.device, show_progress=False)
        return ev.per_query.sort("query_id")["greedy_correct"].to_numpy()

    scores = {BASE: greedy(BASE, student.model)}
    rows: dict[str, dict[str, Any]] = {}
    steps: int | None = None
    for name in ["sft", *[v for v in args.variants if v != "sft"]]:
        overrides = dict(VARIANTS[name])
        # The same optimizer steps as sft: sft's own count (epochs x batches) for every objective
        # trained from the base student; sft_then_redi continues the identical sft checkpoint.
        if name != "sft" and not name.startswith("sft_then_redi") and steps is not None:
            overrides["max_steps"] = steps
        project = project_with(base, overrides, workdir, name)
        ctx = dataclasses.replace(sft_ctx, project=project)
        started = time.perf_counter()
        trained, _ = train(ctx, data)
        result = trained.result
        if name == "sft":
            steps = result.global_step
        seconds = time.perf_counter() - started
        scores[name] = greedy(name, str(result.path))
        rows[name] = {"steps": result.global_step, "metadata": trained.metadata}
        print(f"  {name}: {result.global_step} steps, {seconds:.0f} s "
              f"({'trained' if result.trained_now else 'reused'}), greedy pass@1 "
              f"{scores[name].mean():.3f}", flush=True)

    ci = {"confidence": eval_cfg.confidence, "resamples": eval_cfg.bootstrap_resamples,
          "seed": eval_cfg.seed}
    print(f"\n{held_out.height} held-out queries, levels {levels}, {data.height} training "
          f"records, {steps} optimizer steps per objective (batch "
          f"{sft_project.training.batch_size}); wall {time.perf_counter() - wall:.0f} s\n")
    print("| objective | steps | greedy pass@1 [95% CI] | vs base | vs sft |")
    print("|---|---|---|---|---|")
    acc = bootstrap_mean(scores[BASE], **ci)
    print(f"| base student | 0 | {acc.estimate:.3f} [{acc.low:.3f}, {acc.high:.3f}] | | |")
    for name in ["sft", *[v for v in args.variants if v != "sft"]]:
        acc = bootstrap_mean(scores[name], **ci)
        gain = paired_bootstrap_mean_diff(scores[name], scores[BASE], **ci)
        vs_sft = paired_bootstrap_mean_diff(scores[name], scores["sft"], **ci) \
            if name != "sft" else None
        step_note = str(rows[name]["steps"])
        if name.startswith("sft_then_redi"):
            step_note = f"{steps} + {rows[name]['steps']}"
        print(f"| {name} | {step_note} | {acc.estimate:.3f} [{acc.low:.3f}, {acc.high:.3f}] | "
              f"{gain.estimate:+.3f} [{gain.low:+.3f}, {gain.high:+.3f}] | "
              + (f"{vs_sft.estimate:+.3f} [{vs_sft.low:+.3f}, {vs_sft.high:+.3f}] |"
                 if vs_sft else "|"))
    redi = next((row["metadata"] for name, row in rows.items()
                 if name.startswith("sft_then_redi")), None)
    if redi:
        print(f"\nredi: {redi.get('redi_pairs')} pairs from {redi.get('redi_queries_with_pairs')} "
              f"queries; {redi.get('redi_queries_without_incorrect_sample')} queries had no "
              "incorrect sample")


if __name__ == "__main__":
    main()
