"""Tokenizer: a Hugging Face ``tokenizer.json`` run by the Rust ``tokenizers`` library. No torch.

Loading follows what ``transformers.AutoTokenizer.from_pretrained(folder)`` (v5) does for a
folder with a ``tokenizer.json``, so ids and text match it: the post-processor in
``tokenizer.json`` decides whether BOS/EOS are added (transformers 5 ignores ``add_bos_token`` /
``add_eos_token`` from ``tokenizer_config.json`` once a ``tokenizer.json`` exists), and named
special tokens missing from the vocabulary are added as special tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, processors
from tokenizers import Tokenizer as RustTokenizer

from minerva.errors import ModelLoadError, RequestError
from minerva.tokenizer.chat_template import render_chat_template, select_chat_template

SPECIAL_TOKEN_ATTRIBUTES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
# transformers writes this sentinel when a tokenizer has no length limit.
_NO_MAX_LENGTH = int(1e20)
_ADDED_TOKEN_FIELDS = ("single_word", "lstrip", "rstrip", "normalized", "special")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(
            f"{path} is not valid JSON ({e}); re-download or re-save the file"
        ) from None
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from None


def _token_content(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _added_token(value: Any, force_special: bool) -> AddedToken:
    if isinstance(value, dict):
        kwargs = {k: value[k] for k in _ADDED_TOKEN_FIELDS if k in value}
        if force_special:
            kwargs["special"] = True
        return AddedToken(value["content"], **kwargs)
    return AddedToken(value, special=True)


class Tokenizer:
    """Text <-> token ids for one model, plus its chat template (HF semantics)."""

    def __init__(
        self,
        backend: RustTokenizer,
        config: dict[str, Any] | None = None,
        chat_template: str | dict[str, str] | None = None,
        name: str = "",
    ) -> None:
        config = dict(config or {})
        self.name = name
        self.backend = backend
        # transformers disables both per call unless asked; encode() never truncates or pads.
        backend.no_truncation()
        backend.no_padding()
        backend.encode_special_tokens = bool(config.get("split_special_tokens", False))
        self.special_tokens_map: dict[str, str] = {}
        for attr in SPECIAL_TOKEN_ATTRIBUTES:
            content = _token_content(config.get(attr))
            if content is not None:
                self.special_tokens_map[attr] = content
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        if isinstance(extra, dict):  # model-specific named tokens, e.g. {"image_token": "<image>"}
            extra = list(extra.values())
        self.extra_special_tokens = [c for c in map(_token_content, extra) if c is not None]
        self._add_missing_special_tokens(config, extra)
        if backend.post_processor is None:
            backend.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
        self.chat_template = chat_template
        max_len = config.get("model_max_length")
        self.model_max_length: int | None = (
            int(max_len) if isinstance(max_len, (int, float)) and max_len < _NO_MAX_LENGTH else None
        )
        model_type = type(backend.model).__name__
        # transformers skips this cleanup for BPE models (it would delete real spaces).
        self._clean_up_spaces = (
            bool(config.get("clean_up_tokenization_spaces")) and model_type != "BPE"
        )
        # What encode() really adds (the post-processor's choice, not tokenizer_config's flags).
        empty = backend.encode("", add_special_tokens=True).ids
        self.add_bos_token: bool = bool(empty) and empty[0] == self.bos_token_id
        self.add_eos_token: bool = (
            len(empty) > self.add_bos_token and empty[-1] == self.eos_token_id
        )

    def _add_missing_special_tokens(self, config: dict[str, Any], extra: list[Any]) -> None:
        present = {t.content for t in self.backend.get_added_tokens_decoder().values()}
        missing = []
        for attr in SPECIAL_TOKEN_ATTRIBUTES:
            value = config.get(attr)
            if _token_content(value) is not None:
                missing.append(_added_token(value, force_special=True))
        missing += [_added_token(v, force_special=False) for v in extra if _token_content(v)]
        missing = [t for t in missing if t.content not in present]
        if missing:
            self.backend.add_tokens(missing)

    @classmethod
    def from_folder(cls, path: str | Path) -> Tokenizer:
        """Load ``tokenizer.json`` (+ optional ``tokenizer_config.json`` and chat templates)."""
        folder = Path(path)
        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ModelLoadError(
                f"no tokenizer.json in {folder}: Minerva needs a tokenizer.json (a Hugging Face "
                "fast tokenizer). Convert a slow one (tokenizer.model / vocab.json) with "
                "`AutoTokenizer.from_pretrained(folder).save_pretrained(folder)` from transformers"
            )
        try:
            text = tokenizer_file.read_text(encoding="utf-8")
            backend = RustTokenizer.from_str(text)
        except Exception as e:  # bad UTF-8 or JSON, unknown model type, missing fields, ...
            _read_json(tokenizer_file)  # names the JSON parse error when that is the cause
            raise ModelLoadError(
                f"{tokenizer_file} could not be read by the tokenizers library ({e}); "
                "re-download it, or upgrade `tokenizers` if the file is newer than it"
            ) from None
        config: dict[str, Any] = {}
        if (folder / "tokenizer_config.json").is_file():
            config = _read_json(folder / "tokenizer_config.json")
            if not isinstance(config, dict):
                raise ModelLoadError(f"{folder / 'tokenizer_config.json'} must hold a JSON object")
        # Old folders keep their special tokens in special_tokens_map.json (it overrides).
        legacy_map = folder / "special_tokens_map.json"
        if "added_tokens_decoder" not in config and legacy_map.is_file():
            overrides = _read_json(legacy_map)
            if isinstance(overrides, dict):
                config.update(overrides)
        return cls(backend, config, _load_chat_template(folder, config), name=str(folder))

    # --- ids <-> text -------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; BOS/EOS added as the tokenizer.json post-processor says."""
        try:
            return self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        except TypeError:  # the Rust side refuses str it cannot encode as UTF-8
            if isinstance(text, str) and not _utf8_encodable(text):
                raise RequestError(
                    "the prompt contains a lone UTF-16 surrogate (\\ud800-\\udfff), which is "
                    "not text: send valid Unicode",
                    param="prompt",
                ) from None
            raise

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (same as transformers' ``decode``)."""
        text = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return _clean_up_tokenization(text) if self._clean_up_spaces else text

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str | None]:
        """Vocabulary strings (e.g. ``'▁Hello'``, ``'Ġworld'``, ``'<0xE4>'``) of ``ids``."""
        return [self.backend.id_to_token(i) for i in ids]

    def id_to_piece(self, token_id: int) -> str | None:
        """Vocabulary string of one id (SentencePiece's IdToPiece); None if out of range."""
        return self.backend.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        """Id of a vocabulary string (or added token), None if absent."""
        return self.backend.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        """Number of tokens including added tokens (transformers' ``len(tokenizer)``)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def _special_id(self, attr: str) -> int | None:
        content = self.special_tokens_map.get(attr)
        return None if content is None else self.backend.token_to_id(content)

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._special_id("unk_token")

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of the named special tokens, then the extra ones (transformers' order, no repeats)."""
        tokens = dict.fromkeys([*self.special_tokens_map.values(), *self.extra_special_tokens])
        ids = [self.backend.token_to_id(t) for t in tokens]
        return [i for i in ids if i is not None]

    # --- chat ---------------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        chat_template: str | None = None,
        **extra: Any,
    ) -> str:
        """Render ``messages`` with the model's chat template (or ``chat_template``: a template
        name or a Jinja source). Extra keywords reach the template (e.g. ``enable_thinking``)."""
        template = select_chat_template(self.chat_template, chat_template, tools)
        context = {**self.special_tokens_map, **extra}
        return render_chat_template(
            template, messages, add_generation_prompt=add_generation_prompt, tools=tools, **context
        )

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> list[int]:
        """Prompt ids for a chat. The template writes BOS itself, so no special tokens are
        added on top (as transformers' ``apply_chat_template(tokenize=True)``)."""
        prompt = self.apply_chat_template(messages, add_generation_prompt, tools, **extra)
        return self.encode(prompt, add_special_tokens=False)

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size})"


def _load_chat_template(folder: Path, config: dict[str, Any]) -> str | dict[str, str] | None:
    """chat_template.jinja and additional_chat_templates/*.jinja win over tokenizer_config.json."""
    templates: dict[str, str] = {}
    if (folder / "chat_template.jinja").is_file():
        templates["default"] = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    extra_dir = folder / "additional_chat_templates"
    if extra_dir.is_dir():
        for file in sorted(extra_dir.glob("*.jinja")):
            templates[file.name.removesuffix(".jinja")] = file.read_text(encoding="utf-8")
    if not templates:
        value = config.get("chat_template")
        if isinstance(value, list):
            return {t["name"]: t["template"] for t in value if isinstance(t, dict) and "name" in t}
        return value if isinstance(value, str) else None
    return templates["default"] if list(templates) == ["default"] else templates


def _clean_up_tokenization(text: str) -> str:
    """transformers' clean_up_tokenization (WordPiece-era space fixes)."""
    for old, new in (
        (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
        (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
    ):  # fmt: skip
        text = text.replace(old, new)
    return text


def _utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
