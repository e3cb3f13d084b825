"""Extract the final answer from a model response and check it against a reference answer."""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from math_verify import parse, verify
from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig

# Bump whenever extraction or comparison logic changes: cached samples store the version that
# verified them, and a mismatch means they must be re-verified.
VERIFIER_VERSION = "1"

# math-verify's own timeouts (signal.alarm) are only usable in the main thread.
_TIMEOUT_S = 5

# Parse candidates as LaTeX first (so "0.5" and "1/2" both become Rationals), then as plain
# expressions; boxed content inside the candidate wins over anything else.
_EXTRACTION_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())

Reason = Literal["correct", "wrong", "no_answer", "unparseable_reference", "truncated"]


@dataclass(frozen=True)
class Verdict:
    """Outcome of checking one response against its reference answer."""

    correct: bool
    """True when the extracted answer is equivalent to the reference."""
    extracted: str | None
    """The answer string taken from the response, or None when none was found."""
    reason: Reason
    """One of: correct, wrong, no_answer (extraction failed), unparseable_reference (the
    reference is empty once normalized), truncated (set by callers for a response cut at its
    token limit: it never stated an answer)."""


# A number: optional sign (not after a word char, so "3-4" yields 4, not -4), thousands groups or
# plain digits, optional decimals, optional "/denominator".
_NUMBER_RE = re.compile(
    r"(?<![\w.,/])-?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:/\d+(?:\.\d+)?)?(?![\d/])"
)
_ANSWER_ANCHOR_RE = re.compile(r"\banswer\s+is\b|\banswer\s*(?:\*\*)?\s*:", re.IGNORECASE)
_HASHES_RE = re.compile(r"####\s*")
_THOUSANDS_COMMA_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# Sentence end inside an anchored answer phrase: a terminator followed by space or end, so the
# "." in "3.5" survives.
_PHRASE_END_RE = re.compile(r"[.!?;](?=\s|$)|\n")
_INLINE_MATH_RE = re.compile(r"\$([^$]+)\$|\\\((.+?)\\\)")
_LEADING_NUMBER_RE = re.compile(r"^(?:\\?\$\s*)?(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?)")
_TRAILING_PUNCT = ".,;:!?"
# Words between "the answer is" and the answer itself ("the answer is therefore 3").
_FILLER_RE = re.compile(
    r"^(?:(?:therefore|thus|then|so|hence|just|simply|exactly|approximately|about|equal\s+to)"
    r"\b[\s,:]*)+",
    re.IGNORECASE,
)
# GSM8K calculator annotations "<<15*8=120>>", which few-shot teachers copy.
_CALC_ANNOTATION_RE = re.compile(r"<<[^<>\n]*>>")
# The literal word "\boxed" or "\fbox" followed by "{".
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _matching_brace(text: str, open_idx: int) -> int | None:
    """Index of the "}" closing the "{" at open_idx, or None when unbalanced."""
    depth = 0
    for i in range(open_idx, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _clean(answer: str) -> str | None:
    """Strip wrappers a model puts around an answer: markdown bold, "$", punctuation, commas."""
    s = answer.strip()
    for _ in range(3):  # wrappers nest, e.g. "**$17$**."
        before = s
        s = s.strip().strip("*").strip()
        s = s.rstrip(_TRAILING_PUNCT).strip()
        if s.startswith("\\(") and s.endswith("\\)"):
            s = s[2:-2].strip()
        if s.startswith("\\[") and s.endswith("\\]"):
            s = s[2:-2].strip()
        s = s.replace("\\$", "").strip("$").strip()
        if s == before:
            break
    s = _THOUSANDS_COMMA_RE.sub("", s)
    return s or None


def _last_boxed(text: str) -> str | None:
    for match in reversed(list(_BOXED_RE.finditer(text))):
        close = _matching_brace(text, match.end() - 1)
        if close is None:
            continue
        content = _clean(text[match.end() : close])
        if content is not None:
            return content
    return None


def _answer_from_phrase(phrase: str) -> str | None:
    """Reduce "17 apples in total" to "17"; keep symbolic answers like "x + 1" whole."""
    end = _PHRASE_END_RE.search(phrase)
    if end is not None:
        phrase = phrase[: end.start()]
    # "The answer is: 17", "**Answer:** 17": drop the colon and bold markers first.
    phrase = phrase.strip().lstrip(":*").strip()
    if not phrase:
        return None
    boxed = _last_boxed(phrase)
    if boxed is not None:
        return boxed
    # "the answer is 15 * 8 = 120 pints": the result is after the last "=".
    if "=" in phrase and "$" not in phrase and "\\" not in phrase:
        phrase = phrase.rsplit("=", 1)[1].strip()
    phrase = _FILLER_RE.sub("", phrase)
    number = _LEADING_NUMBER_RE.match(phrase)
    if number is not None:
        return _clean(number.group(1))
    math = _INLINE_MATH_RE.search(phrase)
    if math is not None:
        return _clean(math.group(1) or math.group(2))
    return _clean(phrase)


def _last_anchored(text: str, anchor: re.Pattern[str]) -> str | None:
    # Latest anchor first: models often restate a corrected answer at the end.
    for match in reversed(list(anchor.finditer(text))):
        answer = _answer_from_phrase(text[match.end() : match.end() + 200])
        if answer is not None:
            return answer
    return None


def _last_number(text: str) -> str | None:
    for match in reversed(list(_NUMBER_RE.finditer(text))):
        token = match.group(0)
        if any(ch.isdigit() for ch in token):
            return _clean(token)
    return None


def extract_final_answer(text: str) -> str | None:
    """Return the final answer stated in a response, or None when there is none.

    Priority: the last balanced ``\\boxed{...}``; the last "The answer is X" / "answer: X"
    (case-insensitive); the last "#### X"; else the last number (negatives, "1,234", decimals,
    fractions "3/4"). In an anchored phrase, filler words ("therefore") and everything up to the
    last "=" are dropped, and a leading number wins over trailing units ("17 apples" -> "17").
    GSM8K calculator annotations ("<<3+4=7>>") are ignored. The result has trailing
    punctuation, "$" and thousands commas removed.
    """
    if not text or not text.strip():
        return None
    text = _CALC_ANNOTATION_RE.sub("", text)
    for rule in (
        _last_boxed,
        lambda t: _last_anchored(t, _ANSWER_ANCHOR_RE),
        lambda t: _last_anchored(t, _HASHES_RE),
        _last_number,
    ):
        answer = rule(text)
        if answer is not None:
            return answer
    return None


def _normalize_string(s: str) -> str:
    """Canonical form for the plain-string fallback comparison."""
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = _clean(s) or ""
    return re.sub(r"\s+", "", s).lower()


@functools.lru_cache(maxsize=65536)
def _parse_math(answer: str) -> tuple[Any, ...]:
    """Parse an answer string with math-verify; () when it cannot be parsed.

    Cached: references repeat for every sample of a query, and candidate answers repeat a lot
    (k samples that agree). The result does not depend on the thread, only the timeout does.
    """
    timeout = _TIMEOUT_S if _in_main_thread() else None
    # Wrapping in "$...$" makes the LaTeX extractor take the whole string as one expression.
    wrapped = answer if "$" in answer or "\\boxed" in answer else f"${answer}$"
    parsed = parse(
        wrapped,
        extraction_config=_EXTRACTION_CONFIG,
        fallback_mode="no_fallback",
        parsing_timeout=timeout,
    )
    return tuple(parsed)


def _reference_answer(reference: str) -> str | None:
    """References may come as full GSM8K solutions ("... #### 1,234") or a bare answer."""
    if "####" in reference:
        return _last_anchored(reference, _HASHES_RE)
    boxed = _last_boxed(reference)
    return boxed if boxed is not None else _clean(reference)


def verify_answer(response: str, reference: str) -> Verdict:
    """Extract the response's final answer and compare it with the reference.

    Equivalence is math-verify's symbolic / numeric comparison ("17", "17.0" and
    "\\frac{34}{2}" all match "17"). When math-verify cannot parse one side, the normalized
    strings are compared instead. "unparseable_reference" means the reference is empty.
    """
    ref = _reference_answer(reference or "")
    extracted = extract_final_answer(response or "")
    if ref is None:
        return Verdict(False, extracted, "unparseable_reference")
    if extracted is None:
        return Verdict(False, None, "no_answer")

    gold = _parse_math(ref)
    pred = _parse_math(extracted)
    if gold and pred:
        timeout = _TIMEOUT_S if _in_main_thread() else None
        ok = verify(list(gold), list(pred), timeout_seconds=timeout)
        # math-verify may reject a pair it parsed oddly (e.g. text answers read as symbol
        # products); an exact string match is still a match.
        ok = ok or _normalize_string(ref) == _normalize_string(extracted)
    else:
        ok = _normalize_string(ref) == _normalize_string(extracted)
    return Verdict(bool(ok), extracted, "correct" if ok else "wrong")


def verify_many(responses: Sequence[str], references: Sequence[str]) -> list[Verdict]:
    """verify_answer over aligned sequences of responses and references."""
    if len(responses) != len(references):
        raise ValueError(
            f"responses and references must have the same length, "
            f"got {len(responses)} and {len(references)}"
        )
    return [verify_answer(r, ref) for r, ref in zip(responses, references, strict=True)]
