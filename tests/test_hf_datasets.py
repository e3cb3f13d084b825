"""Hugging Face conventions: a corpus from a `datasets` folder (save_to_disk) with the same field
mapping, quarantine and errors as files; filtered_dataset also written as a DatasetDict folder
with a dataset card; the model card a distilled checkpoint will carry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import datasets
import polars as pl
import pytest
import yaml
from huggingface_hub import DatasetCard, ModelCard

from distill_dag import tables
from distill_dag.cards import dataset_card, model_card, size_category
from distill_dag.config import ProjectConfig, load_project_config
from distill_dag.corpus import (
    ConfigError,
    CorpusConfig,
    CorpusSourceError,
    FileSource,
    build_corpus,
    load_file,
)
from distill_dag.corpus.loaders import sources_fingerprint
from distill_dag.errors import StageError
from distill_dag.filtering import FilterConfig, dataset_version
from distill_dag.stage import StageContext
from distill_dag.stages import filtered_dataset, query_corpus
from tests.conftest import TINY_CONFIG

NAMES = ["Ann", "Bob", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jo", "Kai", "Lea"]
MAPPING = {"prompt": "question", "reference_answer": "answer", "id": "uid", "domain": "topic"}

datasets.disable_progress_bars()


def _records(n: int, start: int = 0) -> list[dict]:
    """Short, distinct word problems with distinct answers (no dedup or decontamination hits),
    in a dataset's own column names."""
    return [{"question": f"{NAMES[i]} has {i + 2} apples and buys {10 * i + 1} more. How many "
                         "apples now?",
             "answer": str(11 * i + 3), "uid": f"u{i}", "topic": "arithmetic"}
            for i in range(start, start + n)]


def _corpus(*sources: FileSource, **kwargs) -> CorpusConfig:
    """Files only and no embedding steps (no model is loaded)."""
    kwargs = {"embed_decontam_threshold": None, "embed_dedup_threshold": None, **kwargs}
    return CorpusConfig(files=list(sources), **kwargs)


def _project(tmp_path: Path, files: list[dict]) -> Path:
    """The tiny config with its corpus replaced by `files` (paths relative to the config)."""
    data = yaml.safe_load(TINY_CONFIG.read_text())
    data["corpus"] = {"files": files, "eval_fraction": 0.25, "embed_decontam_threshold": None,
                      "embed_dedup_threshold": None}
    path = tmp_path / "project.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _tiny(**filtering) -> ProjectConfig:
    """The tiny config with `filtering` settings added."""
    data = yaml.safe_load(TINY_CONFIG.read_text())
    data["filtering"] = {**data["filtering"], **filtering}
    return ProjectConfig.from_dict(data)


# -- the corpus from a datasets folder ----------------------------------------------------------

def test_a_saved_dataset_folder_materializes_query_corpus_like_the_same_rows_in_jsonl(tmp_path):
    rows = _records(8)
    bad = {**_records(1, start=8)[0], "answer": None}  # row 9: no reference answer
    datasets.Dataset.from_list([*rows, bad]).save_to_disk(str(tmp_path / "qa"))
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # No `format`: an existing folder is read as a datasets folder.
    config = _project(tmp_path, [{"path": "qa", "fields": MAPPING}])
    project = load_project_config(config)
    assert project.corpus.files[0].resolved_format == "datasets"

    out = query_corpus.run(StageContext.local(project, tmp_path / "home", show_progress=False))
    queries = out.tables[tables.QUERIES]
    assert out.metadata["rows_read"] == 9 and queries.height == 8
    assert set(queries["source"]) == {"qa"} and set(queries["domain"]) == {"arithmetic"}
    assert set(queries["source_file"]) == {str(tmp_path / "qa")}
    quarantine = out.tables[tables.QUARANTINE]
    assert quarantine.select("source_file", "line", "field", "stage").rows() == [
        (str(tmp_path / "qa"), 9, "answer", "load")]
    assert "'answer'" in quarantine["reason"][0]

    # The same rows as JSON lines give the same queries, ids and splits.
    from_jsonl = build_corpus(_corpus(FileSource(path=str(tmp_path / "qa.jsonl"), fields=MAPPING),
                                      eval_fraction=0.25))
    columns = ["query_id", "prompt", "reference_answer", "domain", "split", "source_line"]
    assert queries.select(columns).equals(from_jsonl.queries.select(columns))


