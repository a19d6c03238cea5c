"""Tokenizer package: HF ``tokenizer.json`` via the ``tokenizers`` library, GGUF vocabularies
(tokenizing as llama.cpp does), sandboxed Jinja chat templates and streaming detokenization.
Never imports torch."""

from minerva.tokenizer.chat_template import (
    compile_chat_template,
    render_chat_template,
    select_chat_template,
)
from minerva.tokenizer.detokenizer import IncrementalDetokenizer
from minerva.tokenizer.gguf_eog import eog_token_ids
from minerva.tokenizer.gguf_vocab import tokenizer_from_gguf_file, tokenizer_from_gguf_metadata
from minerva.tokenizer.hf_tokenizer import Tokenizer

__all__ = [
    "IncrementalDetokenizer",
    "Tokenizer",
    "compile_chat_template",
    "eog_token_ids",
    "render_chat_template",
    "select_chat_template",
    "tokenizer_from_gguf_file",
    "tokenizer_from_gguf_metadata",
]
