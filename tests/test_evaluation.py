"""eval_report's core on the real model: memoized answers, the comparison, test-time
provenance with three models, and the rendered report."""

from __future__ import annotations

import polars as pl
import pytest

from distill_dag.corpus.generator import generate_word_problems
from distill_dag.evaluation.config import EvalConfig
from distill_dag.evaluation.report import write_report
from distill_dag.evaluation.run import (
    category_shares,
    compare,
    eval_queries,
    evaluate_model,
    score_test_time_provenance,
)
from distill_dag.generation.config import PromptConfig, StudentConfig, TeacherConfig
from distill_dag.provenance.categories import ProvenanceConfig
from distill_dag.store import Store
from tests.conftest import SMOLLM

pytestmark = pytest.mark.slow
SYSTEM = "Solve the math word problem. End with: The answer is N."


@pytest.fixture(scope="module")
def queries():
    rows = generate_word_problems(6, 3, [1])
    return pl.DataFrame({"query_id": [f"q{i}" for i in range(6)],
                         "prompt": [r["prompt"] for r in rows],
                         "reference_answer": [r["reference_answer"] for r in rows],
                         "split": ["eval"] * 5 + ["train"]})


@pytest.fixture(scope="module")
def evaluated(queries, tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("store"))
    cfg = EvalConfig(max_new_tokens=12, num_samples=2, pass_k=[1, 2], bootstrap_resamples=200)
    held_out = eval_queries(queries, cfg)
    prompt = PromptConfig(style="chat", system=SYSTEM)
    fewshot = PromptConfig(style="chat", system=SYSTEM, few_shot=2, few_shot_levels=[1])
    base = evaluate_model("base", SMOLLM, prompt, held_out, cfg, store, "cpu", "fp32", False)
    # A stand-in "distilled" model: the same weights with few-shot context, so the two differ.
    other = evaluate_model("other", SMOLLM, fewshot, held_out, cfg, store, "cpu", "fp32", False)
    again = evaluate_model("base", SMOLLM, prompt, held_out, cfg, store, "cpu", "fp32", False)
    return store, cfg, held_out, base, other, again


def test_eval_split_only_and_answers_are_memoized(evaluated):
    _, _, held_out, base, _, again = evaluated
    assert held_out.height == 5 and set(held_out["split"]) == {"eval"}
    assert base.greedy.height == 5 and base.sampled.height == 10
    assert base.generated == 15 and again.generated == 0  # the rerun comes from the store
    assert again.greedy["response"].to_list() == base.greedy["response"].to_list()
    assert base.per_query.columns == ["query_id", "greedy_correct", "greedy_lenient", "n", "c"]


def test_eval_answers_are_memoized_in_their_own_namespace(evaluated):
    """store/generations_eval/<model>-<kind>: never a teacher's folder (generations/<name>)."""
    store = evaluated[0]
    assert sorted(p.name for p in (store.root / "generations_eval").iterdir()) == [
        "base-greedy", "base-sampled", "other-greedy", "other-sampled"]
    assert not [p for p in (store.root / "generations").iterdir() if p.is_dir()]
    assert set(evaluated[3].greedy["teacher"]) == {"eval-base-greedy"}  # as the rows said before


def test_comparison_metrics_are_consistent(evaluated):
    _, cfg, _, base, other, _ = evaluated
    cmp = compare(base, other, cfg)
    m = cmp.metrics["base"]
    assert m["pass@1_greedy"] == pytest.approx(base.greedy["correct"].mean())
    assert m["pass@1"] == pytest.approx(m["mean@2"])  # pass@1 from n samples is their mean
    assert m["pass@1"] <= m["pass@2"] <= 1
    assert cmp.gain.estimate == pytest.approx(cmp.metrics["distilled"]["pass@1_greedy"]
                                              - m["pass@1_greedy"])
    assert cmp.gain.low <= cmp.gain.estimate <= cmp.gain.high
    assert set(cmp.gains_at_k) == {1, 2} and cmp.queries == 5


