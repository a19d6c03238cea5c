"""The reasoning parser: the streamed split (every way of cutting the text into deltas) joins to
exactly the whole-text split, which is checked against hand-written expectations; the parser
choice from chat templates; the prompt's open think block."""

from __future__ import annotations

import itertools

import pytest

from minerva.server.reasoning import (
    ReasoningStream,
    normalize_parser_name,
    prompt_block,
    resolve_parser,
    split_reasoning,
    starts_in_reasoning,
)

# (output, starts in reasoning, expected reasoning, expected content)
CASES = [
    ("<think>\nLet me see.\n</think>\n\nIt is 4.", False, "Let me see.", "It is 4."),
    ("<think>a</think>b", False, "a", "b"),
    ("  <think> a b </think>  b c ", False, "a b", "b c "),
    ("It is 4.", False, "", "It is 4."),  # enable_thinking=false: no block, all content
    ("  It is 4. ", False, "", "  It is 4. "),  # unchanged, blanks too
    ("4 <think>x</think> y", False, "", "4 <think>x</think> y"),  # a tag mid-answer: answer
    ("<thin", False, "", "<thin"),  # cut short before the tag was whole
    ("<think>\nstill thinking", False, "still thinking", ""),  # max_tokens inside reasoning
    ("<think></think>", False, "", ""),
    ("<think>\n\n</think>\n\nx", False, "", "x"),
    ("<think>a</think>b</think>c", False, "a", "b</think>c"),
    ("<think>a </th b</think>c", False, "a </th b", "c"),
    ("Let me see.\n</think>\n\nIt is 4.", True, "Let me see.", "It is 4."),  # R1: no <think>
    ("<think>\nhmm</think>ok", True, "hmm", "ok"),  # R1 repeating the opening tag
    ("all reasoning, cut off", True, "all reasoning, cut off", ""),
    ("  <thi", True, "<thi", ""),
    ("", True, "", ""),
    ("", False, "", ""),
    ("</think>answer", True, "", "answer"),
    ("a\n\n</think>", True, "a", ""),
    ("é 思考</think>答え", True, "é 思考", "答え"),
]


@pytest.mark.parametrize(("text", "in_reasoning", "reasoning", "content"), CASES)
def test_whole_text_split(text, in_reasoning, reasoning, content):
    assert split_reasoning(text, in_reasoning) == (reasoning, content)


def _stream(pieces: list[str], in_reasoning: bool) -> tuple[str, str]:
    s = ReasoningStream(in_reasoning)
    reasoning, content = [], []
    for piece in pieces:
        r, c = s.feed(piece)
        reasoning.append(r)
        content.append(c)
    r, c = s.finish()
    return "".join(reasoning) + r, "".join(content) + c


def _cuts(text: str, k: int):
    """``text`` cut into pieces at every choice of up to ``k`` positions."""
    for n in range(k + 1):
        for points in itertools.combinations(range(1, len(text)), n):
            bounds = (0, *points, len(text))
            yield [text[a:b] for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize(("text", "in_reasoning", "reasoning", "content"), CASES)
def test_every_split_streams_to_the_whole_text_result(text, in_reasoning, reasoning, content):
    expected = split_reasoning(text, in_reasoning)
    for pieces in _cuts(text, 2):
        assert _stream(pieces, in_reasoning) == expected, pieces
    assert _stream(list(text), in_reasoning) == expected  # one character per delta
    assert _stream([text, "", ""], in_reasoning) == expected  # empty deltas change nothing


def test_partial_tags_are_never_sent():
    s = ReasoningStream(False)
    assert s.feed("<th") == ("", "")
    assert s.feed("ink>plan") == ("plan", "")
    assert s.feed(" more </thi") == (" more", "")  # blanks and "</thi" held back
    assert s.feed("nk>\n") == ("", "")
    assert s.feed("\nAnswer") == ("", "Answer")
    assert s.feed(" <think>") == ("", " <think>")  # past the block: plain answer text
    assert s.finish() == ("", "")


def test_content_without_block_is_sent_once_it_cannot_be_a_tag():
    s = ReasoningStream(False)
    assert s.feed(" ") == ("", "")
    assert s.feed("<x") == ("", " <x")
    assert s.feed("yz") == ("", "yz")


QWEN3_TEMPLATE = (
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}"
    "<|im_end|>\n{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{%- endif %}{%- endif %}"
)
R1_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{% set content = "
    "message['content'].split('</think>')[-1] %}<｜Assistant｜>{{ content }}{% else %}"
    "<｜User｜>{{ message['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}"
)
LLAMA_TEMPLATE = "{% for m in messages %}<|start_header_id|>{{ m.role }}{% endfor %}"


@pytest.mark.parametrize(
    ("setting", "template", "parser"),
    [
        ("auto", QWEN3_TEMPLATE, "qwen3"),
        ("auto", R1_TEMPLATE, "deepseek_r1"),
        ("auto", LLAMA_TEMPLATE, None),  # no thinking: served as before
        ("auto", None, None),
        ("none", QWEN3_TEMPLATE, None),
        ("qwen3", LLAMA_TEMPLATE, "qwen3"),  # an explicit choice wins over the template
        ("deepseek_r1", QWEN3_TEMPLATE, "deepseek_r1"),
    ],
)
def test_parser_choice(setting, template, parser):
    assert resolve_parser(setting, template) == parser


def test_parser_names_take_vllm_and_dash_spellings():
    assert normalize_parser_name(" DeepSeek-R1 ") == "deepseek_r1"
    assert normalize_parser_name("qwen3") == "qwen3"


def test_the_prompt_decides_where_the_output_starts():
    assert prompt_block("<|im_start|>assistant\n<think>\n") == "open"
    assert prompt_block("<|im_start|>assistant\n") is None
    assert prompt_block("<|im_start|>assistant\n<think>\n\n</think>\n\n") == "closed"

    tails = {
        (1, 2): "assistant\n<think>\n",  # QwQ, Qwen3-Thinking, updated R1
        (1, 3): "assistant\n",  # Qwen3 (the model opens it), the first R1 template
        (1, 4): "<｜Assistant｜></think>",  # DeepSeek-V3.1 without thinking, Qwen3 switched off
    }
    seen = []

    def decode(ids):
        seen.append(ids)
        return tails[tuple(ids)]

    qwen3 = [starts_in_reasoning("qwen3", [1, k], decode) for k in (2, 3, 4)]
    r1 = [starts_in_reasoning("deepseek_r1", [1, k], decode) for k in (2, 3, 4)]
    assert qwen3 == [True, False, False]
    assert r1 == [True, True, False]  # R1 thinks unless the prompt closed the block
    assert seen == [[1, 2], [1, 3], [1, 4]] * 2
    long_prompt = list(range(100))
    starts_in_reasoning("qwen3", long_prompt, lambda ids: seen.append(ids) or "")
    assert seen[-1] == long_prompt[-16:]  # only the tail is decoded
