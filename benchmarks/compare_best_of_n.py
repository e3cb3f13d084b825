"""The provenance paper's data-selection ablation: which correct response of a query to train on.

Best-of-N by the number of Teacher sentences (filtering.best_of_n "teacher_count", the default)
against "random", "longest" and "teacher_fraction" (the Teacher-sentence ratio), and "shortest"
on request. The upstream stages run once through the stages' core functions (memoized in --home,
shared with compare_objectives.py), then each rule picks one response per query from the same
pool of the chosen teachers' verified-correct samples, so every rule trains on the same queries
and the same number of records (the equal budget), with the same optimizer steps. Each student is
scored by greedy pass@1 on the eval split with a paired bootstrap 95% interval against the base
student and against teacher_count (one pair per held-out query).

Usage:
  .venv/bin/python benchmarks/compare_best_of_n.py                   # the embedded default
  .venv/bin/python benchmarks/compare_best_of_n.py --levels 1 2      # one- and two-step problems

A rerun trains and generates nothing. Prints a markdown table (docs/curation.md quotes it).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import polars as pl
import yaml
from compare_objectives import materialize_upstream, project_with

from distill_dag import tables
from distill_dag.config import DEFAULT_CONFIG
from distill_dag.evaluation.metrics import bootstrap_mean, paired_bootstrap_mean_diff
from distill_dag.evaluation.run import BASE, eval_queries, evaluate_model
from distill_dag.filtering import filter_dataset
from distill_dag.stage import StageContext
from distill_dag.stages.distilled_checkpoint import train
from distill_dag.stages.filtered_dataset import chosen_samples

RULES = ("teacher_count", "random", "longest", "teacher_fraction")
REFERENCE = "teacher_count"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--levels", type=int, nargs="+", help="corpus.generator.levels "
                        "(and the teachers' few_shot_levels) instead of the config's")
    parser.add_argument("--home", help="default var/compare-<levels>")
    parser.add_argument("--rules", nargs="+", default=list(RULES),
                        choices=[*RULES, "shortest"])
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
    workdir = Path(tempfile.mkdtemp(prefix="compare-best-of-n-"))
    wall = time.perf_counter()

    project = project_with(base, {}, workdir, "base")
    ctx = StageContext.local(project, home, device=args.device, show_progress=False)
    print(f"upstream stages in {home} (levels {levels}):", flush=True)
    materialize_upstream(ctx)
    chosen = ctx.store.read_table(tables.TEACHER_METRICS, "chosen")["teacher"].to_list()
    samples, _ = chosen_samples(ctx.store, chosen)
    queries = ctx.store.read_table(tables.QUERIES)
    correct = samples.filter(pl.col("correct").fill_null(False))
    choices = correct.group_by("query_id").len().filter(pl.col("len") > 1).height

    eval_cfg = dataclasses.replace(project.evaluation, num_samples=0, pass_k=[1])
    held_out = eval_queries(queries, eval_cfg)

    def greedy(label: str, model: str):
        ev = evaluate_model(label, model, project.student.prompt, held_out, eval_cfg, ctx.store,
                            device=args.device, show_progress=False)
        return ev.per_query.sort("query_id")["greedy_correct"].to_numpy()

    scores = {BASE: greedy(BASE, project.student.model)}
    rows = {}
    rules = [REFERENCE, *[r for r in args.rules if r != REFERENCE]]
    for rule in rules:
        filtering = dataclasses.replace(project.filtering, best_of_n=rule)
        data = filter_dataset(samples, queries, chosen, filtering, project.student.prompt,
                              None).dataset
        started = time.perf_counter()
        trained, _ = train(ctx, data)
        scores[rule] = greedy(f"best-of-n-{rule}", str(trained.result.path))
        rows[rule] = {"records": data.height, "steps": trained.result.global_step,
                      "tokens": float(data["completion_tokens"].mean()),
                      "teacher": float(data["n_teacher"].mean()),
                      "fraction": float(data["teacher_fraction"].mean())}
        print(f"  {rule}: {data.height} records, {trained.result.global_step} steps, "
              f"{time.perf_counter() - started:.0f} s "
              f"({'trained' if trained.result.trained_now else 'reused'}), greedy pass@1 "
              f"{scores[rule].mean():.3f}", flush=True)

    ci = {"confidence": eval_cfg.confidence, "resamples": eval_cfg.bootstrap_resamples,
          "seed": eval_cfg.seed}
    print(f"\n{held_out.height} held-out queries, levels {levels}, teachers {chosen}; "
          f"{choices} of {correct['query_id'].n_unique()} training queries had more than one "
          f"correct response to choose from; wall {time.perf_counter() - wall:.0f} s\n")
    print("| best_of_n | records | steps | mean tokens | mean Teacher sentences | "
          "mean Teacher fraction | greedy pass@1 [95% CI] | vs base | vs teacher_count |")
    print("|---|---|---|---|---|---|---|---|---|")
    acc = bootstrap_mean(scores[BASE], **ci)
    print(f"| base student | 0 | 0 | | | | {acc.estimate:.3f} [{acc.low:.3f}, {acc.high:.3f}] "
          "| | |")
    for rule in rules:
        r = rows[rule]
        acc = bootstrap_mean(scores[rule], **ci)
        gain = paired_bootstrap_mean_diff(scores[rule], scores[BASE], **ci)
        ref = paired_bootstrap_mean_diff(scores[rule], scores[REFERENCE], **ci) \
            if rule != REFERENCE else None
        print(f"| {rule} | {r['records']} | {r['steps']} | {r['tokens']:.1f} | "
              f"{r['teacher']:.2f} | {r['fraction']:.2f} | "
              f"{acc.estimate:.3f} [{acc.low:.3f}, {acc.high:.3f}] | "
              f"{gain.estimate:+.3f} [{gain.low:+.3f}, {gain.high:+.3f}] | "
              + (f"{ref.estimate:+.3f} [{ref.low:+.3f}, {ref.high:+.3f}] |" if ref else "|"))


if __name__ == "__main__":
    main()
