"""The `distill-dag` command: run the whole DAG (the main job), or prepare the models.

`dagster asset materialize -m distill_dag.definitions --select X [--partition T]` runs one step;
this command runs every asset and every teacher partition in order, in-process, recording the
runs in the Dagster instance so `dagster dev` shows them afterwards. With `--stale` it runs
only what is missing or stale (and what that changes downstream), which the stock Dagster CLI
cannot select.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _materialize(args: argparse.Namespace) -> int:
    from distill_dag.generation.run import teacher_change_notes
    from distill_dag.orchestration.definitions import (
        build_definitions,
        dagster_instance,
        materialize_all,
    )
    from distill_dag.store import Store

    home = os.path.abspath(args.home)
    started = time.perf_counter()
    defs = build_definitions(args.config, home=home, device=args.device, dtype=args.dtype,
                             show_progress=not args.no_progress)
    instance = dagster_instance(home)
    project = defs.resources["project"].load()
    for note in teacher_change_notes(Store(os.path.join(home, "store")),
                                     [t.name for t in project.teachers]):
        print(f"note: {note}")
    if args.stale or args.dry_run:
        return _materialize_stale(args, defs, instance, project)
    materialize_all(defs, instance, teachers=args.teacher or None)
    print(f"\nAll assets materialized in {time.perf_counter() - started:.0f} s.\n")
    _print_summary(home, instance)
    return 0


def _print_summary(home: str, instance) -> None:
    """The teacher table, the dataset, the checkpoint, the verdict and where to look."""
    import polars as pl

    from distill_dag.store import Store
    from distill_dag.tables import DISTILLED_CHECKPOINT, FILTERED_DATASET, TEACHER_METRICS

    store = Store(os.path.join(home, "store"))
    metrics = store.read_table(TEACHER_METRICS)
    dataset = store.query(f"SELECT count(*) AS n FROM {FILTERED_DATASET}")["n"][0]
    cols = ["rank", "teacher", "chosen", "pass_rate", "yield_per_query",
            "student_ppl_correct", "teacher_sentence_fraction", "tokens_per_correct",
            "seconds_per_correct"]
    if "trial_pass_at_1" in metrics.columns and metrics["trial_pass_at_1"].is_not_null().any():
        cols += ["trial_pass_at_1", "trial_low", "trial_high"]
    print("Teacher selection:")
    with pl.Config(tbl_rows=20, tbl_cols=20, tbl_width_chars=200, float_precision=3):
        print(metrics.select([c for c in cols if c in metrics.columns]))
    if "trial_pass_at_1" in cols:
        trialed = metrics.filter(pl.col("trial_pass_at_1").is_not_null())
        best = trialed.sort("trial_pass_at_1", descending=True)["teacher"][0]
        chosen = metrics.filter(pl.col("chosen"))["teacher"].to_list()
        print(f"Trial distillation's best teacher: {best}; the ranking rule chose "
              f"{', '.join(chosen)} ({'agrees' if best in chosen else 'disagrees'}; "
              "proxy_agreement in teacher_selection's metadata says which proxies follow it)")
    print(f"\nfiltered_dataset: {dataset} training records under "
          f"{os.path.join(home, 'artifacts', 'filtered_dataset')}")
    checkpoint = store.read_table(DISTILLED_CHECKPOINT)
    if checkpoint is not None and checkpoint.height:
        row = checkpoint.row(0, named=True)
        print(f"distilled_checkpoint: {row['path']} ({row['global_step']} steps)")
    report = _latest_report(instance)
    if report:
        print("\nEval report (base vs distilled student, held-out queries):")
        for key in ("verdict", "base/pass@1_greedy", "distilled/pass@1_greedy", "gain/pass@1",
                    "gain/pass@1_ci_low", "gain/pass@1_ci_high"):
            if key in report:
                print(f"  {key}: {report[key]}")
    print("\nWhere to look:")
    if report and "report_path" in report:
        print(f"  report:  {report['report_path']}")
    print(f"  store:   {store.catalog_path} (DuckDB)")
    print(f"  web UI:  DAGSTER_HOME={os.environ['DAGSTER_HOME']} "
          ".venv/bin/dagster dev -w workspace.yaml   (or .venv/bin/dg dev)")
    mlflow_db = os.path.join(home, "mlflow", "mlflow.db")
    if os.path.exists(mlflow_db):
        print(f"  MLflow:  .venv/bin/mlflow ui --backend-store-uri sqlite:///{mlflow_db} "
              "--host 127.0.0.1 --port 5000")


def _materialize_stale(args: argparse.Namespace, defs, instance, project) -> int:
    from distill_dag.orchestration.stale import materialize_stale

    for name in args.teacher or []:
        try:
            project.teacher(name)
        except KeyError as exc:
            print(f"error: --teacher: {exc.args[0]}", file=sys.stderr)
            return 2
    if args.dry_run:
        return _dry_run(args, defs, instance, project)

    def announce(item) -> None:
        why = f": {'; '.join(item.causes)}" if item.causes else ""
        print(f"-> {item.label} ({item.status}{why})", flush=True)

    run = materialize_stale(defs, instance, teachers=args.teacher or None,
                            tags=project.orchestration.run_tags(), on_step=announce)
    if run.observed:
        print(f"recorded new versions of: {', '.join(run.observed)}")
    if not run.ran:
        print(f"Nothing was missing or stale ({run.seconds:.1f} s).")
        return 0
    print(f"\nMaterialized {len(run.ran)} stale or missing step(s) in {run.seconds:.0f} s: "
          + ", ".join(item.label for item in run.ran))
    print("Work done: " + (", ".join(f"{k}={v}" for k, v in sorted(run.work.items()))
                           or "none (every step reused stored results)"))
    return 0


def _dry_run(args: argparse.Namespace, defs, instance, project) -> int:
    """Record the observed inputs (so the web UI agrees) and list what is stale; run nothing."""
    from distill_dag.orchestration.stale import downstream_closure, record_observations, stale_items

    graph = defs.resolve_asset_graph()
    observed = record_observations(instance, graph, project)
    if observed:
        print(f"recorded new versions of: {', '.join(observed)}")
    items = stale_items(instance, graph, teachers=args.teacher or None)
    if not items:
        print("Nothing is missing or stale.")
        return 0
    print("Missing or stale now:")
    for item in items:
        why = f" ({'; '.join(item.causes)})" if item.causes else ""
        print(f"  {item.label}: {item.status}{why}")
    later = [(a, p) for a, p in downstream_closure(graph, items)
             if (a, p) not in {(i.asset, i.partition) for i in items}]
    if later:
        print("Downstream, run only if the above change their data:")
        print("  " + ", ".join(f"{a}[{p}]" if p else a for a, p in later))
    return 0


def _latest_report(instance) -> dict[str, str]:
    """eval_report's latest materialization metadata, as plain strings."""
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey("eval_report"))
    if event is None or event.asset_materialization is None:
        return {}
    out = {}
    for key, value in event.asset_materialization.metadata.items():
        raw = getattr(value, "value", value)
        out[key] = getattr(raw, "path", raw) if not isinstance(raw, str | int | float) else raw
    return {k: str(v) for k, v in out.items()}