def test_a_dataset_dict_reads_every_split_and_maps_train_and_test(tmp_path):
    folder = tmp_path / "gsm"
    train = [*_records(6), {**_records(1, start=6)[0], "question": None}]  # row 7: no prompt
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list(train),
        "test": datasets.Dataset.from_list(_records(3, start=7)),
        "extra": datasets.Dataset.from_list(_records(2, start=10)),
    }).save_to_disk(str(folder))
    project = load_project_config(_project(tmp_path, [{"path": "gsm", "fields": MAPPING}]))
    out = query_corpus.run(StageContext.local(project, tmp_path / "home", show_progress=False))
    queries = out.tables[tables.QUERIES]
    by_file = {name: set(group["split"]) for (name,), group in queries.group_by("source_file")}
    # train -> train and test -> eval (explicit); a split of another name is hashed.
    assert by_file[str(folder / "train")] == {"train"} and by_file[str(folder / "test")] == {"eval"}
    assert str(folder / "extra") in by_file
    origin = dict(queries.select("source_file", "split_origin").unique().iter_rows())
    assert origin[str(folder / "test")] == "explicit" and origin[str(folder / "extra")] == "hash"
    assert queries.filter(pl.col("split") == "eval").height == 3  # the test split only
    assert out.metadata["rows_read"] == 12
    assert out.tables[tables.QUARANTINE].select("source_file", "line", "field").rows() == [
        (str(folder / "train"), 7, "question")]

    # A forced split, or a mapped split column, wins over the split names.
    forced = build_corpus(_corpus(FileSource(path=str(folder), fields=MAPPING, split="train")))
    assert set(forced.queries["split"]) == {"train"}
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{**r, "part": "eval"} for r in _records(2)]),
        "test": datasets.Dataset.from_list([{**r, "part": "train"} for r in _records(4, 2)]),
    }).save_to_disk(str(tmp_path / "labelled"))
    labelled = build_corpus(_corpus(FileSource(path=str(tmp_path / "labelled"),
                                               fields={**MAPPING, "split": "part"})))
    splits = dict(labelled.queries.group_by("source_file").agg(pl.col("split").unique())
                  .iter_rows())
    assert splits == {str(tmp_path / "labelled" / "train"): ["eval"],
                      str(tmp_path / "labelled" / "test"): ["train"]}


