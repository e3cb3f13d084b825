"""Tests for curation: ids, normalization, dedup/conflicts, eval split, decontamination, errors."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from distill_dag.corpus import (
    QUARANTINE_SCHEMA,
    QUERY_SCHEMA,
    CorpusConfig,
    EmptyCorpusError,
    FileSource,
    GeneratorConfig,
    build_corpus,
    dedup_key,
    make_query_id,
    normalize_text,
)

APPLES = "Ana has 10 apples. Ana buys 7 more apples. How many apples does Ana have now?"
# Computed once from the definition (sha256 of dedup_key, 16 hex) and pasted: a change to the
# hashing or to dedup_key would silently re-key every stored teacher output.
APPLES_ID = "d421f17d9d0430bb"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def qa(prompt: str, answer: str = "1", **extra) -> dict:
    return {"prompt": prompt, "reference_answer": answer, **extra}


def files_only(*sources: FileSource, **kwargs) -> CorpusConfig:
    """Files only, without the embedding steps: the rows here share one dummy answer, so their
    templated prompts would be paraphrases (tested in test_corpus_near_dup.py)."""
    kwargs = {"embed_decontam_threshold": None, "embed_dedup_threshold": None, **kwargs}
    return CorpusConfig(files=list(sources), **kwargs)


def test_query_id_is_stable_and_normalization_invariant():
    assert make_query_id(APPLES) == APPLES_ID
    variants = [
        "  ana HAS 10 apples.\nAna buys 7 more apples.  How many apples does Ana have now",
        "Ana has 10 apples. Ana buys 7 more apples. How many apples does Ana have now?!",
        "Ａｎａ has 10 apples. Ana buys 7 more apples. How many apples does Ana have now?",  # NFKC
    ]
    assert {make_query_id(v) for v in variants} == {APPLES_ID}
    assert make_query_id(APPLES.replace("10", "11")) != APPLES_ID


def test_normalize_and_dedup_key():
    assert normalize_text("  a\u00a0 b\n\tc  ") == "a b c"
    assert normalize_text("ﬁ") == "fi"
    assert dedup_key("  «What is 2+2?»  ") == "what is 2+2"
    assert dedup_key("(x+1)") == "x+1"


def test_schema_sorting_and_stats_add_up(tmp_path):
    path = write_jsonl(
        tmp_path / "a.jsonl", [qa(f"What is {i} plus {i}?", str(2 * i)) for i in range(40)]
    )
    result = build_corpus(
        files_only(FileSource(path=str(path)), generator=GeneratorConfig(n=60, seed=1))
    )
    q = result.queries
    assert dict(q.schema) == QUERY_SCHEMA
    assert dict(result.quarantine.schema) == QUARANTINE_SCHEMA
    assert q.equals(q.sort(["split", "query_id"]))
    assert set(q["split"]) == {"train", "eval"}
    assert q["query_id"].n_unique() == q.height == 100
    s = result.stats
    assert s["rows_read"] == 100 and s["train"] + s["eval"] == 100
    assert s["rows_read"] == s["train"] + s["eval"] + s["rows_quarantined"]
    gen = q.filter(pl.col("source") == "generator")
    assert gen["difficulty"].null_count() == 0 and gen["source_file"].null_count() == gen.height
    files = q.filter(pl.col("source") == "a.jsonl")
    assert files["difficulty"].null_count() == files.height
    assert files["source_line"].min() == 1


def test_default_generator_when_no_files():
    result = build_corpus(CorpusConfig())
    assert result.stats["rows_read"] == GeneratorConfig().n
    assert set(result.queries["domain"]) == {"arithmetic"}


def test_exact_dedup_keeps_first_and_conflicts_drop_all(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            qa("What is 3 + 4?", "7"),
            qa("what is 3 + 4", "7.0"),  # same query, equivalent answer: a duplicate
            qa("What is 5 + 5?", "10"),
            qa("  WHAT IS 5 + 5? ", "11"),  # same query, different answer: a conflict
            qa("What is 9 + 9?", "18"),
        ],
    )
    result = build_corpus(files_only(FileSource(path=str(path)), eval_fraction=0.0))
    assert sorted(result.queries["prompt"]) == ["What is 3 + 4?", "What is 9 + 9?"]
    assert result.queries.filter(pl.col("prompt") == "What is 3 + 4?")["source_line"][0] == 1
    rows = result.quarantine.sort("line").to_dicts()
    assert [(r["line"], r["stage"]) for r in rows] == [(2, "dedup"), (3, "dedup"), (4, "dedup")]
    assert rows[0]["reason"] == f"duplicate of query {make_query_id('What is 3 + 4?')} ({path}:1)"
    assert rows[1]["reason"].startswith("conflicting answers for query ")
    assert "'10'" in rows[1]["reason"] and "'11'" in rows[1]["reason"]
    assert result.stats["duplicates_removed"] == 1 and result.stats["conflicts"] == 2


def test_clean_stage_quarantines_long_prompts(tmp_path):
    path = write_jsonl(tmp_path / "l.jsonl", [qa("short question?"), qa("y" * 50)])
    result = build_corpus(files_only(FileSource(path=str(path)), max_prompt_chars=40))
    (row,) = result.quarantine.to_dicts()
    assert (row["line"], row["field"], row["stage"]) == (2, "prompt", "clean")
    assert row["reason"] == "prompt too long: 50 chars > max_prompt_chars=40"


def test_hash_split_is_stable_when_rows_are_added(tmp_path):
    small = [qa(f"Question number {i} about apples?", str(i)) for i in range(200)]
    extra = [qa(f"Another question {i} about pears?", str(i)) for i in range(300)]
    a = build_corpus(files_only(FileSource(path=str(write_jsonl(tmp_path / "a.jsonl", small)))))
    b = build_corpus(
        files_only(FileSource(path=str(write_jsonl(tmp_path / "b.jsonl", extra + small))))
    )
    split_a = dict(zip(a.queries["query_id"], a.queries["split"], strict=True))
    split_b = dict(zip(b.queries["query_id"], b.queries["split"], strict=True))
    assert all(split_b[qid] == split for qid, split in split_a.items())
    assert 0.1 < a.stats["eval"] / 200 < 0.3  # roughly eval_fraction=0.2


def test_eval_source_defines_eval_and_wins_duplicates(tmp_path):
    train = write_jsonl(
        tmp_path / "train.jsonl", [qa("Shared prompt?", "1"), qa("Only train?", "2")]
    )
    test = write_jsonl(tmp_path / "test.jsonl", [qa("Shared prompt?", "1"), qa("Only eval?", "3")])
    result = build_corpus(
        files_only(FileSource(path=str(train)), FileSource(path=str(test), split="eval"))
    )
    by_split = {
        s: sorted(result.queries.filter(pl.col("split") == s)["prompt"]) for s in ("train", "eval")
    }
    assert by_split == {"train": ["Only train?"], "eval": ["Only eval?", "Shared prompt?"]}
    (dup,) = result.quarantine.to_dicts()
    assert dup["source_file"] == str(train) and dup["stage"] == "dedup"


def test_max_eval_caps_explicit_eval_without_leaking(tmp_path):
    train = write_jsonl(tmp_path / "tr.jsonl", [qa(f"Train question {i}?") for i in range(5)])
    test = write_jsonl(tmp_path / "te.jsonl", [qa(f"Eval question {i}?") for i in range(10)])
    result = build_corpus(
        files_only(
            FileSource(path=str(train)), FileSource(path=str(test), split="eval"), max_eval=4
        )
    )
    assert result.stats["eval"] == 4 and result.stats["train"] == 5
    assert result.stats["eval_held_out"] == 6
    assert set(result.queries.filter(pl.col("split") == "train")["source"]) == {"tr.jsonl"}


EVAL_Q = (
    "Ana has 10 apples. Ana buys 7 more apples. Then Ana gives 4 apples to Ben. "
    "How many apples does Ana have now?"
)


def test_decontamination_catches_shared_13gram_not_shared_template(tmp_path):
    # Same opening, different ending: still shares a 13-gram with the eval query.
    leaked = (
        "Ana has 10 apples. Ana buys 7 more apples. Then Ana gives 4 apples to Ben. "
        "What fraction of the apples did Ben get?"
    )
    # Same template, other numbers: the longest number-free run is 10 words, below n=13.
    same_template = EVAL_Q.replace("10", "12").replace("7", "9").replace("4", "5")
    unrelated = "What is the sum of the first 100 positive integers?"
    train = write_jsonl(tmp_path / "train.jsonl", [qa(leaked), qa(same_template), qa(unrelated)])
    test = write_jsonl(tmp_path / "test.jsonl", [qa(EVAL_Q)])
    result = build_corpus(
        files_only(FileSource(path=str(train)), FileSource(path=str(test), split="eval"))
    )
    assert sorted(result.queries.filter(pl.col("split") == "train")["prompt"]) == sorted(
        [same_template, unrelated]
    )
    (row,) = result.quarantine.to_dicts()
    assert (row["line"], row["stage"], row["field"]) == (1, "decontam", "prompt")
    assert row["reason"].startswith("eval contamination: shares 13-gram '")
    assert row["reason"].endswith(f"' with eval query {make_query_id(EVAL_Q)}")
    assert result.stats["contaminated_removed"] == 1


def test_decontamination_short_texts_compare_whole(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [qa("What is 2 + 2 ?"), qa("What is 2 + 3?")])
    test = write_jsonl(tmp_path / "e.jsonl", [qa("what is 2+2")])
    result = build_corpus(
        files_only(FileSource(path=str(train)), FileSource(path=str(test), split="eval"))
    )
    assert list(result.queries.filter(pl.col("split") == "train")["prompt"]) == ["What is 2 + 3?"]
    (row,) = result.quarantine.to_dicts()
    assert "shares whole text 'what is 2 2'" in row["reason"]


def test_generated_corpus_is_decontaminated_against_its_eval_split():
    result = build_corpus(CorpusConfig(generator=GeneratorConfig(n=400, seed=0, levels=(1, 2, 3))))
    s = result.stats
    assert s["train"] > 250 and s["eval"] > 40
    assert s["rows_read"] == s["train"] + s["eval"] + s["rows_quarantined"]


def test_all_bad_file_raises_empty_corpus_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "Q?"}\n{"question": "R?"}\nnot json\n')
    with pytest.raises(EmptyCorpusError) as info:
        build_corpus(files_only(FileSource(path=str(path))))
    msg = str(info.value)
    assert "read 3 rows, 3 quarantined" in msg
    assert "2 x missing field 'prompt' (mapped to prompt)" in msg
    assert "1 x malformed JSON" in msg
    assert isinstance(info.value, ValueError)


def test_only_eval_rows_is_empty_corpus(tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", [qa("Only eval here?")])
    with pytest.raises(EmptyCorpusError, match="1 in eval"):
        build_corpus(files_only(FileSource(path=str(path), split="eval")))