def _prepare_models(args: argparse.Namespace) -> int:
    from distill_dag.config import load_project_config
    from distill_dag.models import resolve_model

    project = load_project_config(args.config)
    refs = sorted({project.student.model, *(t.model for t in project.teachers)})
    for ref in refs:
        started = time.perf_counter()
        resolved = resolve_model(ref)
        print(f"{ref}: {resolved.hf_dir} ({time.perf_counter() - started:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distill-dag", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("materialize", help="materialize every asset and teacher partition")
    run.add_argument("--config", help="project config (default: $DISTILL_DAG_CONFIG or the "
                                      "embedded default)")
    run.add_argument("--home", default=os.environ.get("DISTILL_DAG_HOME", "var"),
                     help="run-time state: store, artifacts, Dagster instance (default: ./var)")
    run.add_argument("--teacher", action="append", help="only these teacher partitions")
    run.add_argument("--device", help="auto | cpu | cuda (default: auto)")
    run.add_argument("--dtype", help="auto | bf16 | fp32 (default: auto)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--stale", action="store_true",
                     help="only what is missing or stale, stage by stage, and what that changes "
                          "downstream")
    run.add_argument("--dry-run", action="store_true",
                     help="with --stale: list what is missing or stale and why; run nothing "
                          "(the observed inputs are recorded)")
    run.set_defaults(func=_materialize)
    models = sub.add_parser("prepare-models", help="resolve and convert the configured models")
    models.add_argument("--config")
    models.set_defaults(func=_prepare_models)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
