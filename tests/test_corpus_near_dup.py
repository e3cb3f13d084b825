"""Near-duplicate removal (MinHash-LSH): reworded copies go, different problems stay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill_dag.corpus import CorpusConfig, build_corpus
from distill_dag.corpus.near_dup import find_near_duplicates

BASE = ("Tom has 5 red apples in his basket. He buys 7 more red apples at the market on "
        "Monday morning. How many red apples does Tom have in his basket now?")
REWORDED = ("Tom has 5 red apples in his basket. He buys 7 more red apples at the market on "
            "Monday morning. How many red apples does Tom have in the basket now?")
OTHER = ("A baker makes 6 trays of cookies every morning and each tray holds exactly 5 cookies "
         "for the shop. How many cookies does the baker make every morning?")
GSM8K = Path(__file__).parents[2] / "shared" / "data" / "gsm8k"


def test_a_light_edit_is_a_near_duplicate_of_the_first_copy():
    found = find_near_duplicates([BASE, OTHER, REWORDED], ["12", "30", "12"])
    assert [(d.index, d.of) for d in found] == [(2, 0)]
    assert 0.8 <= found[0].similarity < 1.0


def test_same_words_with_a_different_answer_are_different_problems():
    """'5 apples' vs '6 apples': nearly the same words, but another problem (another answer)."""
    changed = BASE.replace("5 red", "6 red")
    assert find_near_duplicates([BASE, changed], ["12", "13"]) == []
    assert len(find_near_duplicates([BASE, changed], ["12", "12"], threshold=0.7)) == 1


def test_protected_texts_stay_and_still_match_later_ones():
    found = find_near_duplicates([BASE, REWORDED, BASE + " "], ["12"] * 3,
                                 protected=[True, True, False])
    assert [(d.index, d.of) for d in found] == [(2, 0)]


def test_threshold_decides():
    assert find_near_duplicates([BASE, REWORDED], ["12", "12"], threshold=0.9) == []


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_build_corpus_sets_near_duplicates_aside_naming_the_match(tmp_path):
    train = _write(tmp_path / "train.jsonl", [
        {"prompt": BASE, "reference_answer": "12"},
        {"prompt": OTHER, "reference_answer": "30"},
        {"prompt": REWORDED, "reference_answer": "12"},
    ])
    evals = _write(tmp_path / "eval.jsonl", [
        {"prompt": OTHER + " Show your work.", "reference_answer": "30"}])
    cfg = CorpusConfig.from_dict({"files": [{"path": str(train)},
                                            {"path": str(evals), "split": "eval"}],
                                  "decontam_ngram": 30,  # leave these cases to MinHash
                                  "embed_decontam_threshold": None,
                                  "embed_dedup_threshold": None})
    result = build_corpus(cfg)
    assert result.stats["near_duplicates_removed"] == 1
    assert result.stats["near_dup_contaminated_removed"] == 1
    assert result.stats["train"] == 1
    reasons = {row["raw"]: (row["stage"], row["reason"]) for row in
               result.quarantine.iter_rows(named=True)}
    stage, reason = reasons[REWORDED]
    assert stage == "near_dedup" and "train.jsonl:1" in reason and "Jaccard" in reason
    stage, reason = reasons[OTHER]
    assert stage == "decontam" and "near-duplicate of eval query" in reason
    assert "eval.jsonl:1" in reason

    off = CorpusConfig.from_dict({"files": [{"path": str(train)},
                                            {"path": str(evals), "split": "eval"}],
                                  "decontam_ngram": 30, "near_dup_threshold": None,
                                  "embed_decontam_threshold": None,
                                  "embed_dedup_threshold": None})
    assert build_corpus(off).stats["train"] == 3


@pytest.mark.parametrize(("key", "value"), [("near_dup_threshold", 0.99),
                                            ("near_dup_threshold", "high"),
                                            ("near_dup_shingle_words", 0),
                                            ("near_dup_num_perm", 4)])
def test_bad_near_dup_settings_name_the_field(key, value):
    from distill_dag.configbase import ConfigError

    with pytest.raises(ConfigError, match=key):
        CorpusConfig.from_dict({key: value})


@pytest.mark.skipif(not (GSM8K / "train.jsonl").exists(),
                    reason=f"GSM8K is not at {GSM8K} (shared test data; not in the repo)")
def test_gsm8k_train_against_its_test_split():
    fields = {"prompt": "question", "reference_answer": "answer"}
    cfg = CorpusConfig.from_dict({"files": [
        {"path": str(GSM8K / "train.jsonl"), "fields": fields, "answer_format": "gsm8k"},
        {"path": str(GSM8K / "test_dev.jsonl"), "fields": fields, "answer_format": "gsm8k",
         "split": "eval"}]})
    result = build_corpus(cfg)
    stats = result.stats
    assert stats["rows_read"] == 8473 and stats["eval"] == 1000
    assert stats["near_duplicates_removed"] >= 1 and stats["contaminated_removed"] >= 1
    # Every removal is counted by exactly one statistic (all of them training rows here).
    assert stats["train"] == 7473 - stats["conflicts"] - sum(
        v for k, v in stats.items() if k.endswith("_removed"))
    near = result.quarantine.filter(result.quarantine["stage"] == "near_dedup")
    assert all("estimated Jaccard" in reason for reason in near["reason"])
    assert near["matched_query_id"].is_not_null().all()
    # The checks query_corpus runs hold on the result.
    from distill_dag.corpus.checks import duplicate_rate, eval_leaks

    assert eval_leaks(result.queries, cfg.decontam_ngram, result.embeddings,
                      cfg.embed_decontam_threshold) == []
    assert duplicate_rate(result.queries, result.embeddings,
                          cfg.embed_dedup_threshold).duplicates == 0


# -- embedding similarity (the packaged all-MiniLM-L6-v2) ------------------------------------------

EVAL_APPLES = "Tom has 5 apples and buys 7 more. How many apples does Tom have now?"
REORDERED = "After buying 7 more apples, how many apples does Tom have if he had 5 at first?"
RESTATED = "Tom has 5 apples. He buys 7 more apples. How many apples does Tom have now?"
SIBLING = "Tom has 6 apples and buys 7 more. How many apples does Tom have now?"


def _semantic_only(tmp_path: Path, train_rows: list[dict], eval_rows: list[dict]):
    train = _write(tmp_path / "train.jsonl", train_rows)
    evals = _write(tmp_path / "eval.jsonl", eval_rows)
    return build_corpus(CorpusConfig.from_dict({
        "files": [{"path": str(train)}, {"path": str(evals), "split": "eval"}],
        "near_dup_threshold": None, "decontam_ngram": 30}))  # leave these cases to embeddings


def test_a_paraphrased_eval_question_is_contamination_a_sibling_problem_is_not(tmp_path):
    """The reordered question shares no 3-word shingle run worth a MinHash match, but means the
    same problem; the sibling embeds just as close, but its answer (13) says it is another."""
    result = _semantic_only(tmp_path, [
        {"prompt": REORDERED, "reference_answer": "12"},
        {"prompt": SIBLING, "reference_answer": "13"}],
        [{"prompt": EVAL_APPLES, "reference_answer": "12"}])
    assert result.stats["semantic_contaminated_removed"] == 1
    assert result.queries.filter(result.queries["split"] == "train")["prompt"].to_list() == [
        SIBLING]
    (row,) = result.quarantine.to_dicts()
    assert row["stage"] == "decontam" and "paraphrase of eval query" in row["reason"]
    assert "eval.jsonl:1" in row["reason"] and "cosine 0.9" in row["reason"]


def test_paraphrases_among_training_queries_keep_the_first(tmp_path):
    result = _semantic_only(tmp_path, [
        {"prompt": EVAL_APPLES, "reference_answer": "12"},
        {"prompt": RESTATED, "reference_answer": "12"},
        {"prompt": OTHER, "reference_answer": "30"}],
        [{"prompt": "What is 2 + 2?", "reference_answer": "4"}])
    assert result.stats["semantic_duplicates_removed"] == 1
    (row,) = result.quarantine.to_dicts()
    assert row["raw"] == RESTATED and row["stage"] == "semantic_dedup"
    assert "train.jsonl:1" in row["reason"]


def test_queries_past_the_embedding_window_are_counted_and_stated(tmp_path):
    long_query = "Tom counts apples. " * 120 + "How many apples are there?"
    result = _semantic_only(tmp_path, [{"prompt": long_query, "reference_answer": "1"},
                                       {"prompt": OTHER, "reference_answer": "30"}],
                            [{"prompt": "What is 2 + 2?", "reference_answer": "4"}])
    assert result.stats["embed_truncated"] == 1
    assert any("256-token window" in w for w in result.warnings)


def test_an_embedding_model_that_is_not_there_is_a_clear_error(tmp_path):
    from distill_dag.corpus.semantic import resolve_embedder

    with pytest.raises(FileNotFoundError, match="neither pkg:all-minilm-l6-v2 nor a local"):
        resolve_embedder(str(tmp_path / "no-model"))
