"""filtered_dataset: the chosen teachers' best correct samples as chat records to train on."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from distill_dag import tables
from distill_dag.cards import dataset_card
from distill_dag.config import ProjectConfig
from distill_dag.difficulty import student_pass_rates
from distill_dag.errors import DistillError, StageError
from distill_dag.filtering import dataset_jsonl, filter_dataset
from distill_dag.models import load_model, model_access
from distill_dag.stage import Check, PathValue, StageContext, StageOutput, preview
from distill_dag.stage import removal_share_check as share_check
from distill_dag.stages.query_corpus import corpus_version
from distill_dag.store import Store
from distill_dag.training.data import TrainingDataError, check_record

if TYPE_CHECKING:
    from huggingface_hub import DatasetCard

# The Hugging Face export's first columns (the chat records and their keys); the table's other
# columns follow in its order.
HF_FIRST_COLUMNS = ("messages", "query_id", "teacher", "request_key")


def write_exports(frame: pl.DataFrame, root: str | Path) -> tuple[str, str]:
    """Write train.jsonl ({"messages": [...]}) and train.parquet into root/<sha of the jsonl>/.

    The folder is named by content, so an older materialization's path keeps pointing at the
    bytes its hash describes; the same content is written once."""
    tmp = os.path.join(root, f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    content = dataset_jsonl(frame)
    with open(os.path.join(tmp, "train.jsonl"), "wb") as handle:
        handle.write(content)
    digest = hashlib.sha256(content).hexdigest()
    frame.write_parquet(os.path.join(tmp, "train.parquet"))
    final = os.path.join(root, digest[:16])
    if os.path.exists(final):
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, final)
    return os.path.join(final, "train.jsonl"), digest


@contextmanager
def _datasets_progress(show: bool) -> Iterator[None]:
    """datasets' progress bars on or off (they are global) for the duration."""
    import datasets

    was_on = datasets.is_progress_bar_enabled()
    if was_on and not show:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on and not show:
            datasets.enable_progress_bars()


def write_hf_dataset(frame: pl.DataFrame, folder: str | Path, card: DatasetCard,
                     show_progress: bool = False) -> Path:
    """Write `frame` as a Hugging Face DatasetDict({"train": ...}) folder (save_to_disk; read it
    with datasets.load_from_disk) with `card` as its README.md, replacing `folder`.

    The whole folder is written under a temporary name beside it and renamed into place, so a
    reader finds the old folder or the new one, never a half-written one."""
    import datasets

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    first = [c for c in HF_FIRST_COLUMNS if c in frame.columns]
    ordered = frame.select([*first, *(c for c in frame.columns if c not in first)])
    with _datasets_progress(show_progress):
        train = datasets.Dataset.from_polars(ordered)
        # An empty table needs one (empty) shard named, or load_from_disk finds no data file.
        shards = {"train": 1} if frame.height == 0 else None
        datasets.DatasetDict({"train": train}).save_to_disk(str(tmp), num_shards=shards)
    card.save(str(tmp / "README.md"))
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def filtered_dataset_card(cfg: ProjectConfig, data: pl.DataFrame, chosen: list[str],
                          removed: dict[str, int], queries: pl.DataFrame,
                          data_version: str) -> DatasetCard:
    """filtered_dataset's dataset card: the chosen teachers, the filter settings and what each
    filter removed, records per teacher, the corpus and data versions, filtering.license."""
    counts = (dict(data.group_by("teacher").len().sort("teacher").iter_rows())
              if data.height else {})
    settings: dict[str, Any] = {}
    for key, value in cfg.filtering.output_settings().items():
        if isinstance(value, dict):  # a nested section (difficulty): its keys, dotted
            settings.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            settings[key] = value
    return dataset_card(
        teachers=chosen, records_per_teacher=counts, removed=removed, filters=settings,
        corpus_version=corpus_version(queries), data_version=data_version,
        license=cfg.filtering.license,
        queries=data["query_id"].n_unique() if data.height else 0, columns=data.columns)


def template_problems(tokenizer, records: list[list[dict]]) -> list[str]:
    """Render each record with the student's chat template exactly as training will; a record
    training would reject (no reply, a template that drops it or re-renders the prompt) is a
    problem here already, before any compute is spent on it."""
    problems = []
    for i, messages in enumerate(records):
        try:
            check_record(tokenizer, messages, f"record {i}")
        except TrainingDataError as exc:
            problems.append(str(exc))
    return problems


