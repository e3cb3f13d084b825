"""provenance_scores core on the real model: categories, memoized scoring, margin changes."""

from __future__ import annotations

import polars as pl

from distill_dag.generation.config import PromptConfig, StudentConfig, TeacherConfig
from distill_dag.provenance.categories import ProvenanceConfig
from distill_dag.provenance.run import score_provenance
from distill_dag.store import Store
from tests.conftest import SMOLLM

SYSTEM = "Solve it. End with: The answer is N."
QUERIES = pl.DataFrame({
    "query_id": ["q1", "q2"],
    "prompt": ["Tom has 3 cats. Tom gets 4 more cats. How many cats does Tom have now?",
               "Mia has 12 pens. Mia loses 5 pens. How many pens does Mia have now?"],
})
OUTPUTS = pl.DataFrame({
    "request_key": ["a", "b", "c"],
    "teacher": ["t"] * 3,
    "query_id": ["q1", "q1", "q2"],
    "sample_index": [0, 1, 0],
    "response": ["3 + 4 = 7. The answer is 7.", "Tom has cats. The answer is 7.",
                 "12 - 5 = 7. The answer is 7."],
    "token_logprobs": [[], [], []],  # no generation-time log-probs: the teacher is rescored
    "token_starts": [[], [], []],
    "correct": [True, True, True],
    "completion_tokens": [12, 10, 12],
    "latency_s": [0.1, 0.1, 0.1],
}, schema_overrides={"token_logprobs": pl.List(pl.Float64), "token_starts": pl.List(pl.Int64)})
STUDENT = StudentConfig(model=SMOLLM, prompt=PromptConfig(style="chat", system=SYSTEM))


def _teacher(few_shot: int) -> TeacherConfig:
    return TeacherConfig(name="t", model=SMOLLM,
                         prompt=PromptConfig(style="chat", system=SYSTEM, few_shot=few_shot))


def test_teacher_identical_to_student_gives_only_common_sentences(tmp_path, smollm_fp32):
    """Same model, same context: pT == pS for every sentence, so dTS = 0 -> Common."""
    summary = score_provenance(OUTPUTS, QUERIES, _teacher(0), STUDENT,
                               ProvenanceConfig(teacher_logprobs="rescore"),
                               Store(tmp_path), smollm_fp32, smollm_fp32, show_progress=False)
    # Same model, same rendered context, same response: one forward pass serves both sides.
    assert summary.scored == 3
    sentences = summary.sentences
    assert sentences.height == 6  # two sentences per response
    assert sentences["d_ts"].abs().max() < 1e-9
    assert set(sentences["category"]) == {"common"}
    assert summary.samples["n_teacher"].to_list() == [0, 0, 0]


def test_few_shot_teacher_differs_and_rescoring_is_memoized(tmp_path, smollm_fp32):
    store = Store(tmp_path)
    first = score_provenance(OUTPUTS, QUERIES, _teacher(2), STUDENT, ProvenanceConfig(beta=0.1),
                             store, smollm_fp32, smollm_fp32, show_progress=False)
    assert first.scored == 6  # 3 responses x (student, teacher)
    s = first.sentences
    assert s["d_ts"].abs().max() > 1e-3  # few-shot context changes the teacher's probabilities
    expected = ["teacher" if d > 0.1 else "student" if d < -0.1 else "common" for d in s["d_ts"]]
    assert s["category"].to_list() == expected
    counts = s.group_by("request_key").agg((pl.col("category") == "teacher").sum().alias("n"))
    by_key = dict(zip(first.samples["request_key"], first.samples["n_teacher"], strict=True))
    assert all(by_key[k] == n for k, n in counts.iter_rows())

    # A new margin recategorizes without a single forward pass.
    wide = score_provenance(OUTPUTS, QUERIES, _teacher(2), STUDENT, ProvenanceConfig(beta=0.9),
                            store, smollm_fp32, smollm_fp32, show_progress=False)
    assert wide.scored == 0
    assert wide.sentences["lp_teacher"].to_list() == s["lp_teacher"].to_list()
    assert set(wide.sentences["category"]) <= {"common"} | set(s["category"])
    assert (wide.sentences["category"] == "common").sum() >= (s["category"] == "common").sum()
