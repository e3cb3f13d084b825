"""Text identity of queries and answers: normalization, dedup keys, query ids, word n-grams.

Curation, near-duplicate search and the corpus checks compare texts through these helpers
alone, so a query is "the same" (or "shares an n-gram") in exactly one sense everywhere.
The query id is a hash of `dedup_key`: changing either re-keys every stored teacher output.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from decimal import Decimal, InvalidOperation

_WORD = re.compile(r"[^\W_]+")  # Unicode letters and digits; numbers are words too


def normalize_text(s: str) -> str:
    """NFKC, whitespace runs collapsed to one space, stripped."""
    return " ".join(unicodedata.normalize("NFKC", s).split())


def _strip_punct(s: str) -> str:
    start, end = 0, len(s)
    while start < end and (s[start].isspace() or unicodedata.category(s[start]).startswith("P")):
        start += 1
    while end > start and (
        s[end - 1].isspace() or unicodedata.category(s[end - 1]).startswith("P")
    ):
        end -= 1
    return s[start:end]


def dedup_key(s: str) -> str:
    """The identity of a prompt: normalized, casefolded, punctuation stripped at both ends."""
    return _strip_punct(normalize_text(s).casefold())


def make_query_id(prompt: str) -> str:
    """Stable content hash: first 16 hex chars of sha256(dedup_key(prompt))."""
    return hashlib.sha256(dedup_key(prompt).encode("utf-8")).hexdigest()[:16]


def clean_prompt(s: str) -> str:
    """The prompt as stored and sent to teachers: line endings unified, NFC, stripped.

    Deliberately lighter than `normalize_text`: NFKC would turn "x²" into "x2" and collapsing
    whitespace would flatten code and tables, changing what the teacher is asked.
    """
    return unicodedata.normalize("NFC", s.replace("\r\n", "\n").replace("\r", "\n")).strip()


def answer_key(answer: str) -> str:
    """Comparable form of a reference answer, so "1,234" and "1234.0" agree."""
    text = normalize_text(answer).casefold().rstrip(".").strip()
    plain = text.replace(",", "").replace("$", "")
    try:
        return format(Decimal(plain).normalize(), "f")
    except InvalidOperation:
        return text


def word_tokens(s: str) -> list[str]:
    """The words of a text (letters and digits), normalized and casefolded."""
    return _WORD.findall(normalize_text(s).casefold())


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    """Word n-grams; a text shorter than n words is one gram (the whole text)."""
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}
