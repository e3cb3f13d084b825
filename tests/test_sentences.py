"""Tests for sentence splitting, token-to-sentence assignment and per-sentence means."""

from __future__ import annotations

import math
import random
import re

import numpy as np
import pytest

from distill_dag.provenance.sentences import (
    Sentence,
    assign_tokens_to_sentences,
    sentence_logprob_means,
    split_sentences,
)


def texts(text: str) -> list[str]:
    return [s.text for s in split_sentences(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Ana has 10 apples. She buys 7 more! How many?",
            ["Ana has 10 apples.", "She buys 7 more!", "How many?"],
        ),
        ("It costs 3.5 dollars. Then 1,000 more.", ["It costs 3.5 dollars.", "Then 1,000 more."]),
        (
            "Fruits, e.g. apples, etc. are good. Dr. Smith vs. Mr. Jones, i.e. him.",
            ["Fruits, e.g. apples, etc. are good.", "Dr. Smith vs. Mr. Jones, i.e. him."],
        ),
        (
            "1. Ana has 10 apples.\n2. She buys 7.\n\n10 + 7 = 17. The answer is 17.",
            ["1. Ana has 10 apples.", "2. She buys 7.", "10 + 7 = 17.", "The answer is 17."],
        ),
        ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
        ("Yes (it is.) Ok", ["Yes (it is.)", "Ok"]),
        ("Wait... really?! Yes.", ["Wait...", "really?!", "Yes."]),
        ("no terminator here", ["no terminator here"]),
        ("line one\nline two\r\n\n\nline three", ["line one", "line two", "line three"]),
        ("So x = 5.\nThe answer is 5", ["So x = 5.", "The answer is 5"]),
        ("Step 1. Add them.", ["Step 1.", "Add them."]),
        ("The answer is no. Next.", ["The answer is no.", "Next."]),
        ("10 + 7 = 17.", ["10 + 7 = 17."]),
        ("v1.2.3 is out.Then", ["v1.2.3 is out.Then"]),
    ],
)
def test_split_rules(text: str, expected: list[str]) -> None:
    assert texts(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "\n\n \t\n"])
def test_empty_text(text: str) -> None:
    assert split_sentences(text) == []


def test_offsets_exclude_whitespace() -> None:
    text = "  Lead and trail.   Next one  \n"
    sentences = split_sentences(text)
    assert sentences == [
        Sentence(0, 2, 17, "Lead and trail."),
        Sentence(1, 20, 28, "Next one"),
    ]


def _random_text(rng: random.Random) -> str:
    pieces = [
        "Ana", "has", "10", "apples.", "3.5", "1,000", "e.g.", "Dr.", "Why?", "Yes!", "\n",
        "\n\n", "1.", "=", "17.", '"ok."', "(so.)", "  ", "\t", "etc.", "x", "...",
    ]  # fmt: skip
    n = rng.randint(0, 40)
    return "".join(rng.choice(pieces) + rng.choice([" ", "", " ", "\n"]) for _ in range(n))


@pytest.mark.parametrize("seed", range(50))
def test_offset_invariants_on_random_texts(seed: int) -> None:
    text = _random_text(random.Random(seed))
    sentences = split_sentences(text)
    prev_end = 0
    for i, s in enumerate(sentences):
        assert s.index == i
        assert s.text == text[s.start : s.end]
        assert s.text and s.text == s.text.strip()
        assert "\n" not in s.text
        assert s.start >= prev_end
        # Everything between sentences is whitespace: no character is lost.
        assert text[prev_end : s.start].strip() == ""
        prev_end = s.end
    assert text[prev_end:].strip() == ""


def _word_tokens(text: str) -> tuple[list[int], list[int]]:
    """GPT-2-like tokens: each word carries its leading whitespace (" Ana")."""
    spans = [m.span() for m in re.finditer(r"\s*\S+|\s+$", text)]
    return [a for a, _ in spans], [b for _, b in spans]


def test_token_with_leading_space_belongs_to_next_sentence() -> None:
    text = "Ana has 10. Ana buys 7.\n\nDone"
    sentences = split_sentences(text)
    starts, ends = _word_tokens(text)
    tokens = [text[a:b] for a, b in zip(starts, ends, strict=True)]
    assert tokens[3] == " Ana"
    owner = assign_tokens_to_sentences(starts, ends, text, sentences)
    assert owner == [0, 0, 0, 1, 1, 1, 2]


def test_whitespace_and_out_of_range_tokens_get_minus_one() -> None:
    text = "Hi there.\n\nBye."
    sentences = split_sentences(text)
    starts = [0, 2, 9, 11, 15, 20, 3]
    ends = [2, 9, 11, 15, 15, 25, 3]
    # "Hi", " there.", "\n\n", "Bye.", empty at end, beyond text, empty mid-word
    assert assign_tokens_to_sentences(starts, ends, text, sentences) == [0, 0, -1, 1, -1, -1, -1]


def test_token_spanning_boundary_goes_by_first_char() -> None:
    text = "A b. C d."
    sentences = split_sentences(text)
    # One token ". C" starting inside sentence 0 belongs to sentence 0.
    assert assign_tokens_to_sentences([0, 3, 6], [3, 6, 9], text, sentences) == [0, 0, 1]


def test_out_of_order_tokens_and_no_sentences() -> None:
    text = "One. Two. Three."
    sentences = split_sentences(text)
    assert assign_tokens_to_sentences([10, 0, 5], [16, 4, 9], text, sentences) == [2, 0, 1]
    assert assign_tokens_to_sentences([0], [2], "  ", []) == [-1]
    with pytest.raises(ValueError, match="same length"):
        assign_tokens_to_sentences([0], [], text, sentences)


def test_sentence_logprob_means() -> None:
    means = sentence_logprob_means([-1.0, -3.0, -0.5, -9.0, -2.0], [0, 0, 1, -1, 0], 3)
    assert means[0] == pytest.approx(-2.0)
    assert means[1] == pytest.approx(-0.5)
    assert math.isnan(means[2])
    assert means.shape == (3,)
    # exp(mean log p) is the geometric mean of the token probabilities.
    probs = np.exp([-1.0, -3.0, -2.0])
    assert math.exp(means[0]) == pytest.approx(float(np.prod(probs) ** (1 / 3)))


def test_sentence_logprob_means_validation() -> None:
    with pytest.raises(ValueError, match="same length"):
        sentence_logprob_means([-1.0], [0, 0], 1)
    with pytest.raises(ValueError, match="n_sentences"):
        sentence_logprob_means([-1.0], [2], 2)
    assert sentence_logprob_means([], [], 0).shape == (0,)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "iv. Fourth item here.\nCivil. Then more.",
            ["iv. Fourth item here.", "Civil.", "Then more."],
        ),
        ("  a. Indented item.", ["a. Indented item."]),
        ("12. Twelfth item. Done.", ["12. Twelfth item.", "Done."]),
    ],
)
def test_list_markers(text: str, expected: list[str]) -> None:
    assert texts(text) == expected
