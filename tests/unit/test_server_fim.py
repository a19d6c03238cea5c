"""``suffix`` (fill-in-the-middle): the template is found from the tokenizer's own FIM tokens,
rendered around prompt and suffix, and its markers encode as single special tokens."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer as HFTokenizer

from minerva.errors import RequestError
from minerva.server.fim import FIM_TEMPLATES, fim_prompts, find_fim_template
from minerva.tokenizer import Tokenizer
from tests.tokenizer_fixtures import build_byte_level

QWEN = FIM_TEMPLATES[0]


class TokenizerBackend:
    """The tokenizer calls of a Backend, over a real tokenizer folder."""

    has_tokenizer = True

    def __init__(self, folder) -> None:
        self.tokenizer = Tokenizer.from_folder(folder)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def _folder(tmp_path, fim: bool):
    build_byte_level(tmp_path)
    if fim:  # as Qwen2.5-Coder's tokenizer holds them: added special tokens
        path = tmp_path / "tokenizer.json"
        tok = HFTokenizer.from_file(str(path))
        tok.add_special_tokens([QWEN.prefix, QWEN.suffix, QWEN.middle])
        tok.save(str(path))
        assert json.loads(path.read_text())["added_tokens"][-1]["content"] == QWEN.middle
    return tmp_path


def test_fim_template_from_the_tokenizers_tokens(tmp_path):
    backend = TokenizerBackend(_folder(tmp_path, fim=True))
    assert find_fim_template(backend) == QWEN
    (text,) = fim_prompts(backend, ["def add(a, b):\n    "], "\n    return c")
    assert text == "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n    return c<|fim_middle|>"
    ids = backend.encode(text)
    marker_ids = [backend.tokenizer.token_to_id(m) for m in (QWEN.prefix, QWEN.suffix, QWEN.middle)]
    assert all(ids.count(i) == 1 for i in marker_ids)  # each marker is one special token
    with pytest.raises(RequestError, match="text prompts"):
        fim_prompts(backend, [[1, 2, 3]], "tail")


def test_no_fim_tokens_is_a_precise_400(tmp_path):
    backend = TokenizerBackend(_folder(tmp_path, fim=False))
    assert find_fim_template(backend) is None  # "<|fim_prefix|>" is several ordinary tokens
    with pytest.raises(RequestError, match="no fill-in-the-middle tokens") as e:
        fim_prompts(backend, ["x"], "y")
    assert e.value.param == "suffix"


def test_spm_order_renders_suffix_first():
    codestral = FIM_TEMPLATES[-1]
    assert codestral.render("A", "B") == "[SUFFIX]B[PREFIX]A"
