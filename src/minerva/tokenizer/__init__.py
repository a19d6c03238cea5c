"""Tokenizer package: HF ``tokenizer.json`` via the ``tokenizers`` library, sandboxed Jinja chat
templates and streaming detokenization. Never imports torch."""

from minerva.tokenizer.chat_template import (
    compile_chat_template,
    render_chat_template,
    select_chat_template,
)
from minerva.tokenizer.detokenizer import IncrementalDetokenizer
from minerva.tokenizer.hf_tokenizer import Tokenizer

__all__ = [
    "IncrementalDetokenizer",
    "Tokenizer",
    "compile_chat_template",
    "render_chat_template",
    "select_chat_template",
]
