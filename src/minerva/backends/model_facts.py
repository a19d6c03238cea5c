"""The half of the Backend protocol that describes the loaded model, shared by every backend:
its ModelInfo (the digest, which reads every weight byte, computed once and on first ask), its
tokenizer and chat template, and its end-of-sequence tokens, all from Minerva's ModelSource of
the files, whichever engine samples."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

from minerva.backends.base import ModelInfo
from minerva.errors import RequestError
from minerva.loader import ModelSource


class ModelFacts:
    """Mixin: a backend calls `_init_facts` in its __init__."""

    def _init_facts(
        self, source: ModelSource, tokenizer, eos_token_ids: Sequence[int], info: ModelInfo
    ) -> None:
        self._source = source
        self._tokenizer = tokenizer
        self._eos_token_ids = list(eos_token_ids)
        self._info = info  # all but the digest
        self._info_lock = threading.Lock()

    def _compute_digest(self) -> str:
        return self._source.digest()

    def model_info(self, digest: bool = True) -> ModelInfo:
        if not digest:
            return self._info
        with self._info_lock:  # one hash, however many threads ask
            if not self._info.digest:
                self._info = dataclasses.replace(self._info, digest=self._compute_digest())
            return self._info

    @property
    def max_model_len(self) -> int:
        return self._info.context_length

    @property
    def vocab_size(self) -> int:
        return self._info.vocab_size

    # -- tokenizer and chat template --------------------------------------------------
    @property
    def has_tokenizer(self) -> bool:
        return self._tokenizer is not None

    @property
    def chat_template(self) -> str | None:
        template = self._source.chat_template  # the tokenizer's, or the file's own (GGUF)
        if isinstance(template, dict):  # named templates: the default one, else the first
            template = template.get("default", next(iter(template.values()), None))
        return template

    @property
    def eos_token_ids(self) -> list[int]:
        return list(self._eos_token_ids)

    def encode(self, text: str) -> list[int]:
        return self._need_tokenizer("send token ids as the prompt", "prompt").encode(text)

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        tokenizer = self._need_tokenizer("read the output token ids instead", "prompt")
        return tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
        **template_kwargs: Any,
    ) -> list[int]:
        tokenizer = self._need_tokenizer("so chat is not available", "messages")
        return tokenizer.encode_chat(messages, add_generation_prompt, tools, **template_kwargs)

    def _need_tokenizer(self, fix: str, param: str):
        if self._tokenizer is None:
            raise RequestError(f"this model has no tokenizer: {fix}", param=param)
        return self._tokenizer
