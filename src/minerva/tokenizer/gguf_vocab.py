"""Tokenizer from a GGUF file's ``tokenizer.*`` metadata, tokenizing as llama.cpp does. No torch.

The vocabulary becomes a Hugging Face ``tokenizers`` object so the :class:`Tokenizer` wrapper and
the streaming detokenizer work unchanged:

- ``llama`` (SentencePiece): a BPE model whose merges are ranked by the score of the token they
  make, byte fallback to ``<0xNN>``, "▁" for spaces and a "▁" prepended to each text piece
  (add_space_prefix). Where scores tie in a way no merge ranking can express, llama.cpp's merge
  loop runs in Python as a pre-tokenizer (gguf_spm.py): the one hand-written tokenizer part.
- ``gpt2`` (byte-level BPE): the file's merges, the regex pre-tokenizer that
  ``tokenizer.ggml.pre`` names (gguf_pretokenizers.py), GPT-2's byte-to-unicode mapping.
- ``gemma4`` (SentencePiece-style BPE): the file's merges on raw UTF-8 with "▁" for spaces.

Control and unknown tokens are special (matched in text only with parse_special, dropped by
``decode(skip_special_tokens=True)``); user-defined tokens are always matched and decoded.
Not reproduced, on purpose: llama.cpp's decode-time space clean-up for some BPE vocabularies
(" ." -> ".", it breaks decode(encode(text)) == text); decoding "unused" tokens as nothing; the
made-up BOS/EOS id 11 of gpt2 vocabularies that name none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as RustTokenizer

from minerva.errors import ModelLoadError
from minerva.tokenizer.gguf_eog import EOG_TEXTS
from minerva.tokenizer.gguf_pretokenizers import PreTokenizerSpec, pre_tokenizer_spec
from minerva.tokenizer.gguf_spm import SpmSplitter, spm_merges
from minerva.tokenizer.hf_tokenizer import Tokenizer

# llama.cpp's token types (tokenizer.ggml.token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_SPECIAL_IDS = {  # GGUF key suffix -> tokenizer_config attribute
    "bos_token_id": "bos_token",
    "eos_token_id": "eos_token",
    "unknown_token_id": "unk_token",
    "padding_token_id": "pad_token",
    "seperator_token_id": "sep_token",  # sic: llama.cpp's spelling
    "cls_token_id": "cls_token",
    "mask_token_id": "mask_token",
}
_SPM_DEFAULT_IDS = {"bos_token": 1, "eos_token": 2, "unk_token": 0}
_FIX = "re-convert the model with llama.cpp's convert_hf_to_gguf.py, or use the HF model folder"
_SPACE = "▁"
_PHI3_KEEP_SPACE = ("<unk>", "<s>", "<|endoftext|>")


def tokenizer_from_gguf_metadata(
    fields: Mapping[str, Any], parse_special: bool = True, name: str = ""
) -> Tokenizer:
    """A :class:`Tokenizer` from decoded GGUF metadata (python str/int/float/list by key):
    the ``tokenizer.*`` keys, and ``general.name`` (llama.cpp keys one quirk on it).

    ``parse_special``: control tokens written in the text (e.g. "<|im_start|>" from a chat
    template) become their ids, as llama.cpp's server does; False tokenizes them as text, as
    llama.cpp's test vectors do.
    """
    model = fields.get("tokenizer.ggml.model")
    tokens = _tokens(fields, name)
    types = _int_list(fields, "tokenizer.ggml.token_type", len(tokens), default=NORMAL)
    # llama.cpp makes end-of-generation markers control tokens whatever the file says.
    types = [CONTROL if t in EOG_TEXTS else k for t, k in zip(tokens, types)]
    if model == "llama":
        scores = _float_list(fields, "tokenizer.ggml.scores", len(tokens))
        backend, spec = _spm_backend(tokens, types, scores, fields), None
    elif model in ("gpt2", "gemma4"):
        pre = "gemma4" if model == "gemma4" else fields.get("tokenizer.ggml.pre")
        spec = pre_tokenizer_spec(pre) if pre is None or isinstance(pre, str) else None
        if spec is None:
            raise ModelLoadError(
                f"{name or 'this GGUF file'} uses the BPE pre-tokenizer {pre!r}, which Minerva "
                "does not know; use the model's Hugging Face folder (tokenizer.json) instead"
            )
        backend = _bpe_backend(tokens, fields, spec, name)
    elif model is None:
        raise ModelLoadError(
            f"{name or 'this GGUF file'} has no tokenizer (tokenizer.ggml.model is missing); {_FIX}"
        )
    else:
        raise ModelLoadError(
            f"{name or 'this GGUF file'} uses the tokenizer model {model!r}; Minerva reads "
            "'llama' (SentencePiece) and 'gpt2' (BPE) vocabularies. Use the model's Hugging "
            "Face folder (tokenizer.json) instead"
        )
    _add_special_tokens(backend, tokens, types, _strips_after_special(fields))
    config = _special_token_config(fields, tokens, types, model, spec)
    add_bos = _flag(fields, "add_bos_token", _default_add_bos(model, spec))
    add_eos = _flag(fields, "add_eos_token", False)
    backend.post_processor = _post_processor(config, tokens, add_bos, add_eos, name)
    config["split_special_tokens"] = not parse_special
    return Tokenizer(backend, config, _chat_template(fields), name=name)


def tokenizer_from_gguf_file(path: str | Path, parse_special: bool = True) -> Tokenizer:
    """Read the ``tokenizer.*`` metadata of a GGUF file with the ``gguf`` package (its reader
    indexes every array element: seconds for a large vocabulary; the model loader passes the
    metadata it has already read to :func:`tokenizer_from_gguf_metadata` instead)."""
    try:
        from gguf import GGUFReader
    except ImportError:  # pragma: no cover - gguf is a dependency of the GGUF loader
        raise ModelLoadError(
            "reading GGUF files needs the gguf package: pip install gguf"
        ) from None
    try:
        reader = GGUFReader(str(path), "r")
        fields = {
            key: field.contents()
            for key, field in reader.fields.items()
            if key.startswith("tokenizer.") or key == "general.name"
        }
    except Exception as e:  # the reader raises many kinds on corrupt files, UTF-8 ones too
        raise ModelLoadError(
            f"cannot read the GGUF file {path}: {e}; re-download or re-convert it"
        ) from None
    return tokenizer_from_gguf_metadata(fields, parse_special=parse_special, name=str(path))


# --- metadata -------------------------------------------------------------------------------


def _tokens(fields: Mapping[str, Any], name: str) -> list[str]:
    tokens = fields.get("tokenizer.ggml.tokens")
    if (
        not isinstance(tokens, Sequence)
        or not tokens
        or not all(isinstance(t, str) for t in tokens)
    ):
        raise ModelLoadError(
            f"{name or 'this GGUF file'} has no token list (tokenizer.ggml.tokens); {_FIX}"
        )
    # llama.cpp renames empty tokens so every text maps to one id; text that is not UTF-8
    # (surrogate escapes from the reader) cannot be typed, so it gets such a name too. The
    # usual vocabulary has neither: one check of the whole list, not one per token.
    if not all(tokens) or not _valid_text("".join(tokens)):
        tokens = [_valid_text(t) or f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    if len(set(tokens)) != len(tokens):
        raise ModelLoadError(f"{name or 'this GGUF file'} has duplicate tokens; {_FIX}")
    return tokens


def _valid_text(token: str) -> str:
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:
        return ""
    return token


def _int_list(fields: Mapping[str, Any], key: str, n: int, default: int) -> list[int]:
    values = fields.get(key)
    if values is None:
        return [default] * n
    return _numbers(values, key, n, int)


def _float_list(fields: Mapping[str, Any], key: str, n: int) -> list[float]:
    values = fields.get(key)
    if values is None:
        return [0.0] * n
    return _numbers(values, key, n, float)


def _numbers(values: Any, key: str, n: int, kind: type) -> list:
    if isinstance(values, Sequence) and not isinstance(values, str) and len(values) >= n:
        try:
            return [kind(v) for v in values[:n]]
        except (TypeError, ValueError, OverflowError):
            pass
    raise ModelLoadError(f"{key} must be a list of {n} numbers (one per token); {_FIX}")


def _flag(fields: Mapping[str, Any], key: str, default: bool) -> bool:
    value = fields.get(f"tokenizer.ggml.{key}")
    return default if value is None else bool(value)


def _default_add_bos(model: str, spec: PreTokenizerSpec | None) -> bool:
    if model == "llama":
        return True
    return bool(spec and spec.add_bos)


def _chat_template(fields: Mapping[str, Any]) -> str | dict[str, str] | None:
    """``tokenizer.chat_template`` plus named ones (``tokenizer.chat_template.<name>``)."""
    templates = {
        key.removeprefix("tokenizer.chat_template."): value
        for key, value in fields.items()
        if key.startswith("tokenizer.chat_template.") and isinstance(value, str)
    }
    default = fields.get("tokenizer.chat_template")
    if not templates:
        return default if isinstance(default, str) else None
    if isinstance(default, str):
        templates["default"] = default
    return templates


def _special_token_config(
    fields: Mapping[str, Any],
    tokens: list[str],
    types: list[int],
    model: str,
    spec: PreTokenizerSpec | None,
) -> dict[str, Any]:
    """tokenizer_config-style names -> token texts, from the ``*_token_id`` keys. The wrapper
    makes these special tokens, so a pad/unk/... id that points at an ordinary token (some
    files pad with "!") is left out rather than turning that text special."""
    ids: dict[str, Any] = dict(_SPM_DEFAULT_IDS) if model == "llama" else {}
    for suffix, attr in _SPECIAL_IDS.items():
        value = fields.get(f"tokenizer.ggml.{suffix}")
        if value is not None:
            ids[attr] = value
    if spec is not None and not spec.has_bos:
        ids.pop("bos_token", None)
    config: dict[str, Any] = {"clean_up_tokenization_spaces": False}
    for attr, token_id in ids.items():
        if not isinstance(token_id, int) or not 0 <= token_id < len(tokens):
            continue  # out-of-range ids are ignored, as llama.cpp does
        if attr in ("bos_token", "eos_token") or types[token_id] in (CONTROL, UNKNOWN):
            config[attr] = tokens[token_id]
    return config


# --- backends -------------------------------------------------------------------------------


def _spm_backend(
    tokens: list[str], types: list[int], scores: list[float], fields: Mapping[str, Any]
) -> RustTokenizer:
    vocab = {t: i for i, t in enumerate(tokens)}
    unk = next((t for t, k in zip(tokens, types) if k == UNKNOWN), None)
    merges, exact = spm_merges(tokens, scores)
    bpe = models.BPE(
        vocab=vocab,
        merges=merges if exact else [],
        unk_token=unk,
        byte_fallback=True,
        ignore_merges=not exact,  # SpmSplitter's pieces are whole tokens
    )
    backend = RustTokenizer(bpe)
    steps: list[normalizers.Normalizer] = []
    add_space_prefix = _flag(fields, "add_space_prefix", True)
    if add_space_prefix:
        steps.append(normalizers.Prepend(_SPACE))
    steps.append(normalizers.Replace(" ", _SPACE))
    backend.normalizer = normalizers.Sequence(steps)
    if not exact:  # tied scores: llama.cpp's merge order, in Python
        backend.pre_tokenizer = pre_tokenizers.PreTokenizer.custom(SpmSplitter(tokens, scores))
    backend.decoder = _spm_decoder(strip_first_space=add_space_prefix)
    return backend


def _spm_decoder(strip_first_space: bool) -> decoders.Decoder:
    steps = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if strip_first_space:  # llama.cpp drops the space it prepended when encoding
        steps.append(decoders.Strip(" ", 1, 0))
    return decoders.Sequence(steps)


def _bpe_backend(
    tokens: list[str], fields: Mapping[str, Any], spec: PreTokenizerSpec, name: str
) -> RustTokenizer:
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = _merges(fields, vocab, name)
    bpe = models.BPE(
        vocab=vocab,
        merges=merges,
        ignore_merges=spec.ignore_merges,
        byte_fallback=not spec.byte_level,
    )
    backend = RustTokenizer(bpe)
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in spec.regexes]
    if spec.byte_level:
        splits.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
        backend.decoder = decoders.ByteLevel()
    else:
        backend.normalizer = normalizers.Replace(" ", _SPACE)
        backend.decoder = _spm_decoder(strip_first_space=False)
    backend.pre_tokenizer = pre_tokenizers.Sequence(splits)
    return backend


def _merges(fields: Mapping[str, Any], vocab: dict[str, int], name: str) -> list[tuple[str, str]]:
    """``tokenizer.ggml.merges`` ("a b" strings) as pairs; pairs whose parts or result are not
    tokens are dropped (llama.cpp could never use their result as a token either)."""
    raw = fields.get("tokenizer.ggml.merges")
    if not isinstance(raw, (list, tuple)) or not all(isinstance(m, str) for m in raw):
        raise ModelLoadError(
            f"{name or 'this GGUF file'} is a BPE vocabulary without merges "
            f"(tokenizer.ggml.merges); {_FIX}"
        )
    merges = []
    for merge in raw:
        cut = merge.find(" ", 1)  # llama.cpp splits at the first space after position 0
        if cut < 0:
            continue
        left, right = merge[:cut], merge[cut + 1 :]
        if left in vocab and right in vocab and left + right in vocab:
            merges.append((left, right))
    return merges


def _add_special_tokens(
    backend: RustTokenizer, tokens: list[str], types: list[int], rstrip: bool
) -> None:
    """Control/unknown tokens: special; user-defined: matched in text as is, never split.
    ``rstrip``: they swallow the whitespace after them (llama.cpp does so for Phi-3)."""
    added = []
    for token, kind in zip(tokens, types):
        if kind in (CONTROL, UNKNOWN, USER_DEFINED):
            strip = rstrip and token not in _PHI3_KEEP_SPACE
            special = kind != USER_DEFINED
            added.append(AddedToken(token, special=special, normalized=False, rstrip=strip))
    if added:
        backend.add_special_tokens([t for t in added if t.special])
        backend.add_tokens([t for t in added if not t.special])


def _strips_after_special(fields: Mapping[str, Any]) -> bool:
    """llama.cpp picks this by the model's name, not by a tokenizer key."""
    name = fields.get("general.name")
    return isinstance(name, str) and any(n in name.lower() for n in ("phi-3", "phi3"))


def _post_processor(
    config: dict[str, Any], tokens: list[str], add_bos: bool, add_eos: bool, name: str
) -> processors.PostProcessor:
    """BOS/EOS around the text when the file asks for them (tokenizer.ggml.add_*_token)."""
    before: list[str] = []
    after: list[str] = []
    special = []
    for attr, wanted, side in (("bos_token", add_bos, before), ("eos_token", add_eos, after)):
        if not wanted:
            continue
        text = config.get(attr)
        if text is None:
            raise ModelLoadError(
                f"{name or 'this GGUF file'} asks to add a {attr} but names none; {_FIX}"
            )
        side.append(text)
        special.append((text, tokens.index(text)))
    single = [*before, "$A", *after]
    pair = [*single, *before, "$B:1", *after]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