def student_difficulty(ctx: StageContext, cfg: ProjectConfig, db: Store, samples: pl.DataFrame,
                       queries: pl.DataFrame, chosen: list[str]
                       ) -> tuple[pl.DataFrame | None, dict]:
    """The base student's pass rate on each training query a chosen teacher answered correctly
    (the others cannot reach the dataset), and metadata; (None, {}) when the band is off."""
    difficulty = cfg.filtering.difficulty
    if not difficulty.enabled:
        return None, {}
    answered = samples.filter(pl.col("correct").fill_null(False))["query_id"].unique()
    train = queries.filter((pl.col("split") == "train")
                           & pl.col("query_id").is_in(answered.implode()))
    if train.is_empty():
        ctx.log.warning(f"difficulty: no training query has a correct sample from {chosen}; "
                        "the student was not run")
        return None, {}
    try:
        rates = student_pass_rates(cfg.student, difficulty, train, db, ctx.device, ctx.dtype,
                                   ctx.show_progress)
    except DistillError as exc:
        raise StageError(f"filtered_dataset: student.model: {exc}",
                         retryable=exc.retryable) from exc
    pass_rates = rates.per_query
    db.write_table(tables.STUDENT_DIFFICULTY, pass_rates)
    mean = float(pass_rates["student_pass_rate"].mean() or 0)
    ctx.log.info(f"difficulty: the base student answered {train.height} queries x "
                 f"{difficulty.num_samples} ({rates.generated} generated now, "
                 f"{rates.seconds:.1f} s); mean pass rate {mean:.3f}")
    solved = float((pass_rates["student_pass_rate"] > difficulty.max_pass_rate).mean() or 0)
    return pass_rates, {"student_pass_rate_mean": round(mean, 4),
                        "student_solved_share": round(solved, 4),
                        "difficulty_generated_now": rates.generated}


def chosen_samples(db: Store, chosen: list[str]) -> tuple[pl.DataFrame, int]:
    """The chosen teachers' samples with their provenance counts, and how many samples have no
    provenance yet (left out). Verdicts and text come from teacher_outputs (current verifier)."""
    outputs = db.query(
        "SELECT teacher, request_key, query_id, sample_index, response, correct, "
        f"finish_reason, completion_tokens FROM {tables.TEACHER_OUTPUTS} "
        "WHERE list_contains(?, teacher)", [chosen])
    provenance = db.query(
        "SELECT teacher, request_key, n_sentences, n_teacher, teacher_fraction "
        f"FROM {tables.PROVENANCE_SAMPLES} WHERE list_contains(?, teacher)", [chosen])
    samples = outputs.join(provenance, on=["teacher", "request_key"], how="left")
    unscored = samples.filter(pl.col("n_sentences").is_null()).height
    return samples.filter(pl.col("n_sentences").is_not_null()), unscored


def run(ctx: StageContext) -> StageOutput:
    cfg = ctx.project
    db = ctx.store
    chosen = db.read_table(tables.TEACHER_METRICS, "chosen")["teacher"].to_list()
    queries = db.read_table(tables.QUERIES)
    samples, unscored = chosen_samples(db, chosen)
    if unscored:
        ctx.log.warning(f"{unscored} samples of {chosen} have no provenance scores yet and are "
                        "left out; materialize provenance_scores first")
    pass_rates, difficulty_meta = student_difficulty(ctx, cfg, db, samples, queries, chosen)
    result = filter_dataset(samples, queries, chosen, cfg.filtering, cfg.student.prompt,
                            pass_rates)
    for warning in result.warnings:
        ctx.log.warning(warning)
    if unscored:
        result.removed["no_provenance"] = unscored
    data = result.dataset
    db.write_table(tables.FILTERED_DATASET, data)
    db.write_table(tables.NEGATIVES, result.negatives)
    jsonl, digest = write_exports(data, ctx.artifact_dir("filtered_dataset"))
    # The same records as a datasets folder with its card, beside the exports (the card is not
    # part of the data version: its licence and counts can change without the records).
    card = filtered_dataset_card(cfg, data, chosen, result.removed, queries, digest[:16])
    hf = write_hf_dataset(data, Path(jsonl).parent / "hf", card, ctx.show_progress)
    eval_ids = queries.filter(pl.col("split") == "eval")["query_id"]
    leaked = int(data["query_id"].is_in(eval_ids.implode()).sum()) if data.height else 0
    tokenizer = load_model(cfg.student.model, ctx.device, ctx.dtype,
                           **model_access(cfg.student)).tokenizer
    problems = template_problems(tokenizer, data["messages"].to_list())
    return StageOutput(
        row_count=data.height,
        tables={tables.FILTERED_DATASET: data, tables.NEGATIVES: result.negatives},
        metadata={
            "negatives": result.negatives.height,
            "chosen_teachers": ", ".join(chosen),
            "queries_covered": data["query_id"].n_unique() if data.height else 0,
            "mean_teacher_sentences": round(float(data["n_teacher"].mean() or 0), 3)
            if data.height else 0.0,
            "mean_completion_tokens": round(float(data["completion_tokens"].mean() or 0), 1)
            if data.height else 0.0,
            **{f"removed/{k}": v for k, v in result.removed.items()},
            **{f"removed_share/{k}": round(v, 4) for k, v in result.removed_shares.items()},
            **difficulty_meta,
            "jsonl_path": PathValue(jsonl),
            "jsonl_sha256": digest,
            "hf_dataset_path": PathValue(str(hf)),
            "preview": preview(data, ["query_id", "teacher", "n_teacher", "response"]),
        },
        data_version=digest[:16],
        checks=[
            Check("not_empty", passed=data.height > 0,
                  metadata={"rows": data.height, **result.removed}),
            Check("no_eval_queries", passed=leaked == 0, metadata={"eval_records": leaked}),
            share_check(result.removed_shares, cfg.filtering.warn_removed_share),
            Check("chat_schema", passed=not problems,
                  metadata={"bad_records": len(problems), "examples": "; ".join(problems[:5])}),
        ],
    )
