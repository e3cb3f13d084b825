"""Hugging Face cards: the dataset card of filtered_dataset and the model card of a distilled
checkpoint, built from plain arguments with huggingface_hub's DatasetCard / ModelCard.

Each card is a README.md: a YAML header the Hub and `DatasetCard.load` / `ModelCard.load` read
(licence, task, size; our own facts under `distill_dag:`) and a markdown body for people.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

PROJECT = "distill-dag"
# The Hub's size_categories buckets, by upper bound (exclusive).
_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
          (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"),
          (1_000_000_000, "100M<n<1B")]
# A Hub repository id (owner/name); local paths and pkg: references are not.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DATA_TERMS = ("The records are outputs of the teachers above on the query corpus: the licences "
               "and terms of use of the teacher models and of the corpus apply.")
_MODEL_TERMS = ("The model is the base model fine-tuned on outputs of the teachers above: the "
                "licences and terms of use of the base model, the teacher models and the query "
                "corpus apply.")


def size_category(rows: int) -> str:
    """The Hub's size_categories value for a number of rows (e.g. 'n<1K')."""
    for bound, name in _SIZES:
        if rows < bound:
            return name
    return "n>1B"


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
                   ) -> str:
    """Rows (mappings) as a markdown table; columns default to every key, first seen first."""
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    if not columns:
        return ""

    def cell(value: Any) -> str:
        text = "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _card_text(data: DatasetCardData | ModelCardData, body: str) -> str:
    return f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n"


def _license_text(license: str, terms: str, setting: str | None = None) -> str:
    """The card's licence paragraph; `setting`: the config key that declares it, if any."""
    where = f"`{setting}`" if setting else ""
    if license == "other":
        declared = f"No licence was declared ({where}: `other`)." if setting else (
            "No licence was declared (`other`).")
        how = f" Set {where} to declare one." if setting else ""
        return f"{declared} {terms}{how}"
    return f"`{license}`" + (f" ({where})" if setting else "") + f". {terms}"


def dataset_card(
    *,
    teachers: Sequence[str],
    records_per_teacher: Mapping[str, int],
    removed: Mapping[str, int],
    filters: Mapping[str, Any],
    corpus_version: str,
    data_version: str,
    license: str = "other",
    queries: int | None = None,
    columns: Sequence[str] = (),
    license_setting: str = "filtering.license",
    pretty_name: str = "distill-dag filtered_dataset",
) -> DatasetCard:
    """The dataset card of a filtered dataset: the teachers it came from, the filter settings
    and what each filter removed, records per teacher, and the corpus and data versions.

    `filters`: the filter settings (name -> value); `removed`: reason -> records removed;
    `license`: a Hub licence id ("other": the card says no licence was declared and the
    teachers' and corpus's terms apply; `license_setting` names where to set one)."""
    records = sum(records_per_teacher.values())
    data = DatasetCardData(
        license=license,
        task_categories=["text-generation"],
        size_categories=[size_category(records)],
        pretty_name=pretty_name,
        tags=["distillation", "synthetic", "reasoning", PROJECT],
        distill_dag={"teachers": list(teachers), "records": records,
                     "records_per_teacher": {k: int(v) for k, v in records_per_teacher.items()},
                     "removed": {k: int(v) for k, v in removed.items()},
                     "corpus_version": corpus_version, "data_version": data_version},
    )
    per_teacher = markdown_table([{"teacher": t, "records": records_per_teacher.get(t, 0)}
                                  for t in [*teachers, *(t for t in records_per_teacher
                                                         if t not in teachers)]])
    settings = markdown_table([{"setting": k, "value": v if isinstance(v, str) else
                                json.dumps(v, default=str)} for k, v in filters.items()])
    dropped = (markdown_table([{"removed because": k, "records": v} for k, v in removed.items()])
               or "Nothing was removed.")
    covered = f" covering {queries} queries" if queries is not None else ""
    column_list = ", ".join(f"`{c}`" for c in columns) or "see the features"
    body = f"""
# {pretty_name}

{records} chat records{covered}, distilled from teacher LLMs by {PROJECT}: correct samples of
the chosen teacher(s), filtered and ranked as listed under Filters, written as chat `messages`
in the student's zero-shot prompt format.

```python
from datasets import load_from_disk
train = load_from_disk("<this folder>")["train"]
```

Columns: {column_list}.

## Versions

- Query corpus (query_corpus's data version): `{corpus_version}`
- This dataset (filtered_dataset's data version, the sha256 of its train.jsonl): `{data_version}`

## Teachers

Chosen: {", ".join(f"`{t}`" for t in teachers) or "none"}.

{per_teacher}

## Filters

{settings}

Records removed, by reason:

{dropped}

## Licence

{_license_text(license, _DATA_TERMS, license_setting)}
"""
    return DatasetCard(_card_text(data, body))


