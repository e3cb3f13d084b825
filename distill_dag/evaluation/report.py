"""Render eval_report: a markdown report and three PNG plots (accuracy, categories, lengths)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from distill_dag.evaluation.run import BASE, DISTILLED, Comparison, ModelEval

PLOTS = ("accuracy.png", "provenance_categories.png", "output_lengths.png")


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.3f}"


def verdict_line(cmp: Comparison) -> str:
    g = cmp.gain
    level = f"{g.confidence:.0%}"
    if g.low > 0:
        return (f"**The distilled student beats the base student**: greedy pass@1 gain "
                f"{g.estimate:+.3f}, {level} interval [{g.low:+.3f}, {g.high:+.3f}] excludes 0 "
                f"({cmp.queries} held-out queries).")
    if g.high < 0:
        return (f"**The distilled student is worse than the base student**: gain "
                f"{g.estimate:+.3f}, {level} interval [{g.low:+.3f}, {g.high:+.3f}].")
    return (f"**No significant difference**: gain {g.estimate:+.3f}, {level} interval "
            f"[{g.low:+.3f}, {g.high:+.3f}] includes 0 ({cmp.queries} held-out queries). "
            "The distilled student has not been shown to be better.")


def plot_accuracy(cmp: Comparison, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [BASE, DISTILLED]
    est = [cmp.accuracy[x].estimate for x in labels]
    err = [[e - cmp.accuracy[x].low for e, x in zip(est, labels, strict=True)],
           [cmp.accuracy[x].high - e for e, x in zip(est, labels, strict=True)]]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.bar(labels, est, yerr=err, capsize=8, color=["#9e9e9e", "#1f77b4"])
    for i, e in enumerate(est):  # beside the bar, clear of the error bar
        ax.text(i + 0.12, e + 0.01, f"{e:.2f}", ha="left", va="bottom")
    ax.set_ylim(0, 1)
    ax.set_ylabel("greedy pass@1")
    ax.set_title(f"Held-out accuracy ({cmp.gain.confidence:.0%} bootstrap intervals)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_categories(shares: pl.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = ["correct", "incorrect", "all"]
    colors = {"shared": "#9e9e9e", "teacher": "#1f77b4", "student": "#ff7f0e",
              "boosted": "#2ca02c", "unscored": "#d62728"}
    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=100)
    bottom = [0.0] * len(groups)
    for row in shares.iter_rows(named=True):
        values = [0.0 if row[g] is None or math.isnan(row[g]) else row[g] for g in groups]
        ax.bar(groups, values, bottom=bottom, label=row["category"],
               color=colors.get(row["category"]))
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of sentences")
    ax.set_title("Test-time provenance of the distilled student's answers")
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1), fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_lengths(base: ModelEval, distilled: ModelEval, max_new_tokens: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    # The last edge sits past the budget, so answers cut at exactly max_new_tokens are counted.
    bins = np.linspace(0, max_new_tokens + 1, 18)
    for ev, color in ((base, "#9e9e9e"), (distilled, "#1f77b4")):
        ax.hist(ev.greedy["completion_tokens"].to_list(), bins=bins, alpha=0.6, color=color,
                label=ev.label)
    ax.axvline(max_new_tokens, color="#d62728", linestyle="--", label="budget")
    ax.set_xlabel("greedy answer length (tokens)")
    ax.set_ylabel("queries")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _metrics_table(cmp: Comparison) -> list[str]:
    names = list(cmp.metrics[BASE])
    lines = ["| metric | base | distilled | distilled - base |", "|---|---|---|---|"]
    for name in names:
        b, d = cmp.metrics[BASE][name], cmp.metrics[DISTILLED].get(name, math.nan)
        lines.append(f"| {name} | {_fmt(b)} | {_fmt(d)} | {d - b:+.3f} |")
    return lines


def _cost_table(costs: pl.DataFrame) -> list[str]:
    def sig(value: float | None) -> str:  # money can be fractions of a cent: significant digits
        return "n/a" if value is None else f"{value:.3g}"

    lines = ["## Cost per accepted sample", "",
             "What each teacher's samples cost (teachers[].price_per_hour, endpoint prices) "
             "per verified-correct sample and per sample that reached filtered_dataset.", "",
             "| teacher | samples | correct | kept | tokens / kept | seconds / kept | "
             "cost / correct | cost / kept |", "|---|---|---|---|---|---|---|---|"]
    for row in costs.iter_rows(named=True):
        lines.append(f"| {row['teacher']} | {row['samples']} | {row['correct']} | "
                     f"{row['kept']} | {sig(row['tokens_per_kept'])} | "
                     f"{sig(row['seconds_per_kept'])} | {sig(row['cost_per_correct'])} | "
                     f"{sig(row['cost_per_kept'])} |")
    return [*lines, ""]


def render_markdown(cmp: Comparison, shares: pl.DataFrame | None, examples: pl.DataFrame,
                    header: dict[str, str], plots: dict[str, str],
                    costs: pl.DataFrame | None = None) -> str:
    lines = ["# distill-dag eval report", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", verdict_line(cmp), "", "## Accuracy", ""]
    lines += [f"- {label}: greedy pass@1 {iv.estimate:.3f} [{iv.low:.3f}, {iv.high:.3f}]"
              for label, iv in cmp.accuracy.items()]
    lines += [f"- gain (distilled - base), greedy pass@1: {cmp.gain}"]
    lines += [f"- the same gain when a truncated answer's first stated result counts "
              f"(lenient): {cmp.gain_lenient}"]
    lines += [f"- gain, pass@{k}: {iv}" for k, iv in cmp.gains_at_k.items()]
    lines += ["", *_metrics_table(cmp), "",
              "Strict scoring (as for teacher samples): an answer cut at the token budget is "
              "incorrect, even if it stated a result before rambling on; the lenient figures "
              "credit the first completed \"The answer is N.\" statement.", ""]
    if "accuracy.png" in plots:
        lines += [f"![accuracy]({plots['accuracy.png']})", ""]
    lines += ["## Test-time provenance", ""]
    if shares is None:
        lines += ["Not computed (evaluation.provenance is false).", ""]
    else:
        lines += ["Each sentence of the distilled student's greedy answers, scored under the "
                  "teacher (T), the original student (S) and the distilled student (D). Shared: "
                  "all three agree within alpha; Teacher: pT - pS > beta; Student: pT - pS < "
                  "-beta; Boosted: T and S agree, D moved away.", "",
                  "| category | share (correct) | share (incorrect) | share (all) | n (all) |",
                  "|---|---|---|---|---|"]
        for row in shares.iter_rows(named=True):
            lines.append(f"| {row['category']} | {_fmt(row['correct'])} | "
                         f"{_fmt(row['incorrect'])} | {_fmt(row['all'])} | {row['n_all']} |")
        lines.append("")
        if "provenance_categories.png" in plots:
            lines += [f"![categories]({plots['provenance_categories.png']})", ""]
    if costs is not None and costs.height:
        lines += _cost_table(costs)
    lines += ["## Output lengths", ""]
    if "output_lengths.png" in plots:
        lines += [f"![lengths]({plots['output_lengths.png']})", ""]
    lines += ["## Examples (greedy, same query)", "", "| query | base | distilled |",
              "|---|---|---|"]
    for row in examples.iter_rows(named=True):
        cells = [str(row[c]).replace("\n", " ").replace("|", "\\|")[:160]
                 for c in ("prompt", "base", "distilled")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, cmp: Comparison, base: ModelEval, distilled: ModelEval,
                 shares: pl.DataFrame | None, queries: pl.DataFrame, header: dict[str, str],
                 max_new_tokens: int, examples: int = 5,
                 costs: pl.DataFrame | None = None) -> Path:
    """Write report.md and its PNGs into out_dir; returns the report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_accuracy(cmp, out_dir / "accuracy.png")
    plot_lengths(base, distilled, max_new_tokens, out_dir / "output_lengths.png")
    written = {"accuracy.png": "accuracy.png", "output_lengths.png": "output_lengths.png"}
    if shares is not None:
        plot_categories(shares, out_dir / "provenance_categories.png")
        written["provenance_categories.png"] = "provenance_categories.png"
    pairs = (base.greedy.select("query_id", pl.col("response").alias("base"))
             .join(distilled.greedy.select("query_id", pl.col("response").alias("distilled")),
                   on="query_id")
             .join(queries.select("query_id", "prompt"), on="query_id")
             .sort("query_id").head(examples))
    path = out_dir / "report.md"
    path.write_text(render_markdown(cmp, shares, pairs, header, written, costs))
    return path
