"""Tests for the file loaders: formats, field mapping, GSM8K answers, and row-level quarantine."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from distill_dag.corpus import ConfigError, CorpusConfig, FileSource, load_file
from distill_dag.corpus.loaders import parse_reference_answer

GSM8K_TRAIN = Path("/work/shared/data/gsm8k/train.jsonl")
QA = {"prompt": "question", "reference_answer": "answer"}


def write_jsonl(path: Path, records: list) -> Path:
    lines = [r if isinstance(r, str | bytes) else json.dumps(r) for r in records]
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


def only_quarantine(result) -> dict:
    assert len(result.quarantine) == 1, result.quarantine
    return result.quarantine[0]


def test_jsonl_with_field_mapping(tmp_path):
    path = write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {"question": "What is 2 + 3?", "answer": 5, "uid": "a", "topic": "algebra"},
            {"question": "What is 10 - 4?", "answer": " 6. ", "uid": 7, "part": "test"},
        ],
    )
    src = FileSource(path=str(path), fields={**QA, "id": "uid", "domain": "topic", "split": "part"})
    result = load_file(src)
    assert result.quarantine == [] and result.rows_read == 2
    first, second = result.rows
    assert first == {
        "prompt": "What is 2 + 3?", "reference_answer": "5", "domain": "algebra",
        "source": "qa.jsonl", "source_file": str(path), "source_line": 1, "source_id": "a",
    }  # fmt: skip
    assert second["reference_answer"] == "6"
    assert second["domain"] == "math"  # FileSource.domain default
    assert second["source_id"] == "7" and second["split"] == "eval"  # "test" means eval


def test_csv_with_field_mapping_and_line_numbers(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text(
        'question,answer,level\n"Add 1 and 2, please",3,1\n\n"A multi\nline question",4,2\n'
    )
    result = load_file(FileSource(path=str(path), fields={**QA, "difficulty": "level"}))
    assert result.quarantine == []
    assert [(r["prompt"], r["reference_answer"], r["source_line"], r["difficulty"])
            for r in result.rows] == [
        ("Add 1 and 2, please", "3", 2, 1),  # header is line 1
        ("A multi\nline question", "4", 4, 2),  # blank line 3 skipped, record starts at 4
    ]  # fmt: skip


def test_parquet_with_field_mapping(tmp_path):
    path = tmp_path / "qa.parquet"
    pl.DataFrame(
        {"q": ["What is 6 * 7?", "What is 9 - 9?"], "a": [42.0, 0.0], "id": ["x", "y"]}
    ).write_parquet(path)
    result = load_file(
        FileSource(path=str(path), fields={"prompt": "q", "reference_answer": "a", "id": "id"})
    )
    assert result.quarantine == []
    assert [(r["reference_answer"], r["source_line"], r["source_id"]) for r in result.rows] == [
        ("42", 1, "x"),
        ("0", 2, "y"),
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("She has 5 + 7 = <<5+7=12>>12.\n#### 12", "12"),
        ("Total is 1,234 dollars.\n#### 1,234", "1234"),
        ("#### 3 #### -1,000,000", "-1000000"),  # the last '####' wins
        ("#### 2.5", "2.5"),
    ],
)
def test_gsm8k_answers_parse(raw, expected):
    assert parse_reference_answer(raw, "gsm8k") == (expected, None)


def test_gsm8k_answer_without_marker_is_quarantined(tmp_path):
    path = write_jsonl(
        tmp_path / "g.jsonl",
        [{"question": "Q1?", "answer": "so 4\n#### 4"}, {"question": "Q2?", "answer": "it is 4"}],
    )
    result = load_file(FileSource(path=str(path), fields=QA, answer_format="gsm8k"))
    assert [r["reference_answer"] for r in result.rows] == ["4"]
    q = only_quarantine(result)
    assert (q["line"], q["field"]) == (2, "answer")
    assert q["reason"] == "unparseable answer 'it is 4' (answer_format=gsm8k: no '####')"


@pytest.mark.skipif(not GSM8K_TRAIN.is_file(), reason=f"GSM8K not present at {GSM8K_TRAIN}")
def test_real_gsm8k_first_200_lines(tmp_path):
    # Copy to tmp_path only: the data set never enters the repository.
    head = GSM8K_TRAIN.read_bytes().splitlines(keepends=True)[:200]
    path = tmp_path / "gsm8k_head.jsonl"
    path.write_bytes(b"".join(head))
    result = load_file(FileSource(path=str(path), fields=QA, answer_format="gsm8k"))
    assert result.quarantine == []
    assert len(result.rows) == 200
    assert result.rows[0]["reference_answer"] == "72"
    assert all(r["reference_answer"].lstrip("-").replace(".", "").isdigit() for r in result.rows)


BAD_CASES = [
    # (name, line bytes, expected field, expected reason (substring))
    ("malformed JSON", b'{"question": "Q?" "answer": "1"}', None,
     "malformed JSON: Expecting ',' delimiter at column 19"),
    ("missing prompt", b'{"answer": "1"}', "question",
     "missing field 'question' (mapped to prompt)"),
    ("empty prompt", b'{"question": "   ", "answer": "1"}', "question", "empty prompt"),
    ("non-UTF-8", b'{"question": "caf\xe9?", "answer": "1"}', None,
     "invalid UTF-8 bytes at byte offset 17"),
    ("empty answer", b'{"question": "Q?", "answer": ""}', "answer",
     "unparseable answer '' (answer_format=plain: empty)"),
    ("numeric prompt", b'{"question": 42, "answer": "1"}', "question",
     "non-text prompt: field 'question' is int (42)"),
    ("list prompt", b'{"question": ["a", "b"], "answer": "1"}', "question",
     "non-text prompt: field 'question' is list"),
    ("not an object", b'["Q?", "1"]', None, "expected a JSON object, got list"),
    ("unknown split", b'{"question": "Q?", "answer": "1", "split": "holdout"}', "split",
     "unknown split 'holdout'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "line", "field", "reason"), BAD_CASES, ids=[c[0] for c in BAD_CASES]
)
def test_bad_jsonl_line_is_quarantined_and_good_rows_survive(tmp_path, name, line, field, reason):
    good = {"question": "What is 1 + 1?", "answer": "2"}
    path = write_jsonl(tmp_path / "mixed.jsonl", [good, line, {**good, "question": "And 2 + 2?"}])
    result = load_file(FileSource(path=str(path), fields={**QA, "split": "split"}))
    assert [r["source_line"] for r in result.rows] == [1, 3]
    assert result.rows_read == 3
    q = only_quarantine(result)
    assert q["source_file"] == str(path)
    assert q["line"] == 2
    assert q["field"] == field
    assert reason in q["reason"]
    assert q["raw"]


def test_duplicate_ids_within_a_file(tmp_path):
    path = write_jsonl(
        tmp_path / "ids.jsonl",
        [{"id": "x", "prompt": "P1?", "reference_answer": "1"},
         {"id": "y", "prompt": "P2?", "reference_answer": "2"},
         {"id": "x", "prompt": "P3?", "reference_answer": "3"}],
    )  # fmt: skip
    result = load_file(FileSource(path=str(path), fields={"id": "id"}))
    assert [r["source_id"] for r in result.rows] == ["x", "y"]
    q = only_quarantine(result)
    assert (q["line"], q["field"]) == (3, "id")
    assert q["reason"] == "duplicate id 'x' (first seen at line 1)"


def test_raw_is_truncated(tmp_path):
    path = write_jsonl(tmp_path / "long.jsonl", ['{"prompt": "' + "x" * 2000])
    assert len(only_quarantine(load_file(FileSource(path=str(path))))["raw"]) == 500


def test_csv_bad_bytes_and_ragged_rows(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(
        b"question,answer\nGood one?,1\nBad \xff\xfe bytes?,2\nToo,many,cells\n,3\nLast?,\n"
        b"Fine too?,5\n"
    )
    result = load_file(FileSource(path=str(path), fields=QA))
    assert [(r["prompt"], r["source_line"]) for r in result.rows] == [
        ("Good one?", 2), ("Fine too?", 7),
    ]  # fmt: skip
    got = [(q["line"], q["field"], q["reason"]) for q in result.quarantine]
    assert got == [
        (3, None, "invalid UTF-8 bytes at byte offset 4"),
        (4, None, "expected 2 columns (as in the header), got 3"),
        (5, "question", "empty prompt"),
        (6, "answer", "unparseable answer '' (answer_format=plain: empty)"),
    ]
    assert result.rows_read == 6


def test_parquet_row_checks(tmp_path):
    path = tmp_path / "rows.parquet"
    pl.DataFrame(
        {"prompt": ["ok?", "  ", None], "reference_answer": ["1", "2", "3"]}
    ).write_parquet(path)
    result = load_file(FileSource(path=str(path)))
    assert [r["source_line"] for r in result.rows] == [1]
    assert [(q["line"], q["reason"]) for q in result.quarantine] == [
        (2, "empty prompt"),
        (3, "null prompt in field 'prompt'"),
    ]


def test_missing_column_quarantines_rows_not_crash(tmp_path):
    path = tmp_path / "cols.parquet"
    pl.DataFrame({"text": ["a?"], "reference_answer": ["1"]}).write_parquet(path)
    q = only_quarantine(load_file(FileSource(path=str(path))))
    assert q["reason"] == "missing field 'prompt' (mapped to prompt)"


def test_unreadable_parquet_is_one_record(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet")
    q = only_quarantine(load_file(FileSource(path=str(path))))
    assert q["line"] is None and q["reason"].startswith("unreadable Parquet file")


def test_missing_file_raises_naming_path(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        load_file(FileSource(path=str(path)))


def test_file_source_validation():
    with pytest.raises(ValueError, match=r"FileSource\.format.*\.txt"):
        FileSource(path="data.txt")
    assert FileSource(path="data.txt", format="csv").resolved_format == "csv"
    with pytest.raises(ValueError, match=r"FileSource\.answer_format"):
        FileSource(path="a.jsonl", answer_format="boxed")
    with pytest.raises(ValueError, match=r"FileSource\.split"):
        FileSource(path="a.jsonl", split="test")
    with pytest.raises(ValueError, match=r"FileSource\.encoding"):
        FileSource(path="a.jsonl", encoding="utf-16")
    with pytest.raises(ValueError, match="unknown key 'anwser'"):
        FileSource(path="a.jsonl", fields={"anwser": "a"})
    assert FileSource(path="a.jsonl", fields=QA).fields == {
        **QA,
        "id": None,
        "domain": None,
        "split": None,
        "difficulty": None,
    }


def test_corpus_config_from_dict_names_paths():
    cfg = CorpusConfig.from_dict(
        {"files": [{"path": "a.jsonl", "fields": QA}], "generator": {"n": 5, "levels": [1, 3]}}
    )
    assert isinstance(cfg.files[0], FileSource) and cfg.generator.levels == (1, 3)
    with pytest.raises(ConfigError, match=r"^corpus: unknown key 'eval_frac'"):
        CorpusConfig.from_dict({"eval_frac": 0.1})
    with pytest.raises(ConfigError, match=r"^run\.corpus\.files\[1\]: unknown key 'colums'"):
        CorpusConfig.from_dict(
            {"files": [{"path": "a.jsonl"}, {"path": "b.csv", "colums": {}}]}, where="run.corpus"
        )
    with pytest.raises(ConfigError, match=r"^corpus\.files\[0\]\.format: "):
        CorpusConfig.from_dict({"files": [{"path": "a.jsonl", "format": "xml"}]})
    with pytest.raises(ConfigError, match=r"^corpus\.files\[0\]: missing required key 'path'"):
        CorpusConfig.from_dict({"files": [{"format": "csv"}]})
    with pytest.raises(ConfigError, match=r"^corpus\.generator\.levels: "):
        CorpusConfig.from_dict({"generator": {"levels": [5]}})
    with pytest.raises(ValueError, match=r"CorpusConfig\.eval_fraction"):
        CorpusConfig(eval_fraction=1.0)
    with pytest.raises(ValueError, match=r"CorpusConfig\.decontam_ngram"):
        CorpusConfig(decontam_ngram=0)
