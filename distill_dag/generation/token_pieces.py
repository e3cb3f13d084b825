"""Token ids for the token strings an OpenAI-compatible server returns with its log-probs.

A server's ``logprobs`` name tokens by their text (chat: also by their UTF-8 bytes, where the
server fills them in), never by id; logit distillation needs ids in the student's vocabulary.
The spec's ``model`` is a local copy of the served model, so its tokenizer says which id spells
which bytes. A piece names an id only when exactly one id spells it: two ids with the same text
(a special token and its text, byte fragments that decode to nothing) name none, and a sample
with such a token gets its top-k from a local forward pass instead (generation/topk.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece byte fallback (Gemma, Llama)


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, char -> byte (SmolLM2, Qwen, Llama 3 vocabularies)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


class TokenPieces:
    """Which id of `tokenizer` a server's token piece (its bytes, else its text) names."""

    def __init__(self, tokenizer: Any) -> None:
        size = len(tokenizer)
        tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
        special = set(tokenizer.all_special_ids) | {
            i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()
            if getattr(t, "special", False)}
        byte_level = "ByteLevel" in repr(tokenizer.backend_tokenizer.decoder) \
            if hasattr(tokenizer, "backend_tokenizer") else False
        decoder = _byte_level_decoder() if byte_level else {}
        self.by_bytes: dict[bytes, int | None] = {}
        self.by_text: dict[str, int | None] = {}
        self.partial_text: dict[str, int | None] = {}
        fallback: list[tuple[bytes, int]] = []
        for i, token in enumerate(tokens):
            if token is None:
                continue
            if i in special:  # a server may print a special token by its name, or as ""
                self._add(self.by_text, token, i)
                continue
            raw = self._bytes(token, decoder, byte_level)
            if raw is None:
                continue
            if not byte_level and _BYTE_TOKEN.fullmatch(token):
                fallback.append((raw, i))
                continue
            self._add(self.by_bytes, raw, i)
            try:
                self._add(self.by_text, raw.decode("utf-8"), i)
            except UnicodeDecodeError:
                # A piece of a character: servers print it with the partial UTF-8 dropped
                # (llama.cpp) or replaced. That text only names an id no whole piece spells.
                for errors in ("ignore", "replace"):
                    self._add(self.partial_text, raw.decode("utf-8", errors=errors), i)

        # SentencePiece spells a byte with its byte token only where no piece spells it (a
        # space is "▁", never <0x20>), so a byte token names what no piece names.
        for raw, i in fallback:
            self.by_bytes.setdefault(raw, i)
            text = raw.decode("utf-8", errors="ignore")
            if text:
                self.by_text.setdefault(text, i)

    @staticmethod
    def _bytes(token: str, decoder: dict[str, int], byte_level: bool) -> bytes | None:
        if byte_level:
            if not all(c in decoder for c in token):
                return None  # an added token outside the byte alphabet
            return bytes(decoder[c] for c in token)
        match = _BYTE_TOKEN.fullmatch(token)
        if match:
            return bytes([int(match.group(1), 16)])
        return token.replace("\u2581", " ").encode()

    @staticmethod
    def _add(table: dict, piece: Any, i: int) -> None:
        if piece in table and table[piece] != i:
            table[piece] = None  # two ids spell it: it names neither
        else:
            table[piece] = i

    def id_of(self, text: str, raw: Sequence[int] | None = None) -> int | None:
        """The one id whose piece is `raw` (bytes, when the server gives them) or `text`."""
        if raw is not None:
            return self.by_bytes.get(bytes(raw))
        if text in self.by_text:
            return self.by_text[text]
        return self.partial_text.get(text)
