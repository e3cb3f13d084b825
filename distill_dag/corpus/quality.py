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

# C0 and C1 control characters other than tab and newline, the replacement character (a
# decoding error upstream), private-use code points, and UTF-8 read as Latin-1 or Windows-1252:
# "Ã" or "Â" followed by a Latin-1 upper-half or cp1252 punctuation character ("Ã©", "Ã–",
# "Â°"), and "â€" plus one ("â€™").
_CP1252 = "\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013-\u2122"
_BROKEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd\ue000-\uf8ff]"
                     rf"|[ÃÂ][\u00a0-\u00bf{_CP1252}]|Ã[\u0080-\u009f]|â€[\u0080-\u00bf{_CP1252}]")
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters
# Answers that always round-trip through the verifier: numbers (with thousands separators, a
# currency sign or a percent sign) and plain fractions; the rest go through math-verify.
_PLAIN_ANSWER = re.compile(r"\$?-?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?%?|-?\d+/\d+"
                           r"|-?\\frac\{\d+\}\{\d+\}")
_NOT_LETTERS = re.compile(r"[\W\d_]+")
# Language detection on fewer letters than this (digits, symbols and one-letter variables
# removed) is a guess: "Compute 3/4 + 1/8." reads as Malay. Such prompts are not judged.
MIN_LANGUAGE_LETTERS = 30
# Unicode character names that start with one of these name a style, not a script.
_STYLE_PREFIXES = {"MATHEMATICAL", "MODIFIER", "SUPERSCRIPT", "SUBSCRIPT", "DOUBLE-STRUCK",
                   "SCRIPT", "BLACK-LETTER", "FULLWIDTH", "HALFWIDTH", "CIRCLED", "PARENTHESIZED"}
# Scripts that legitimately share words: Japanese writes one word in kanji and kana.
_FAMILIES = {"CJK": "Han", "HIRAGANA": "Han", "KATAKANA": "Han", "KATAKANA-HIRAGANA": "Han",
             "HANGUL": "Hangul", "IDEOGRAPHIC": "Han"}
# Alphabets whose letters look alike: a word mixing two of them is a homoglyph or an encoding
# accident ("Tоm" with a Cyrillic о). Other mixes are normal writing: Latin variables inside
# Chinese, Japanese or Korean text ("在△ABC中", "점A에서"), Greek math letters in Latin words.
_LOOKALIKE_SCRIPTS = {"Latin", "Cyrillic", "Greek", "Armenian"}
# Greek letters that pass for Latin ones; the others (π, Δ, θ, λ, ...) are math symbols.
_GREEK_LOOKALIKES = set("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧοϲ")
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
    """A reason when one word mixes look-alike alphabets (Latin, Cyrillic, Greek, Armenian):
    "Tоm" with a Cyrillic о, "Tοm" with a Greek omicron. Greek math letters in Latin words ("πr",
    "Δx") and Latin letters in CJK text are normal and allowed."""
    if text.isascii():
        return None
    for match in _WORD.finditer(unicodedata.normalize("NFKC", text)):
        word = match.group()
        if word.isascii():
            continue
        scripts = _scripts(word) & _LOOKALIKE_SCRIPTS
        if scripts == {"Latin", "Greek"} and not _GREEK_LOOKALIKES.intersection(word):
            continue
        if len(scripts) > 1:
            return f"mixed scripts in the word '{word}': {', '.join(sorted(scripts))}"
    return None


@functools.lru_cache(maxsize=1)
def known_scripts() -> frozenset[str]:
    """Every script name script_of can return (for validating corpus.scripts)."""
    import sys

    return frozenset(s for s in map(script_of, map(chr, range(sys.maxunicode + 1)))
                     if s is not None)


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


def known_languages() -> frozenset[str]:
    """The ISO 639-1 codes py3langid can detect (for validating corpus.languages)."""
    from py3langid import langid

    return frozenset(langid._get_identifier().nb_classes)


def language_of(text: str) -> str | None:
    """The ISO 639-1 code py3langid assigns to a text's words (its model ships in the package),
    or None when there are too few letters to tell (see MIN_LANGUAGE_LETTERS)."""
    import py3langid

    words = [w for w in _NOT_LETTERS.split(text) if len(w) > 1]
    if sum(map(len, words)) < MIN_LANGUAGE_LETTERS:
        return None
    return py3langid.classify(" ".join(words))[0]


def wrong_language(text: str, allowed: Sequence[str]) -> str | None:
    """A reason when the detected language is not one of `allowed` (ISO 639-1 codes); a text
    too short to tell passes."""
    found = language_of(text)
    if found is None or found in allowed:
        return None
    return f"language '{found}' (corpus.languages allows {', '.join(allowed)})"


@functools.lru_cache(maxsize=65536)
def ungradeable_answer(answer: str) -> str | None:
    """A reason when the verifier could not grade a model that states exactly this answer.

    The test is a round trip: "The answer is <answer>." must be extracted and verified as
    correct against the reference itself. An answer that fails it (a multi-line answer, one the
    extractor cuts short) would mark every right response wrong, poisoning rejection sampling.
    """
    if _PLAIN_ANSWER.fullmatch(answer.strip()):
        return None  # plain numbers always round-trip; skip math-verify's parser
    from distill_dag.verify import verify_answer

    verdict = verify_answer(f"The answer is {answer}.", answer)
    if verdict.correct:
        return None
    read = "nothing" if verdict.extracted is None else f"'{verdict.extracted}'"
    return (f"reference answer '{answer[:80]}' cannot be graded: the verifier reads a response "
            f"stating it as {read}")
