"""Quality filters for single queries: broken characters, mixed scripts, language, gradeable answer.

Each check returns None for a good query or a reason naming what is wrong (the field it
concerns comes with it), so curation can quarantine the row with a message a person can act on.
They are cheap enough for a million queries: ASCII text (most of it) takes a fast path.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence

# Control characters other than tab and newline, the replacement character (a decoding error
# upstream), private-use code points, and the classic UTF-8-read-as-Latin-1 pairs ("Ã©", "â€™").
_BROKEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd\ue000-\uf8ff]|Ã[\u0080-\u00bf]"
                     r"|â€[\u0080-\u00bf\u2018-\u201e\u2122\u0153\u0161\u017e]")
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters
_NUMBER = re.compile(r"-?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?")
# Unicode character names that start with one of these name a style, not a script.
_STYLE_PREFIXES = {"MATHEMATICAL", "MODIFIER", "SUPERSCRIPT", "SUBSCRIPT", "DOUBLE-STRUCK",
                   "SCRIPT", "BLACK-LETTER", "FULLWIDTH", "HALFWIDTH", "CIRCLED", "PARENTHESIZED"}
# Scripts that legitimately share words: Japanese writes one word in kanji and kana.
_FAMILIES = {"CJK": "Han", "HIRAGANA": "Han", "KATAKANA": "Han", "HANGUL": "Hangul",
             "IDEOGRAPHIC": "Han"}
_CHARACTER_NAMES = {"\u00b5": "GREEK"}  # MICRO SIGN is a Greek mu for our purposes


@functools.lru_cache(maxsize=8192)
def script_of(char: str) -> str | None:
    """The script of a letter ("Latin", "Cyrillic", "Greek", "Han", ...); None for a character
    that belongs to none (digits, punctuation, symbols, styled math letters)."""
    if not char.isalpha():
        return None
    name = _CHARACTER_NAMES.get(char) or unicodedata.name(char, "")
    first = name.split(" ", 1)[0]
    if not first or first in _STYLE_PREFIXES:
        return None
    return _FAMILIES.get(first, first.capitalize())


def _scripts(word: str) -> set[str]:
    return {s for s in map(script_of, word) if s is not None}


def broken_characters(text: str) -> str | None:
    """A reason when the text holds control, replacement or private-use characters, or mojibake."""
    match = _BROKEN.search(text)
    if match is None:
        return None
    shown = match.group().encode("unicode_escape").decode("ascii")
    return f"broken characters: '{shown}' at char {match.start()} (a decoding error or binary data)"


def mixed_script_word(text: str) -> str | None:
    """A reason when one word mixes letters of two scripts ("Tоm" with a Cyrillic о): a homoglyph
    or an encoding accident. Greek mixed with Latin is allowed (math writes "πr" and "Δx")."""
    if text.isascii():
        return None
    for match in _WORD.finditer(unicodedata.normalize("NFKC", text)):
        word = match.group()
        if word.isascii():
            continue
        scripts = _scripts(word)
        if len(scripts - {"Greek"} if "Latin" in scripts else scripts) > 1:
            return f"mixed scripts in the word '{word}': {', '.join(sorted(scripts))}"
    return None


def disallowed_script(text: str, allowed: Sequence[str]) -> str | None:
    """A reason when the text has letters outside the allowed scripts (names as script_of gives
    them, compared case-insensitively)."""
    allowed_set = {a.casefold() for a in allowed}
    if text.isascii() and "latin" in allowed_set:
        return None
    found = set()
    for match in _WORD.finditer(unicodedata.normalize("NFKC", text)):
        found |= _scripts(match.group())
    other = sorted(s for s in found if s.casefold() not in allowed_set)
    if other:
        return f"letters in {', '.join(other)} script (corpus.scripts allows {', '.join(allowed)})"
    return None


def language_of(text: str) -> str:
    """The ISO 639-1 code py3langid assigns to a text (its model ships in the package)."""
    import py3langid

    return py3langid.classify(text)[0]


def wrong_language(text: str, allowed: Sequence[str]) -> str | None:
    """A reason when the detected language is not one of `allowed` (ISO 639-1 codes)."""
    found = language_of(text)
    if found in allowed:
        return None
    return f"language '{found}' (corpus.languages allows {', '.join(allowed)})"


@functools.lru_cache(maxsize=65536)
def ungradeable_answer(answer: str) -> str | None:
    """A reason when the verifier could not grade a model that states exactly this answer.

    The test is a round trip: "The answer is <answer>." must be extracted and verified as
    correct against the reference itself. An answer that fails it (a multi-line answer, one the
    extractor cuts short) would mark every right response wrong, poisoning rejection sampling.
    """
    if _NUMBER.fullmatch(answer.strip()):
        return None  # plain numbers always round-trip; skip math-verify's parser
    from distill_dag.verify import verify_answer

    verdict = verify_answer(f"The answer is {answer}.", answer)
    if verdict.correct:
        return None
    read = "nothing" if verdict.extracted is None else f"'{verdict.extracted}'"
    return (f"reference answer '{answer[:80]}' cannot be graded: the verifier reads a response "
            f"stating it as {read}")
