"""The curation step interface: a step added in one place gets its counts, timings, rows in and
out and quarantine rows from build_corpus; the corpus config is declared and documented."""

from __future__ import annotations

import numpy as np
import pytest

from distill_dag.configbase import ConfigError
from distill_dag.corpus import (
    STEPS,
    CorpusConfig,
    FileSource,
    GeneratorConfig,
    InboxConfig,
    Removal,
    StepResult,
    build_corpus,
)
from distill_dag.corpus.checks import removal_shares
from tests.test_corpus_curate import write_jsonl

ROWS = [{"prompt": f"Ann has {i} bananas and buys {i} more. How many bananas now?",
         "reference_answer": str(2 * i)} for i in range(1, 7)]


class DropOddAnswers:
    """A trivial step: training queries with an odd answer go."""

    name = "odd_answers"
    counts = ("odd_removed",)

    def apply(self, rows: list[dict], cfg: CorpusConfig) -> StepResult:
        out = StepResult()
        for row in rows:
            if row["split"] == "train" and int(row["reference_answer"]) % 4:
                out.removed.append(Removal(row, "reference_answer", "answer not divisible by 4",
                                           "odd", "odd_removed"))
            else:
                out.kept.append(row)
        return out


def _config(tmp_path, **settings) -> CorpusConfig:
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "What is 2 + 2?",
                                                   "reference_answer": "4"}])
    return CorpusConfig(files=[FileSource(path=str(train)), FileSource(path=str(evals),
                                                                       split="eval")],
                        near_dup_threshold=None, embed_decontam_threshold=None,
                        embed_dedup_threshold=None, **settings)


def test_an_added_step_gets_counts_timings_rows_and_quarantine(tmp_path):
    result = build_corpus(_config(tmp_path), steps=(*STEPS, DropOddAnswers()))
    # Answers 2, 4, ..., 12: 2, 6 and 10 are not divisible by 4.
    assert result.stats["odd_removed"] == 3 and result.stats["train"] == 3
    assert result.step_rows["odd_answers"] == (7, 4)
    assert list(result.seconds) == ["load", *(s.name for s in STEPS), "odd_answers", "tables"]
    odd = result.quarantine.filter(result.quarantine["stage"] == "odd")
    assert odd["reason"].to_list() == ["answer not divisible by 4"] * 3
    assert odd["field"].to_list() == ["reference_answer"] * 3 and odd["line"].to_list() == [1, 3, 5]
    assert removal_shares(result.step_rows)["odd_answers"] == pytest.approx(3 / 7)
    assert result.stats["rows_quarantined"] == result.quarantine.height == 3


def test_a_step_counting_what_it_does_not_declare_fails_naming_it(tmp_path):
    class Undeclared(DropOddAnswers):
        counts = ()

    with pytest.raises(TypeError, match=r"'odd_answers' counted \['odd_removed'\]"):
        build_corpus(_config(tmp_path), steps=(*STEPS, Undeclared()))


def test_step_names_are_unique_keys_of_seconds_and_step_rows(tmp_path):
    with pytest.raises(TypeError, match="unique and not load or tables"):
        build_corpus(_config(tmp_path), steps=(*STEPS, DropOddAnswers(), DropOddAnswers()))


def test_the_default_steps_declare_every_curation_count():
    names = [step.name for step in STEPS]
    assert names == ["clean", "exact_dedup", "split", "ngram_decontam", "near_dedup",
                     "embedding_dedup_decontam"]
    counts = [key for step in STEPS for key in step.counts]
    assert len(counts) == len(set(counts)) == 16
    assert {"length_removed", "conflicts", "eval_held_out", "embed_truncated"} <= set(counts)


def test_embeddings_follow_rows_removed_after_the_embedding_step(tmp_path):
    class FakeEmbedding:
        name, counts = "embed", ()

        def __init__(self) -> None:
            self.given: dict[str, float] = {}

        def apply(self, rows, cfg):
            self.given.update({r["query_id"]: float(i) for i, r in enumerate(rows)})
            vectors = np.arange(len(rows), dtype=np.float32)[:, None].repeat(3, axis=1)
            return StepResult(list(rows), vectors=vectors)

    fake = FakeEmbedding()
    result = build_corpus(_config(tmp_path), steps=(*STEPS, fake, DropOddAnswers()))
    assert len(fake.given) == 7 and len(result.embeddings.ids) == 4
    assert set(result.embeddings.ids) == set(result.queries["query_id"])
    # Each remaining row keeps its own vector, not a neighbour's.
    for qid in result.embeddings.ids:
        assert result.embeddings.rows([qid]).tolist() == [[fake.given[qid]] * 3]


# -- the config: one mechanism, every field documented --------------------------------------------

@pytest.mark.parametrize("cls", [CorpusConfig, FileSource, GeneratorConfig, InboxConfig])
def test_every_corpus_setting_is_documented(cls):
    undocumented = [name for name, _, _, doc, _ in cls.reference() if not doc.strip()]
    assert undocumented == []


def test_the_batch_size_changes_no_output_and_thresholds_do():
    base = CorpusConfig()
    assert CorpusConfig(embed_batch_size=8).fingerprint() == base.fingerprint()
    assert CorpusConfig(embed_dedup_threshold=0.9).fingerprint() != base.fingerprint()
    assert "embed_batch_size" not in base.output_settings()


def test_corpus_config_errors_are_the_shared_config_error():
    with pytest.raises(ConfigError, match=r"^corpus\.max_eval must be an integer >= 1"):
        CorpusConfig.from_dict({"max_eval": 0})
    with pytest.raises(ConfigError, match=r"^corpus\.inbox\.encoding: 'utf-16'"):
        CorpusConfig.from_dict({"inbox": {"folder": "in", "encoding": "utf-16"}})
    with pytest.raises(ConfigError, match=r"^corpus\.embed_dedup_threshold: .*\(0, 1\]"):
        CorpusConfig.from_dict({"embed_dedup_threshold": 0})
    import distill_dag.corpus

    assert distill_dag.corpus.ConfigError is ConfigError