def model_card(
    *,
    base_model: str,
    objective: str,
    training_method: str,
    data_version: str,
    teachers: Sequence[str],
    eval_table: str | Sequence[Mapping[str, Any]] | None = None,
    license: str = "other",
    model_name: str | None = None,
    dataset: str | None = None,
) -> ModelCard:
    """The model card of a distilled checkpoint.

    `base_model`: the student's reference (a Hub id such as `HuggingFaceTB/SmolLM2-135M-Instruct`
    goes into the YAML `base_model`; a local path or pkg: reference only into the body and
    `distill_dag.base_model`). `objective`: training.objective (sft, kd, on_policy, redi);
    `training_method`: e.g. "LoRA r=16" or "full fine-tune". `data_version`: filtered_dataset's
    data version it trained on; `dataset`: where that data lives (optional). `eval_table`: rows
    (mappings, one per model or metric) or a ready markdown table. `license`: a Hub licence id
    ("other": the card says none was declared)."""
    name = model_name or f"{PROJECT} distilled student"
    facts = {"base_model": base_model, "objective": objective,
             "training_method": training_method, "data_version": data_version,
             "teachers": list(teachers)}
    if dataset:
        facts["dataset"] = dataset
    data = ModelCardData(
        model_name=name,
        base_model=base_model if _REPO_ID.match(base_model) else None,
        license=license,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["distillation", objective, PROJECT],
        distill_dag=facts,
    )
    if eval_table is None:
        evaluation = "Not evaluated yet."
    elif isinstance(eval_table, str):
        evaluation = eval_table.strip() or "Not evaluated yet."
    else:
        evaluation = markdown_table(eval_table) or "Not evaluated yet."
    data_line = f"`{data_version}`" + (f" ({dataset})" if dataset else "")
    body = f"""
# {name}

A student model distilled from teacher LLMs by {PROJECT}.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```

## Training

- Base model: `{base_model}`
- Objective: `{objective}`
- Method: {training_method}
- Data: filtered_dataset version {data_line}
- Teachers: {", ".join(f"`{t}`" for t in teachers) or "none"}

## Evaluation

{evaluation}

## Licence

{_license_text(license, _MODEL_TERMS)}
"""
    return ModelCard(_card_text(data, body))


MODEL_CARD = "README.md"


def write_model_card(folder: str | Path, card: ModelCard, replace: bool = True) -> Path:
    """Save `card` as the checkpoint folder's README.md (atomically; the checkpoint's hash
    covers weights, config and tokenizer files, not the card). replace=False keeps a card that
    is already there (eval_report's, with its table)."""
    path = Path(folder) / MODEL_CARD
    if path.exists() and not replace:
        return path
    tmp = path.with_name(f".{MODEL_CARD}.tmp")
    card.save(str(tmp))
    os.replace(tmp, path)
    return path


def with_evaluation(folder: str | Path, eval_table: str | Sequence[Mapping[str, Any]]
                    ) -> ModelCard | None:
    """The folder's model card rebuilt with an evaluation table, or None without a card."""
    path = Path(folder) / MODEL_CARD
    if not path.exists():
        return None
    header = ModelCard.load(str(path)).data.to_dict()
    facts = header.get("distill_dag") or {}
    if not facts:
        return None
    return model_card(base_model=facts["base_model"], objective=facts["objective"],
                      training_method=facts["training_method"],
                      data_version=facts["data_version"], teachers=facts.get("teachers", []),
                      eval_table=eval_table,
                      license=header.get("license") or "other",
                      dataset=facts.get("dataset"))
