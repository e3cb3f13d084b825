"""Quality filters (charset, scripts, language, gradeable answers) and the query_corpus checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from distill_dag.configbase import ConfigError
from distill_dag.corpus import CorpusConfig, build_corpus, make_query_id
from distill_dag.corpus.checks import (
    duplicate_rate,
    eval_leaks,
    removal_examples,
    removal_shares,
)
from distill_dag.corpus.quality import (
    broken_characters,
    disallowed_script,
    mixed_script_word,
    script_of,
    ungradeable_answer,
)
from distill_dag.corpus.semantic import QueryVectors
from tests.test_corpus_curate import write_jsonl

APPLES = "Tom has 5 apples and buys 7 more. How many apples does Tom have now?"
PEARS = "Ann has 3 pears and eats 1. How many pears are left?"


def _corpus(tmp_path: Path, rows: list[dict], **settings) -> CorpusConfig:
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    evals = write_jsonl(tmp_path / "eval.jsonl",
                        [{"prompt": "What is 2 + 2?", "reference_answer": "4"}])
    return CorpusConfig.from_dict({
        "files": [{"path": str(path)}, {"path": str(evals), "split": "eval"}],
        "embed_decontam_threshold": None, "embed_dedup_threshold": None, **settings})


def _quarantined(result, prompt: str) -> dict:
    (row,) = [r for r in result.quarantine.iter_rows(named=True) if r["raw"] == prompt]
    return row


# -- the single-query checks ----------------------------------------------------------------------

def test_script_of_names_scripts_and_skips_what_has_none():
    assert [script_of(c) for c in "aЯπ漢か한5%𝑥"] == [
        "Latin", "Cyrillic", "Greek", "Han", "Han", "Hangul", None, None, None]


def test_a_homoglyph_word_is_mixed_script_math_greek_and_cjk_are_not():
    assert "'Tоm': Cyrillic, Latin" in mixed_script_word("Tоm has 5 apples.")  # Cyrillic о
    assert "'Tοm': Greek, Latin" in mixed_script_word("Tοm has 5 apples.")  # Greek omicron
    assert mixed_script_word("A circle of radius r has area πr² and 2πr around it.") is None
    assert mixed_script_word("りんごを5個食べました。コーヒーも。") is None  # kanji, kana, ー
    assert mixed_script_word("Сколько яблок у Тома?") is None  # all Cyrillic is one script
    # Latin variables written against CJK text are normal math writing.
    for text in ("在△ABC中，AB=3", "函数f(x)=2x+1", "점A에서 점B까지", "Tシャツを3枚"):
        assert mixed_script_word(text) is None, text


def test_allowed_scripts():
    assert disallowed_script("Tom has 5 apples. 他吃了2个。", ["Latin"]) == (
        "letters in Han script (corpus.scripts allows Latin)")
    assert disallowed_script("Area is πr².", ["Latin", "Greek"]) is None
    assert disallowed_script("5 + 7 = ?", ["Latin"]) is None
    assert disallowed_script("コーヒーを3杯飲みました。", ["Han"]) is None  # Han covers kana


def test_broken_characters_name_what_and_where():
    assert broken_characters("CafÃ© sells 5 cakes") == (
        "broken characters: '\\xc3\\xa9' at char 3 (a decoding error or binary data)")
    assert "'\\x00' at char 3" in broken_characters("Tom\x00 has")
    assert "'\\ufffd'" in broken_characters("Tom has \ufffd apples")
    assert "'\\x85'" in broken_characters("Tom has\x85 apples")  # C1 control
    for mojibake in ("Ã– bought 5", "It is 5Â°C", "Tomâ€™s 5 apples"):
        assert broken_characters(mojibake) is not None, mojibake
    assert broken_characters("Café sells 5 cakes.\n\tHow many?") is None


def test_answers_the_verifier_cannot_grade():
    for good in ("18", "1,234", "-3.5", "3/4", "\\frac{3}{4}", "x^2+1", "B"):
        assert ungradeable_answer(good) is None, good
    reason = ungradeable_answer("first line\nsecond line")
    assert "cannot be graded" in reason and "as 'first line'" in reason


# -- in build_corpus: quarantined with file, line, field and stage --------------------------------

def test_quality_filters_quarantine_with_file_line_field(tmp_path):
    rows = [{"prompt": APPLES, "reference_answer": "12"},
            {"prompt": "Tоm has 5 apples. How many?", "reference_answer": "5"},
            {"prompt": "CafÃ© sells 5 cakes. How many?", "reference_answer": "5"},
            {"prompt": PEARS, "reference_answer": "first\nsecond"},
            {"prompt": "Tom has 5 apples. 他吃了2个。How many are left?", "reference_answer": "3"}]
    result = build_corpus(_corpus(tmp_path, rows, scripts=["Latin"]))
    assert result.queries.filter(pl.col("split") == "train")["prompt"].to_list() == [APPLES]
    stats = result.stats
    assert (stats["mixed_script_removed"], stats["broken_chars_removed"],
            stats["ungradeable_answer_removed"], stats["script_removed"]) == (1, 1, 1, 1)
    mixed = _quarantined(result, "Tоm has 5 apples. How many?")
    assert mixed["stage"] == "quality" and mixed["field"] == "prompt" and mixed["line"] == 2
    assert mixed["source_file"].endswith("train.jsonl")
    answer = _quarantined(result, PEARS)
    assert answer["field"] == "reference_answer" and "cannot be graded" in answer["reason"]
    assert result.step_rows["clean"] == (6, 2)

    relaxed = build_corpus(_corpus(tmp_path, rows, mixed_script_check=False, charset_check=False,
                                   answer_check="present"))
    assert relaxed.stats["train"] == 5


def test_language_filter(tmp_path):
    rows = [{"prompt": APPLES, "reference_answer": "12"},
            {"prompt": "Tom hat 5 Äpfel und kauft 7 weitere. Wie viele Äpfel hat Tom jetzt?",
             "reference_answer": "12"}]
    result = build_corpus(_corpus(tmp_path, rows, languages=["EN"]))
    assert result.stats["language_removed"] == 1
    assert "language 'de' (corpus.languages allows en)" in result.quarantine["reason"][0]


def test_short_prompts_are_not_judged_by_language(tmp_path):
    rows = [{"prompt": APPLES, "reference_answer": "12"},
            {"prompt": "Compute 3/4 + 1/8.", "reference_answer": "7/8"}]  # py3langid: Malay
    assert build_corpus(_corpus(tmp_path, rows, languages=["en"])).stats["train"] == 2


def test_unknown_script_or_language_names_fail_naming_the_field(tmp_path):
    rows = [{"prompt": APPLES, "reference_answer": "12"}]
    with pytest.raises(ConfigError, match=r"corpus.scripts: unknown script name\(s\) \['Latn'\]"):
        build_corpus(_corpus(tmp_path, rows, scripts=["Latn"]))
    with pytest.raises(ConfigError, match=r"corpus.languages: unknown language code\(s\)"):
        build_corpus(_corpus(tmp_path, rows, languages=["english"]))


def test_an_eval_row_failing_a_quality_filter_is_kept_and_reported(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": APPLES, "reference_answer": "12"}])
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "Tоm has 3 pears. How many?",
                                             "reference_answer": "3"}])
    result = build_corpus(CorpusConfig.from_dict({
        "files": [{"path": str(path)}, {"path": str(evals), "split": "eval"}],
        "embed_decontam_threshold": None, "embed_dedup_threshold": None}))
    assert result.stats["eval"] == 1 and result.stats["eval_quality_flagged"] == 1
    assert any("eval.jsonl:1 fails a quality filter (kept): mixed scripts" in w
               for w in result.warnings)


@pytest.mark.parametrize(("key", "value"), [("scripts", []), ("languages", "en"),
                                            ("answer_check", "maybe"), ("charset_check", 1),
                                            ("max_duplicate_rate", 2), ("warn_removed_share", -1)])
def test_bad_quality_settings_name_the_field(key, value):
    with pytest.raises(ConfigError, match=key):
        CorpusConfig.from_dict({key: value})


def test_removed_duplicates_and_contamination_name_the_matched_query(tmp_path):
    eval_text = ("Sam walks 3 miles every day of the week and rests on Sunday. "
                 "How many miles does he walk in a week?")
    rows = [{"prompt": APPLES, "reference_answer": "12"},
            {"prompt": APPLES + "  ", "reference_answer": "12"},
            {"prompt": eval_text + " Explain.", "reference_answer": "18"}]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": eval_text, "reference_answer": "18"}])
    result = build_corpus(CorpusConfig.from_dict({
        "files": [{"path": str(path)}, {"path": str(evals), "split": "eval"}],
        "embed_decontam_threshold": None, "embed_dedup_threshold": None}))
    by_stage = {r["stage"]: r for r in result.quarantine.iter_rows(named=True)}
    assert by_stage["dedup"]["matched_query_id"] == make_query_id(APPLES)
    assert by_stage["decontam"]["matched_query_id"] == make_query_id(eval_text)
    assert by_stage["dedup"]["similarity"] == 1.0
    assert by_stage["decontam"]["similarity"] is None  # an n-gram match has no score


# -- the checks on the final table ----------------------------------------------------------------

def _table(rows: list[tuple[str, str, str]]) -> pl.DataFrame:
    """(split, prompt, answer) rows as a query table."""
    return pl.DataFrame({"query_id": [make_query_id(p) for _, p, _ in rows],
                         "split": [s for s, _, _ in rows], "prompt": [p for _, p, _ in rows],
                         "reference_answer": [a for _, _, a in rows]})


def test_eval_leaks_finds_same_text_ngrams_and_paraphrases():
    long_eval = "one two three four five six seven eight nine ten eleven twelve thirteen"
    table = _table([("eval", APPLES, "12"), ("eval", long_eval, "1"), ("eval", PEARS, "2"),
                    ("train", APPLES + "!", "12"),  # same text once normalized
                    ("train", "Now " + long_eval + " and more", "1"),  # shares the 13-gram
                    ("train", "Ann had three pears; she ate one. Pears left?", "2"),
                    ("train", "Ann had three pears; she ate two. Pears left?", "1"),
                    ("train", "Something else entirely, 9 + 9?", "18")])
    leaks = eval_leaks(table, 13)
    assert [(k.query_id, k.how) for k in leaks] == [
        (make_query_id(APPLES + "!"), "same text"),
        (make_query_id("Now " + long_eval + " and more"), f"13-gram '{long_eval}'")]
    # Embeddings: the paraphrase points the same way as PEARS; the sibling (other answer) too,
    # but a different answer makes it another problem.
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(table.height, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[[5, 6]] = vectors[2]  # both pear rewordings point where PEARS does
    pears = make_query_id(PEARS)
    vectors = QueryVectors(table["query_id"].to_list(), vectors)
    leaks = eval_leaks(table, 13, vectors, 0.9)
    assert len(leaks) == 3
    assert leaks[-1].eval_query_id == pears and leaks[-1].how == "embedding cosine 1.000"
    clean = table.filter(pl.col("split") == "eval")
    assert eval_leaks(clean, 13, vectors, 0.9) == []


def test_duplicate_rate_counts_training_queries_with_a_duplicate():
    table = _table([("train", APPLES, "12"), ("train", APPLES.upper(), "12"),
                    ("train", PEARS, "2"), ("train", "Ann has 3 pears, eats 1: how many?", "2"),
                    ("train", "9 + 9?", "18"), ("eval", PEARS, "2")])
    exact = duplicate_rate(table)
    assert (exact.rate, exact.duplicates, exact.checked) == (0.4, 2, 5)
    # The reworded pears query is a duplicate only to the embeddings (same direction, same
    # answer); "9 + 9?" points the same way too, but its answer makes it another problem.
    ids = table.filter(pl.col("split") == "train")["query_id"].to_list()
    vectors = np.eye(4, dtype=np.float32)[[0, 0, 1, 1, 1]]
    found = duplicate_rate(table, QueryVectors(ids, vectors), 0.95)
    assert (found.rate, found.duplicates, found.checked) == (0.8, 4, 5)
    assert found.how == "embeddings (sample of 5)"
    sampled = duplicate_rate(table, QueryVectors(ids, vectors), 0.95, sample=2)
    assert sampled.checked == 2 and sampled.how == "embeddings (sample of 2)"
    assert duplicate_rate(table.filter(pl.col("split") == "eval")).rate == 0.0


def test_removal_shares_and_examples():
    assert removal_shares({"clean": (10, 4), "dedup": (4, 4), "empty": (0, 0)}) == {
        "clean": 0.6, "dedup": 0.0}
    quarantine = pl.DataFrame({"stage": ["clean", "dedup", "clean", "clean", "clean"],
                               "source_file": ["a.jsonl", None, "a.jsonl", "a.jsonl", "b.jsonl"],
                               "line": [1, 7, 2, 3, 4], "reason": list("vwxyz"),
                               "raw": ["q" * 300, "r", "s", "t", "u"]})
    examples = removal_examples(quarantine, per_stage=2)
    assert examples.to_dicts() == [
        {"stage": "clean", "where": "a.jsonl:1", "reason": "v", "query": "q" * 120},
        {"stage": "clean", "where": "a.jsonl:2", "reason": "x", "query": "s"},
        {"stage": "dedup", "where": "generator:7", "reason": "w", "query": "r"}]
