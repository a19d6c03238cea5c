"""The bytes each token id stands for, read from a Tokenizer: what a grammar engine matches.

Byte-level BPE (GPT-2, Llama 3, Qwen2) spells bytes with GPT-2's byte-to-unicode table;
SentencePiece-style vocabularies spell a space as "▁" and raw bytes as ``<0xNN>``. Special
tokens map to no bytes: a grammar never produces them (EOS is allowed by the engine itself).
No torch.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from minerva.tokenizer import Tokenizer

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@functools.cache
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character -> the byte it stands for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


@dataclass(frozen=True, eq=False)  # hashed by identity: one per model, a cache key
class Vocabulary:
    """Per token id its bytes (b"" for special and unused ids) and which ids are special."""

    token_bytes: list[bytes]
    special_ids: frozenset[int]
    eos_token_ids: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.token_bytes)


def vocabulary_of(
    tokenizer: Tokenizer, vocab_size: int, eos_token_ids: list[int] | tuple[int, ...]
) -> Vocabulary:
    """The Vocabulary of ``tokenizer`` padded to the model's ``vocab_size`` (logit columns)."""
    decoder = str(tokenizer.backend.decoder)
    byte_level = "ByteLevel" in decoder
    special = set(tokenizer.all_special_ids)
    special.update(i for i, t in tokenizer.backend.get_added_tokens_decoder().items() if t.special)
    pieces = tokenizer.convert_ids_to_tokens(range(min(vocab_size, tokenizer.vocab_size)))
    table = _byte_level_decoder() if byte_level else {}
    token_bytes = []
    for i, piece in enumerate(pieces):
        if piece is None or i in special:
            token_bytes.append(b"")
        elif byte_level:
            token_bytes.append(_from_byte_level(piece, table))
        else:
            token_bytes.append(_from_sentencepiece(piece))
    token_bytes += [b""] * (vocab_size - len(token_bytes))
    special.update(i for i in range(len(pieces), vocab_size))
    eos = tuple(i for i in eos_token_ids if 0 <= i < vocab_size)
    return Vocabulary(token_bytes, frozenset(i for i in special if i < vocab_size), eos)


def _from_byte_level(piece: str, table: dict[str, int]) -> bytes:
    try:
        return bytes(table[c] for c in piece)
    except KeyError:  # an added (non-special) token written as plain text
        return piece.encode("utf-8")


def _from_sentencepiece(piece: str) -> bytes:
    match = _BYTE_PIECE.match(piece)
    if match:
        return bytes([int(match.group(1), 16)])
    return piece.replace("▁", " ").encode("utf-8")


def encode_fragment(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` as it would be tokenized in the middle of a sequence: no special
    tokens and no SentencePiece space prefix (encoding after an anchor and dropping it)."""
    anchor = tokenizer.encode("a", add_special_tokens=False)
    ids = tokenizer.encode("a" + text, add_special_tokens=False)
    if ids[: len(anchor)] == anchor:
        return ids[len(anchor) :]
    return tokenizer.encode(text, add_special_tokens=False)
