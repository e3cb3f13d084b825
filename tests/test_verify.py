"""Tests for answer extraction and math-verify based checking."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from distill_dag.verify import (
    VERIFIER_VERSION,
    Verdict,
    extract_final_answer,
    verify_answer,
    verify_many,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 17.", "17"),
        ("the ANSWER is 17!", "17"),
        ("Answer: 42", "42"),
        ("**Answer:** 42", "42"),
        ("The answer is: $18.", "18"),
        ("The answer is **17**.", "17"),
        ("The answer is 17 apples. Then 3 more.", "17"),
        ("The answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
        ("The answer is x + 1.", "x + 1"),
        ("#### 1,234", "1234"),
        ("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
        ("\\boxed{\\frac{a}{b}} beats the answer is 3", "\\frac{a}{b}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("she has -3.5 left", "-3.5"),
        ("3/4 of them", "3/4"),
        ("pages 3-4", "4"),
        ("1,000 and 2,500.", "2500"),
        ("The final answer is \\$1,234.50.", "1234.50"),
        ("The answer is 5. Wait, the answer is 6.", "6"),
        ("answer: 7\n#### 9", "7"),
        ("The answer is therefore 3.", "3"),
        ("The answer is 10 + 7 = 17.", "17"),
        ("the final answer is 15 gallons * 8 = <<15*8=120>>120 pints", "120"),
        ("She has 3 + 4 = <<3+4=7>>7 apples.", "7"),
    ],
)
def test_extract_final_answer(text: str, expected: str) -> None:
    assert extract_final_answer(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "no numbers here", "\\boxed{}"])
def test_extract_final_answer_none(text: str) -> None:
    assert extract_final_answer(text) is None


def test_version_is_a_string() -> None:
    assert isinstance(VERIFIER_VERSION, str) and VERIFIER_VERSION


@pytest.mark.parametrize(
    ("response", "reference"),
    [
        ("The answer is 17.", "17"),
        ("So she has 17.0 apples.", "17"),
        ("\\boxed{\\frac{34}{2}}", "17"),
        ("Natalia sold 1,000 + 234 clips.\n#### 1,234", "1234"),
        ("The answer is 1234", "1,234"),
        ("0.5", "1/2"),
        ("The answer is 1/2.", "0.5"),
        ("The answer is 17", "She had 10 + 7 = 17 apples.\n#### 17"),
        ("\\boxed{17 \\text{ apples}}", "17"),
        ("The answer is Tuesday.", "tuesday"),
    ],
)
def test_verify_correct(response: str, reference: str) -> None:
    verdict = verify_answer(response, reference)
    assert verdict == Verdict(True, verdict.extracted, "correct")


def test_verify_wrong() -> None:
    assert verify_answer("The answer is 18.", "17") == Verdict(False, "18", "wrong")


def test_verify_no_answer() -> None:
    assert verify_answer("I am not sure what to do.", "17") == Verdict(False, None, "no_answer")


def test_verify_empty_reference() -> None:
    verdict = verify_answer("The answer is 17.", "  ")
    assert verdict == Verdict(False, "17", "unparseable_reference")


def test_rambling_answer_states_result_at_the_end() -> None:
    response = (
        "Ana starts with 10 apples. On day 2 she gets 3 more, then gives 5 to Bob, who had 12. "
        "Hmm, 10 + 3 = 13, and 13 - 5 = 8. Let me check: 8 + 5 = 13. Yes.\n"
        "The answer is 8."
    )
    assert verify_answer(response, "8").correct
    assert not verify_answer(response, "13").correct


def test_text_answer_falls_back_to_string_compare() -> None:
    assert verify_answer("Answer: blue", "Blue").correct
    assert not verify_answer("Answer: red", "blue").correct


def test_verify_many_and_length_check() -> None:
    verdicts = verify_many(["The answer is 1.", "#### 2", "hmm"], ["1", "3", "4"])
    assert [v.reason for v in verdicts] == ["correct", "wrong", "no_answer"]
    with pytest.raises(ValueError, match="same length"):
        verify_many(["a"], [])


def test_verify_in_worker_thread() -> None:
    results: list[Verdict] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            # Fresh strings so the parse cache does not hide the threaded code path.
            results.append(verify_answer("The answer is \\frac{68}{4}.", "17.000"))
            results.append(verify_answer("so 2.25 in total", "9/4"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert not errors, errors
    assert [v.correct for v in results] == [True, True]


def test_verify_is_fast() -> None:
    verify_answer("The answer is 17.", "17")  # warm up sympy / the LaTeX parser
    responses = [f"We add {i} and 1 to get {i + 1}. The answer is {i + 1}." for i in range(200)]
    start = time.perf_counter()
    verdicts = verify_many(responses, [str(i + 1) for i in range(200)])
    per_call_ms = (time.perf_counter() - start) / len(responses) * 1000
    assert all(v.correct for v in verdicts)
    assert per_call_ms < 20, per_call_ms  # a few ms typical; loose for slow CI machines


GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test_dev.jsonl"


@pytest.mark.skipif(not GSM8K.exists(), reason="GSM8K copy not present")
def test_gsm8k_reference_solutions_verify() -> None:
    # Every GSM8K solution ("... <<a*b=c>>c ... #### 42") must verify against its own answer.
    with GSM8K.open() as f:
        rows = [json.loads(line) for line in f][:300]
    for row in rows:
        final = row["answer"].split("####")[-1].strip()
        assert verify_answer(row["answer"], final).correct, row["answer"][-200:]