def test_test_time_provenance_with_three_models(evaluated, queries):
    store, _, held_out, base, _, _ = evaluated
    teacher = TeacherConfig(name="t", model=SMOLLM, prompt=PromptConfig(
        style="chat", system=SYSTEM, few_shot=2, few_shot_levels=[1]))
    student = StudentConfig(model=SMOLLM, prompt=PromptConfig(style="chat", system=SYSTEM))
    prov = ProvenanceConfig(alpha=0.05, beta=0.1)
    # "Distilled" = the student itself: pS == pD on every sentence, so dTD == dTS and the
    # category depends on dTS alone: Shared within alpha, Teacher/Student beyond beta, and
    # Boosted only in the band alpha < |dTS| <= beta.
    sentences = score_test_time_provenance(base.greedy, held_out, teacher, student, SMOLLM, prov,
                                     store, "cpu", "fp32", False)
    assert sentences.height > 0
    assert (sentences["p_student"] - sentences["p_distilled"]).abs().max() < 1e-9
    d_ts = (sentences["p_teacher"] - sentences["p_student"]).to_list()
    expected = ["shared" if abs(d) <= 0.05 else "teacher" if d > 0.1 else "student"
                if d < -0.1 else "boosted" for d in d_ts]
    assert sentences["category"].to_list() == expected
    # Wiring: lp_teacher is the answer scored in the teacher's (few-shot) context.
    from distill_dag.generation.prompts import render_prompt
    from distill_dag.models import load_model
    from distill_dag.provenance.run import sentence_means
    from distill_dag.provenance.scoring import score_responses
    from distill_dag.provenance.sentences import split_sentences

    row = base.greedy.row(0, named=True)
    loaded = load_model(SMOLLM, "cpu", "fp32")
    prompt = dict(zip(held_out["query_id"], held_out["prompt"], strict=True))[row["query_id"]]
    [direct] = score_responses(loaded, [render_prompt(teacher.prompt, prompt, loaded.tokenizer)
                                        + row["response_lead"]], [row["response"]])
    expected_lp = sentence_means(row["response"], direct, split_sentences(row["response"]))
    got = sentences.filter(pl.col("query_id") == row["query_id"])["lp_teacher"].to_numpy()
    assert got == pytest.approx(expected_lp, abs=1e-6)
    # The few-shot teacher context changes the probabilities: not everything is Shared.
    assert set(expected) != {"shared"}
    shares = category_shares(sentences)
    assert shares["all"].sum() == pytest.approx(1.0)
    assert set(shares["category"]) == {"shared", "teacher", "student", "boosted", "unscored"}


def test_report_has_the_interval_the_shares_and_three_plots(evaluated, tmp_path):
    _, cfg, held_out, base, other, _ = evaluated
    cmp = compare(base, other, cfg)
    shares = pl.DataFrame({"category": ["shared", "teacher", "student", "boosted", "unscored"],
                           "correct": [0.5, 0.5, 0, 0, 0], "incorrect": [0.2, 0.3, 0.5, 0, 0],
                           "all": [0.3, 0.4, 0.3, 0, 0], "n_correct": [1, 1, 0, 0, 0],
                           "n_incorrect": [1, 1, 2, 0, 0], "n_all": [2, 2, 2, 0, 0]})
    path = write_report(tmp_path, cmp, base, other, shares, held_out, {"student": SMOLLM}, 12)
    text = path.read_text()
    assert f"[{cmp.gain.low:+.3f}, {cmp.gain.high:+.3f}]" in text
    assert "| teacher | 0.500 | 0.300 | 0.400 | 2 |" in text
    for png in ("accuracy.png", "provenance_categories.png", "output_lengths.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
        assert f"({png})" in text


def test_eval_config_validation():
    from distill_dag.configbase import ConfigError

    with pytest.raises(ConfigError, match=r"pass_k \[8\] exceed num_samples=4"):
        EvalConfig.from_dict({"pass_k": [1, 8]})
    with pytest.raises(ConfigError, match="unknown key"):
        EvalConfig.from_dict({"samples": 3})
    assert EvalConfig(num_samples=0, pass_k=[1]).reported_k == []


def test_too_few_eval_queries_is_a_clear_error():
    frame = pl.DataFrame({"query_id": ["a"], "prompt": ["x"], "reference_answer": ["1"],
                          "split": ["eval"]})
    with pytest.raises(ValueError, match="1 eval queries"):
        eval_queries(frame, EvalConfig())


@pytest.mark.parametrize("response,truncated,strict,expected", [
    ("3 - 1 = 2. The answer is 2. #### 2 The answer is 2. The answer", True, False, True),
    ("The answer is 5. Wait, no. The answer is 2", True, False, False),  # first statement wrong
    ("2 + 2 = 4 and then the answer is", True, False, False),  # never stated
    ("The answer is 2.5. More text", True, False, False),  # 2.5 != 2
    ("The answer is 7.", False, False, False),  # not truncated: strict verdict stands
    ("The answer is 2.", False, True, True),
])
def test_lenient_scoring_credits_only_a_completed_first_statement(response, truncated, strict,
                                                                 expected):
    from distill_dag.evaluation.run import lenient_correct

    assert lenient_correct(response, "2", truncated, strict) is expected
