"""Tests for the seeded word-problem generator: determinism, exact answers, levels, exemplars."""

from __future__ import annotations

import itertools
import re

import pytest

from distill_dag.corpus import few_shot_exemplars, generate_word_problems
from distill_dag.corpus.generator import generate_problems


def recompute(prompt: str) -> tuple[int, int, list[int]]:
    """Re-solve a prompt from its text alone: (answer, number of steps, intermediate values).

    Independent of the generator's own bookkeeping: the setup sentence gives the start (or a
    product), then every sentence with a number adds if it says "more" and subtracts otherwise.
    """
    sentences = [s for s in re.split(r"(?<=[.?])\s+", prompt) if s]
    assert sentences[-1].startswith("How many"), prompt
    first = sentences[0]
    numbers = [int(x) for x in re.findall(r"\d+", first)]
    steps = 0
    if len(sentences) > 1 and sentences[1].startswith("Each "):
        each = int(re.findall(r"\d+", sentences[1])[0])
        value, steps, body = numbers[0] * each, 1, sentences[2:-1]
    else:
        assert len(numbers) == 1, prompt
        value, body = numbers[0], sentences[1:-1]
    values = [value]
    for sentence in body:
        (n,) = (int(x) for x in re.findall(r"\d+", sentence))
        value = value + n if " more " in sentence else value - n
        values.append(value)
        steps += 1
    return value, steps, values


def test_deterministic_for_a_seed_and_different_across_seeds():
    a = generate_word_problems(50, seed=7)
    assert a == generate_word_problems(50, seed=7)
    assert a != generate_word_problems(50, seed=8)


def test_prefix_stable_when_n_grows():
    # Asking for more problems only appends; existing ones (and their query ids) don't change.
    assert generate_word_problems(200, seed=3)[:100] == generate_word_problems(100, seed=3)


def test_row_shape():
    row = generate_word_problems(1, seed=0)[0]
    assert set(row) == {
        "prompt", "reference_answer", "difficulty", "domain", "source", "worked_solution",
    }  # fmt: skip
    assert row["domain"] == "arithmetic"
    assert row["source"] == "generator"
    assert isinstance(row["reference_answer"], str)


@pytest.mark.parametrize("levels", [(1,), (2,), (3,), (1, 2, 3)])
def test_answers_recomputed_from_text_and_levels_respected(levels):
    rows = generate_word_problems(300, seed=11, levels=levels)
    for row in rows:
        answer, steps, values = recompute(row["prompt"])
        assert row["reference_answer"] == str(answer), row
        assert row["difficulty"] == steps, row
        assert row["difficulty"] in levels
        assert all(v >= 0 for v in values), row
        assert re.fullmatch(r"\d+", row["reference_answer"])
    assert {r["difficulty"] for r in rows} == set(levels)


def test_worked_solution_arithmetic_matches():
    for row in generate_word_problems(200, seed=5, levels=(1, 2, 3)):
        steps = re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)\.", row["worked_solution"])
        assert len(steps) == row["difficulty"]
        for left, op, right, result in steps:
            expected = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__}[op](
                int(left), int(right)
            )
            assert int(result) == expected
        # Steps chain: each result feeds the next step.
        for (_, _, _, prev), (nxt, _, _, _) in itertools.pairwise(steps):
            assert prev == nxt
        assert row["worked_solution"].endswith(f"The answer is {row['reference_answer']}.")


def test_structured_steps_agree_with_rows():
    problems = generate_problems(100, seed=2, levels=(1, 2, 3))
    rows = generate_word_problems(100, seed=2, levels=(1, 2, 3))
    for p, row in zip(problems, rows, strict=True):
        assert row["reference_answer"] == str(p.answer)
        assert row["difficulty"] == len(p.steps)


def test_variety_few_exact_duplicates():
    rows = generate_word_problems(1000, seed=0)
    assert len({r["prompt"] for r in rows}) >= 990
    assert any(" * " in r["worked_solution"] for r in rows)  # multiplication templates occur
    assert len({int(r["reference_answer"]) for r in rows}) > 30


def test_exemplars_never_corpus_queries():
    exemplars = few_shot_exemplars(8, seed=0)
    assert len(exemplars) == 8
    assert all(e["worked_solution"] and e["source"] == "exemplar" for e in exemplars)
    corpus = {
        r["prompt"] for seed in range(5) for r in generate_word_problems(500, seed, (1, 2, 3))
    }
    assert not corpus & {e["prompt"] for e in exemplars}
    for e in exemplars:
        answer, steps, _ = recompute(e["prompt"])
        assert e["reference_answer"] == str(answer) and e["difficulty"] == steps


def test_bad_levels_rejected():
    with pytest.raises(ValueError, match="levels"):
        generate_word_problems(3, seed=0, levels=(4,))
    with pytest.raises(ValueError, match="levels"):
        generate_word_problems(3, seed=0, levels=())