def test_folders_that_cannot_be_read_fail_clearly_naming_the_folder_and_field(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("not a dataset")
    with pytest.raises(CorpusSourceError, match=r"notes is not a Hugging Face datasets folder"):
        load_file(FileSource(path=str(tmp_path / "notes")))
    with pytest.raises(FileNotFoundError, match=r"datasets folder not found: .*gone"):
        load_file(FileSource(path=str(tmp_path / "gone"), format="datasets"))
    with pytest.raises(ConfigError, match=r"cannot infer the format of .*gone"):
        FileSource(path=str(tmp_path / "gone"))  # auto needs an extension or a folder
    datasets.Dataset.from_list(_records(3)).save_to_disk(str(tmp_path / "qa"))
    with pytest.raises(CorpusSourceError, match=r"qa: no column 'problem' \(mapped to prompt"):
        load_file(FileSource(path=str(tmp_path / "qa"), fields={**MAPPING, "prompt": "problem"}))
    with pytest.raises(CorpusSourceError, match=r"qa: no column 'level' \(mapped to difficulty"):
        load_file(FileSource(path=str(tmp_path / "qa"), fields={**MAPPING, "difficulty": "level"}))
    # In the stage: a StageError with the same message.
    project = load_project_config(_project(tmp_path, [{"path": "notes", "format": "datasets"}]))
    with pytest.raises(StageError, match=r"query_corpus: corpus datasets folder .*notes is not"):
        query_corpus.run(StageContext.local(project, tmp_path / "home", show_progress=False))


def test_the_sources_version_follows_the_folders_content(tmp_path):
    folder = tmp_path / "qa"
    datasets.Dataset.from_list(_records(3)).save_to_disk(str(folder))
    source = FileSource(path=str(folder), fields=MAPPING)
    first = sources_fingerprint([source])
    assert first == sources_fingerprint([source]) and first[0][0] == "qa"
    (folder / "cache-0123.arrow").write_bytes(b"a map() cache beside the data")
    assert sources_fingerprint([source]) == first  # not content
    shutil.rmtree(folder)
    datasets.Dataset.from_list(_records(4)).save_to_disk(str(folder))
    assert sources_fingerprint([source]) != first
    shutil.rmtree(folder)
    assert sources_fingerprint([source]) == [("qa", "missing")]


def test_the_inbox_takes_datasets_folders_and_keeps_a_removed_ones_queries(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    datasets.DatasetDict({"train": datasets.Dataset.from_list(_records(4)),
                          "test": datasets.Dataset.from_list(_records(2, 4))}
                         ).save_to_disk(str(inbox / "drop"))
    (inbox / "half-copied").mkdir()  # no datasets marker files yet: not a source
    cfg = CorpusConfig.from_dict({"inbox": {"folder": str(inbox), "fields": MAPPING},
                                  "embed_decontam_threshold": None,
                                  "embed_dedup_threshold": None})
    assert [Path(s.path).name for s in cfg.inbox.sources()] == ["drop"]
    first = build_corpus(cfg)
    assert first.queries.height == 6 and first.stats["eval"] == 2
    shutil.rmtree(inbox / "drop")
    second = build_corpus(cfg, previous=first.queries)
    assert second.queries.equals(first.queries) and second.stats["rows_carried"] == 6
    assert second.warnings == [f"inbox datasets folder {inbox / 'drop'} is gone; its 6 queries "
                               "ingested earlier are kept"]


# -- filtered_dataset as a datasets folder with a dataset card ---------------------------------

def _store_for_filtering(ctx: StageContext) -> None:
    """The tables filtered_dataset reads, by hand: 4 training queries and 1 eval query, two
    teachers (one chosen: the other's samples are never read), two samples each."""
    queries = pl.DataFrame([{"query_id": f"q{i}", "prompt": r["question"],
                             "reference_answer": r["answer"], "domain": "math",
                             "source": "qa", "split": "eval" if i == 4 else "train"}
                            for i, r in enumerate(_records(5))])
    outputs, provenance = [], []
    for teacher in ("fewshot", "zeroshot"):
        for i in range(5):
            for k in range(2):
                key = f"{teacher}-{i}-{k}"
                outputs.append({"teacher": teacher, "request_key": key, "query_id": f"q{i}",
                                "sample_index": k, "response": f"Adding gives {11 * i + 3}. "
                                "The answer is " + str(11 * i + 3 + (k if i == 3 else 0)) + ".",
                                "correct": not (i == 3 and k == 1),
                                "finish_reason": "length" if (i, k) == (2, 0) else "stop",
                                "completion_tokens": 12 + k})
                provenance.append({"teacher": teacher, "request_key": key, "n_sentences": 2,
                                   "n_teacher": 1 + k, "teacher_fraction": (1 + k) / 2})
    ctx.store.write_table(tables.QUERIES, queries)
    ctx.store.write_table(tables.TEACHER_OUTPUTS, pl.DataFrame(outputs))
    ctx.store.write_table(tables.PROVENANCE_SAMPLES, pl.DataFrame(provenance))
    ctx.store.write_table(tables.TEACHER_METRICS, pl.DataFrame(
        {"teacher": ["fewshot", "zeroshot"], "chosen": [True, False]}))


def test_filtered_dataset_is_also_a_dataset_dict_with_a_card(tmp_path, monkeypatch):
    # The student's tokenizer only checks the chat template here (tested elsewhere).
    monkeypatch.setattr(filtered_dataset, "load_model",
                        lambda *args, **kwargs: SimpleNamespace(tokenizer=None))
    monkeypatch.setattr(filtered_dataset, "template_problems", lambda tokenizer, records: [])
    project = load_project_config(TINY_CONFIG)
    ctx = StageContext.local(project, tmp_path / "home", show_progress=False)
    _store_for_filtering(ctx)
    out = filtered_dataset.run(ctx)
    table = out.tables[tables.FILTERED_DATASET]
    assert out.data_version == dataset_version(table)  # the export changes no data version
    assert ctx.store.read_table(tables.FILTERED_DATASET).equals(table)
    hf = Path(out.metadata["hf_dataset_path"])
    assert hf == Path(out.metadata["jsonl_path"]).parent / "hf"

    loaded = datasets.load_from_disk(str(hf))
    assert isinstance(loaded, datasets.DatasetDict) and list(loaded) == ["train"]
    train = loaded["train"]
    assert train.column_names[:4] == ["messages", "query_id", "teacher", "request_key"]
    assert train.to_polars().select(table.columns).equals(table)
    assert train[0]["messages"][-1] == {"role": "assistant", "content": table["response"][0]}

    card = DatasetCard.load(hf / "README.md")
    assert card.data.license == "other" and card.data.task_categories == ["text-generation"]
    assert card.data.size_categories == ["n<1K"]
    facts = card.data.distill_dag
    assert facts["teachers"] == ["fewshot"] and facts["records"] == table.height == 4
    assert facts["records_per_teacher"] == {"fewshot": 4}
    # One record per training query: q4 is eval, one of q2's samples was cut at
    # max_new_tokens, one of q3's is wrong, and q0 and q1 keep their best sample of two.
    assert facts["removed"] == {k.removeprefix("removed/"): v for k, v in out.metadata.items()
                                if k.startswith("removed/")} == {
        "not_a_training_query": 2, "incorrect": 1, "truncated": 1, "not_best_of_n": 2}
    assert facts["data_version"] == out.data_version
    assert facts["corpus_version"] == query_corpus.corpus_version(
        ctx.store.read_table(tables.QUERIES))
    assert "| best_of_n | teacher_count |" in card.text and "| truncated | 1 |" in card.text
    assert "No licence was declared" in card.text

    # A rerun with a licence re-creates the folder in place: same data, new card, no leftovers.
    again = filtered_dataset.run(StageContext.local(_tiny(license="cc-by-4.0"), tmp_path / "home",
                                                    show_progress=False))
    assert again.data_version == out.data_version and Path(again.metadata["hf_dataset_path"]) == hf
    assert DatasetCard.load(hf / "README.md").data.license == "cc-by-4.0"
    assert datasets.load_from_disk(str(hf))["train"].to_polars().select(table.columns).equals(
        table)
    assert sorted(p.name for p in hf.parent.iterdir()) == ["hf", "train.jsonl", "train.parquet"]


def test_an_empty_filtered_dataset_still_loads(tmp_path):
    empty = pl.DataFrame(schema={"query_id": pl.String, "teacher": pl.String, "messages": pl.List(
        pl.Struct({"role": pl.String, "content": pl.String}))})
    card = dataset_card(teachers=["a"], records_per_teacher={}, removed={"incorrect": 4},
                        filters={}, corpus_version="c", data_version="d")
    hf = filtered_dataset.write_hf_dataset(empty, tmp_path / "hf", card)
    train = datasets.load_from_disk(str(hf))["train"]
    assert train.num_rows == 0 and train.column_names == ["messages", "query_id", "teacher"]


def test_the_licence_setting_is_checked_and_stays_out_of_hashes_at_its_default():
    default = load_project_config(TINY_CONFIG).section_hash("filtering")
    assert FilterConfig(license="mit").fingerprint() == FilterConfig().fingerprint()
    assert _tiny(license="other").section_hash("filtering") == default
    # Declaring one changes the card: filtered_dataset reruns (with the same data version).
    assert _tiny(license="apache-2.0").section_hash("filtering") != default
    with pytest.raises(ConfigError, match=r"filtering\.license"):
        FilterConfig(license="my licence")


# -- the cards on their own ----------------------------------------------------------------------

def test_dataset_card_round_trips(tmp_path):
    card = dataset_card(teachers=["a", "b"], records_per_teacher={"a": 1200, "b": 30},
                        removed={"incorrect": 5}, filters={"per_query": 1},
                        corpus_version="c0ffee", data_version="d00d", license="mit",
                        queries=1100, columns=["messages", "query_id"])
    card.save(tmp_path / "README.md")
    loaded = DatasetCard.load(tmp_path / "README.md")
    assert loaded.data.license == "mit" and loaded.data.size_categories == ["1K<n<10K"]
    assert loaded.data.distill_dag["records"] == 1230
    assert "| a | 1200 |" in loaded.text and "`c0ffee`" in loaded.text
    assert [size_category(n) for n in (0, 999, 1000, 10**9)] == [
        "n<1K", "n<1K", "1K<n<10K", "n>1B"]


def test_model_card_round_trips_with_an_eval_table(tmp_path):
    rows = [{"model": "base", "pass@1": 0.25}, {"model": "distilled", "pass@1": 0.5}]
    card = model_card(base_model="HuggingFaceTB/SmolLM2-135M-Instruct", objective="sft",
                      training_method="LoRA r=16", data_version="abc123",
                      teachers=["fewshot"], eval_table=rows, license="apache-2.0")
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert loaded.data.license == "apache-2.0" and loaded.data.pipeline_tag == "text-generation"
    assert loaded.data.library_name == "transformers"
    assert loaded.data.distill_dag == {
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "objective": "sft",
        "training_method": "LoRA r=16", "data_version": "abc123", "teachers": ["fewshot"]}
    assert "| model | pass@1 |" in loaded.text and "| distilled | 0.5 |" in loaded.text

    # A packaged or local student is no Hub id: it stays out of the YAML base_model.
    local = model_card(base_model="pkg:smollm2-135m-instruct", objective="kd",
                       training_method="full", data_version="abc123", teachers=["a", "b"],
                       eval_table="| metric | value |\n|---|---|\n| gain | +0.6 |")
    local.save(tmp_path / "local.md")
    again = ModelCard.load(tmp_path / "local.md")
    assert again.data.base_model is None and again.data.license == "other"
    assert again.data.distill_dag["base_model"] == "pkg:smollm2-135m-instruct"
    assert "| gain | +0.6 |" in again.text and "No licence was declared" in again.text
