"""Split a response into sentences ("actions") with character offsets and map tokens onto them."""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Words that end with "." without ending a sentence (compared lower-case, without the final dot).
# "no" is left out on purpose: "The answer is no." ends a sentence far more often than "No. 5".
ABBREVIATIONS = frozenset(
    {"e.g", "i.e", "etc", "vs", "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "cf", "al"}
    | {"approx", "fig", "eq", "vol", "resp"}
)

# A terminator run ("." "!" "?" "..." "?!") plus closing quotes / brackets / markdown emphasis,
# which must be followed by whitespace or the end of the text to end a sentence. Newlines are
# handled separately, so the lookahead is on any whitespace.
_TERMINATOR_RE = re.compile(r"[.!?]+[\"'”’»)\]}*$]*(?=\s|$)")
_LINE_RE = re.compile(r"[^\r\n]+")
# A list marker at the start of a line: "1." "12." "a." "iv." (the token before the dot).
_LIST_MARKER_RE = re.compile(r"^(?:\d{1,3}|[A-Za-z]|(?i:x{0,3}(?:ix|iv|v?i{1,3}|v)))$")


@dataclass(frozen=True)
class Sentence:
    """One sentence of a response; ``text == response[start:end]``."""

    index: int
    """Position of the sentence in the response (0-based)."""
    start: int
    """Offset of the first non-whitespace character."""
    end: int
    """Offset one past the last non-whitespace character."""
    text: str
    """The sentence text, without surrounding whitespace."""


def _is_false_stop(line: str, dot_pos: int) -> bool:
    """True when the "." at dot_pos ends an abbreviation or a line-initial list marker."""
    word_start = dot_pos
    while word_start > 0 and not line[word_start - 1].isspace():
        word_start -= 1
    word = line[word_start:dot_pos].lstrip("([\"'“‘")
    if word.lower() in ABBREVIATIONS:
        return True
    # "1. Ana has 10 apples." is one sentence: the marker is the line's first token.
    return not line[:word_start].strip() and bool(_LIST_MARKER_RE.match(word))


def _line_breaks(line: str) -> list[int]:
    """Offsets (within the line) just past each sentence terminator."""
    breaks: list[int] = []
    for match in _TERMINATOR_RE.finditer(line):
        run = match.group(0)
        # Only a lone "." can be an abbreviation or list marker; "!", "?", "..." always end.
        lone_dot = run[0] == "." and (len(run) == 1 or run[1] not in ".!?")
        if lone_dot and _is_false_stop(line, match.start()):
            continue
        breaks.append(match.end())
    return breaks


def split_sentences(text: str) -> list[Sentence]:
    """Split text into sentences with offsets into ``text``.

    A sentence ends after ".", "!" or "?" (optionally followed by closing quotes or brackets)
    that is followed by whitespace or the end of the text, and at every newline. Numbers
    ("3.5", "1,000"), common abbreviations ("e.g.", "Dr.", "etc.") and list markers at the start of
    a line ("1. Ana has...") do not end a sentence. Offsets exclude surrounding whitespace.
    """
    sentences: list[Sentence] = []
    for line_match in _LINE_RE.finditer(text):
        line = line_match.group(0)
        base = line_match.start()
        piece_start = 0
        for cut in [*_line_breaks(line), len(line)]:
            piece = line[piece_start:cut]
            stripped = piece.strip()
            if stripped:
                start = base + piece_start + (len(piece) - len(piece.lstrip()))
                end = start + len(stripped)
                sentences.append(Sentence(len(sentences), start, end, text[start:end]))
            piece_start = cut
    return sentences


def assign_tokens_to_sentences(
    token_starts: Sequence[int],
    token_ends: Sequence[int],
    text: str,
    sentences: list[Sentence],
) -> list[int]:
    """Index of the sentence holding each token's first non-whitespace character, else -1.

    Tokens are character spans ``[start, end)`` of ``text``; a token like " Ana" belongs to the
    sentence where "A" is. Whitespace-only tokens and tokens outside every sentence get -1.
    Linear in tokens + sentences when tokens come in text order (the usual case); out-of-order
    tokens fall back to a binary search.
    """
    if len(token_starts) != len(token_ends):
        raise ValueError(
            f"token_starts and token_ends must have the same length, "
            f"got {len(token_starts)} and {len(token_ends)}"
        )
    sent_starts = [s.start for s in sentences]
    n_text = len(text)
    out: list[int] = []
    cursor = 0  # sentence index for the two-pointer walk
    for tok_start, tok_end in zip(token_starts, token_ends, strict=True):
        pos = max(int(tok_start), 0)
        stop = min(int(tok_end), n_text)
        while pos < stop and text[pos].isspace():
            pos += 1
        if pos >= stop or not sentences:
            out.append(-1)
            continue
        if cursor < len(sentences) and pos < sentences[cursor].start and cursor > 0:
            # Out of order: search instead of walking backwards.
            cursor = max(bisect.bisect_right(sent_starts, pos) - 1, 0)
        while cursor + 1 < len(sentences) and sentences[cursor + 1].start <= pos:
            cursor += 1
        sent = sentences[cursor]
        out.append(sent.index if sent.start <= pos < sent.end else -1)
    return out


def sentence_logprob_means(
    token_logprobs: Sequence[float],
    token_sentence: Sequence[int],
    n_sentences: int,
) -> np.ndarray:
    """Mean token log-prob per sentence, shape ``[n_sentences]``; NaN for sentences with no token.

    ``exp(mean)`` is the sentence probability used for provenance: the geometric mean of its
    token probabilities, which does not shrink with sentence length and makes models with
    different tokenizers comparable. Tokens assigned -1 are ignored.
    """
    logprobs = np.asarray(token_logprobs, dtype=np.float64)
    owner = np.asarray(token_sentence, dtype=np.int64)
    if logprobs.shape != owner.shape or logprobs.ndim != 1:
        raise ValueError(
            f"token_logprobs and token_sentence must be 1-D of the same length, "
            f"got shapes {logprobs.shape} and {owner.shape}"
        )
    if n_sentences < 0:
        raise ValueError(f"n_sentences must be >= 0, got {n_sentences}")
    if owner.size and owner.max() >= n_sentences:
        raise ValueError(
            f"token_sentence has index {int(owner.max())} but n_sentences is {n_sentences}"
        )
    keep = owner >= 0
    sums = np.bincount(owner[keep], weights=logprobs[keep], minlength=n_sentences)
    counts = np.bincount(owner[keep], minlength=n_sentences)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    means[counts == 0] = np.nan
    return means
