"""Streaming detokenization with stop strings, in O(new tokens) per step. No torch.

Each step decodes two short id windows (vLLM's prefix/read offsets): ``ids[prefix:read]``,
text already emitted, and ``ids[prefix:]``; the difference is the new text. Starting the windows
a few prompt tokens back gives SentencePiece/Metaspace decoders the context they need: a
leading "▁" becomes a space after a word and is only stripped at the start of a sequence.

The text produced is what the output adds after the prompt, ``decode(prompt + output)`` minus
``decode(prompt)``. For byte-level tokenizers that is ``decode(output)``; for SentencePiece it
keeps the first token's leading space, which ``decode(output)`` strips (as vLLM and llama.cpp).
One known difference: with byte_fallback, ``decode`` turns a whole run of ``<0xNN>`` tokens into
U+FFFD when the run ends in invalid UTF-8, even the valid characters it began with; a stream has
sent those already (only garbage output hits this).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from minerva.tokenizer.stop_prefix import StopPrefixTracker

# Prompt tokens decoded as context before the first output token.
INITIAL_CONTEXT_TOKENS = 5
_REPLACEMENT = "\ufffd"


class SupportsDecode(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Turns one request's output ids into text deltas; cuts the text at the first stop string.

    Held back until safe: an incomplete UTF-8 character (the window decodes to a trailing
    U+FFFD) and a tail that could begin a stop string (at most ``len(longest stop) - 1`` chars).
    """

    def __init__(
        self,
        tokenizer: SupportsDecode,
        prompt_token_ids: Sequence[int] = (),
        skip_special_tokens: bool = True,
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
        skip_prefix: str = "",
    ) -> None:
        self.tokenizer = tokenizer
        # Token healing: the output first re-spells this end of the prompt; it is not emitted.
        self._skip = len(skip_prefix)
        self.skip_special_tokens = skip_special_tokens
        self.stop = [s for s in stop if s]
        self.include_stop_str_in_output = include_stop_str_in_output
        self._max_stop_len = max((len(s) for s in self.stop), default=0)
        self._held = StopPrefixTracker(self.stop) if self.stop else None
        # Window ids: a short prompt tail, then the output ids.
        self._ids: list[int] = list(prompt_token_ids[-INITIAL_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._text = ""  # decoded output text (emitted + held back for stop matching)
        self._num_emitted = 0  # chars of _text already returned
        self.stop_str: str | None = None
        """The stop string that ended the text, once one matched."""

    @property
    def output_text(self) -> str:
        """All decoded text so far: emitted plus held back (cut at the stop string if matched)."""
        return self._text

    @property
    def finished(self) -> bool:
        """True once a stop string matched: later ids are ignored."""
        return self.stop_str is not None

    def update(self, new_token_ids: Sequence[int]) -> tuple[str, str | None]:
        """Add sampled ids; return (text to emit now, stop string matched by this call or None)."""
        if self.finished:
            return "", None
        for token_id in new_token_ids:
            self._ids.append(token_id)
            new_text = self._decode_step(final=False)
            if new_text and self._append(new_text):
                return self._take(hold=False), self.stop_str
        return self._take(hold=True), None

    def flush(self) -> str:
        """The request ended without a stop match: release everything held back, including
        an incomplete character (decoded as U+FFFD, like a full decode)."""
        if not self.finished:
            new_text = self._decode_step(final=True)
            if new_text:
                self._append(new_text)
        return self._take(hold=False)

    def _decode_step(self, final: bool) -> str:
        """New text from the read offset on; "" while the window ends in a partial character."""
        start, read = self._prefix_offset, self._read_offset
        if read == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[start:read])
        full_text = self._decode(self._ids[start:])
        if len(full_text) <= len(prefix_text):
            return ""  # e.g. a skipped special token: nothing new yet
        if full_text.endswith(_REPLACEMENT) and not final:
            return ""  # a multi-byte character split across tokens: wait for the rest
        self._prefix_offset, self._read_offset = read, len(self._ids)
        return full_text[len(prefix_text) :]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _append(self, new_text: str) -> bool:
        """Add decoded text; on a stop match cut the text there and return True."""
        if self._skip:
            cut = min(self._skip, len(new_text))
            new_text, self._skip = new_text[cut:], self._skip - cut
        # Only a match that ends inside the new text is new: start max_stop_len - 1 chars back.
        search_from = max(0, len(self._text) - self._max_stop_len + 1)
        self._text += new_text
        if self._held is None:
            return False
        self._held.feed(new_text)
        best: tuple[int, str] | None = None
        for s in self.stop:
            index = self._text.find(s, search_from)
            if index != -1 and (best is None or index < best[0]):
                best = (index, s)
        if best is None:
            return False
        index, self.stop_str = best
        self._text = self._text[: index + len(self.stop_str) * self.include_stop_str_in_output]
        return True

    def _take(self, hold: bool) -> str:
        """Return the not yet emitted text, keeping back a tail that may start a stop string."""
        held = self._held.held if hold and self._held is not None else 0
        end = len(self._text) - held
        if end <= self._num_emitted:
            return ""
        delta = self._text[self._num_emitted : end]
        self._num_emitted = end
        return delta
