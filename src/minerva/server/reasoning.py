"""Reasoning models' thinking, split from their answer: ``<think> ... </think>`` before the
answer becomes ``reasoning_content`` (OpenAI, as vLLM) or ``thinking`` (Ollama). No torch.

Two parsers, named as vLLM names them (``--reasoning-parser``):

- ``qwen3``: the output is the answer unless it *starts* with ``<think>`` (after blanks), or
  unless the prompt already ends inside an open ``<think>`` (templates of QwQ, Qwen3-Thinking
  and the updated DeepSeek-R1 put ``<think>\\n`` into the prompt). With
  ``enable_thinking=false`` Qwen3's template closes the block in the prompt
  (``<think>\\n\\n</think>``), so everything is content. A ``<think>`` later in an answer is
  part of the answer.
- ``deepseek_r1``: the output starts inside the reasoning (R1's distills may or may not write
  the opening tag; a leading one is dropped) unless the prompt ends with a closed block
  (DeepSeek-V3.1's non-thinking mode ends it with ``</think>``, Qwen3's with
  ``<think>\\n\\n</think>``); everything up to ``</think>`` is reasoning, and an output
  without ``</think>`` is all reasoning.

``auto`` (the default) reads the chat template: a template that never mentions ``<think>`` or
``</think>`` gets no parser, so a model without thinking is served exactly as before; one
written in DeepSeek's chat tokens (``<｜Assistant｜>``) gets ``deepseek_r1``; any other gets
``qwen3``, which is right for every template that opens the block in the prompt or lets the
model open it. The template, not the vocabulary, decides: it is what makes a model think, and
non-thinking models of thinking families (Qwen3-Instruct-2507) have the tokens too.

Whitespace: both parts lose their leading blanks (after ``<think>``, and the model's ``\\n\\n``
after ``</think>``), as Ollama's parser does; the reasoning loses its trailing blanks too. An
output with no think block is returned unchanged.

``split_reasoning`` is the whole-text reference; ``ReasoningStream`` splits the same text given
piece by piece (any token boundaries, tags cut anywhere) and its pieces always join to exactly
``split_reasoning``'s result: partial tags are held back, never sent and taken back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from minerva.backends.base import Backend

OPEN, CLOSE = "<think>", "</think>"
REASONING_PARSERS = ("auto", "none", "qwen3", "deepseek_r1")
"""Values of the ``reasoning_parser`` setting."""

_DEEPSEEK_MARK = "<｜Assistant｜>"  # DeepSeek's full-width chat tokens
_PROMPT_TAIL_TOKENS = 16  # enough to see "...assistant\n<think>\n" at the prompt's end


def normalize_parser_name(text: str) -> str:
    """'DeepSeek-R1' -> 'deepseek_r1' (vLLM's spelling; the dash form is accepted too)."""
    return text.strip().lower().replace("-", "_")


def resolve_parser(setting: str, chat_template: str | None) -> str | None:
    """The parser a model gets: "qwen3", "deepseek_r1" or None (no thinking)."""
    if setting == "none":
        return None
    if setting != "auto":
        return setting
    if not chat_template or (OPEN not in chat_template and CLOSE not in chat_template):
        return None
    return "deepseek_r1" if _DEEPSEEK_MARK in chat_template else "qwen3"


def prompt_block(prompt_tail: str) -> str | None:
    """How the prompt ends: "open" inside a think block (``...<think>\\n``), "closed" right
    after one (``...</think>\\n\\n``), None with neither."""
    tail = prompt_tail.rstrip()
    if tail.endswith(OPEN):
        return "open"
    return "closed" if tail.endswith(CLOSE) else None


def starts_in_reasoning(
    parser: str, prompt_ids: Sequence[int], decode: Callable[[list[int]], str]
) -> bool:
    """Whether the output of ``prompt_ids`` begins inside the reasoning; ``decode`` turns ids
    into text with special tokens kept (only the prompt's last tokens are decoded)."""
    block = prompt_block(decode(list(prompt_ids[-_PROMPT_TAIL_TOKENS:])))
    if parser == "deepseek_r1":
        return block != "closed"
    return block == "open"


def reasoning_start(backend: Backend, parser: str | None, prompt_ids: list[int]) -> bool | None:
    """Whether the output of ``prompt_ids`` starts inside the think block (None: the model has
    no reasoning parser, its output is all content). Reads the prompt's last tokens."""
    if parser is None:
        return None
    decode = lambda tail: backend.decode(tail, skip_special_tokens=False)  # noqa: E731
    return starts_in_reasoning(parser, prompt_ids, decode)


def split_reasoning(text: str, in_reasoning: bool) -> tuple[str, str]:
    """(reasoning, content) of a whole output; ``in_reasoning``: the output starts inside the
    think block. ("", text) when there is no think block."""
    if in_reasoning:
        rest = text
        lead = text.lstrip()
        if lead.startswith(OPEN):  # an opening tag the prompt already gave
            rest = lead[len(OPEN) :]
    else:
        lead = text.lstrip()
        if not lead.startswith(OPEN):
            return "", text
        rest = lead[len(OPEN) :]
    end = rest.find(CLOSE)
    if end < 0:  # cut off while thinking (max_tokens): all of it is reasoning
        return rest.strip(), ""
    return rest[:end].strip(), rest[end + len(CLOSE) :].lstrip()


def _tag_prefix_len(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningStream:
    """Splits one streamed output; ``feed`` each text delta, then ``finish`` once.

    States: "open?" (starts in reasoning: is a leading <think> repeated?), "start?" (starts in
    content: does it open with <think>?), "reasoning", "after" (just past </think>: dropping
    blanks), "content"."""

    def __init__(self, in_reasoning: bool) -> None:
        self.state = "open?" if in_reasoning else "start?"
        self.buf = ""  # text received, not yet sent
        self.lead = True  # still dropping the reasoning's leading blanks

    def feed(self, delta: str) -> tuple[str, str]:
        """(reasoning, content) to send now for ``delta``; either may be empty."""
        self.buf += delta
        reasoning, content = [], []
        while True:  # each pass moves to a later state or returns
            if self.state == "content":
                content.append(self.buf)
                self.buf = ""
                break
            if self.state in ("start?", "open?"):  # does the output open with <think>?
                lead = self.buf.lstrip()
                if lead.startswith(OPEN):
                    self.state, self.buf = "reasoning", lead[len(OPEN) :]
                    continue
                if OPEN.startswith(lead):  # blanks, or a tag cut short: wait
                    break
                # no tag: from "start?" the answer as it came, from "open?" the reasoning
                self.state = "content" if self.state == "start?" else "reasoning"
                continue
            if self.state == "reasoning":
                end = self.buf.find(CLOSE)
                if end >= 0:
                    reasoning.append(self._reasoning_text(self.buf[:end].rstrip()))
                    self.state, self.buf = "after", self.buf[end + len(CLOSE) :]
                    continue
                # Hold a possible start of </think> and the blanks before it (they are the
                # reasoning's trailing blanks if the tag follows).
                keep = len(self.buf) - _tag_prefix_len(self.buf, CLOSE)
                keep = len(self.buf[:keep].rstrip())
                reasoning.append(self._reasoning_text(self.buf[:keep]))
                self.buf = self.buf[keep:]
                break
            # "after": drop the blanks between </think> and the answer
            self.buf = self.buf.lstrip()
            if self.buf:
                self.state = "content"
                continue
            break
        return "".join(reasoning), "".join(content)

    def _reasoning_text(self, text: str) -> str:
        if self.lead:
            text = text.lstrip()
            self.lead = not text
        return text

    def finish(self) -> tuple[str, str]:
        """(reasoning, content) still held when the output ends."""
        buf, self.buf = self.buf, ""
        if self.state == "start?":  # blanks or a cut "<thi": plain content
            return "", buf
        if self.state in ("open?", "reasoning"):
            return self._reasoning_text(buf.rstrip()), ""
        return "", buf  # "after" holds nothing; "content" holds nothing
