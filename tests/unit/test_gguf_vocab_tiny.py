"""GGUF vocabularies written with gguf.GGUFWriter: tiny SPM and BPE vocabularies whose token ids
are worked out by hand from llama.cpp's algorithms (no download needed)."""

from __future__ import annotations

import random

import pytest

from minerva.errors import ModelLoadError
from minerva.tokenizer import IncrementalDetokenizer
from minerva.tokenizer.gguf_eog import eog_token_ids
from minerva.tokenizer.gguf_vocab import tokenizer_from_gguf_file, tokenizer_from_gguf_metadata

gguf = pytest.importorskip("gguf")

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6
BYTE0 = 3  # id of <0x00> in the SPM vocabulary
# id: text, score (the higher, the earlier llama.cpp merges it)
SPM_TOKENS = {259: ("▁", -1.0), 260: ("a", -2.0), 261: ("b", -3.0), 262: ("▁a", -4.0),
              263: ("ab", -5.0), 264: ("▁ab", -6.0), 265: ("ba", -7.0)}  # fmt: skip
TOOL = 266
TEMPLATE = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"


def _spm_fields(tied: bool = False) -> dict:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256
    scores = [0.0] * len(tokens)
    for text, score in SPM_TOKENS.values():
        tokens.append(text)
        types.append(NORMAL)
        scores.append(0.0 if tied else score)
    tokens.append("<tool>")
    types.append(USER_DEFINED)
    scores.append(0.0)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.chat_template": TEMPLATE,
    }


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (bytes that print stand for themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shifted = iter(range(256, 512))
    return {b: chr(b) if b in keep else chr(next(shifted)) for b in range(256)}


BPE_MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"]


def _bpe_fields() -> dict:
    tokens = list(_bytes_to_unicode().values())
    tokens += [m.replace(" ", "") for m in BPE_MERGES] + ["<|endoftext|>", "<tool>"]
    types = [NORMAL] * (len(tokens) - 2) + [CONTROL, USER_DEFINED]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": BPE_MERGES,
        "tokenizer.ggml.bos_token_id": len(tokens) - 2,
        "tokenizer.ggml.eos_token_id": len(tokens) - 2,
    }


def _write_gguf(path, fields: dict) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(fields["tokenizer.ggml.model"])
    if "tokenizer.ggml.pre" in fields:
        writer.add_tokenizer_pre(fields["tokenizer.ggml.pre"])
    writer.add_token_list(fields["tokenizer.ggml.tokens"])
    writer.add_token_types(fields["tokenizer.ggml.token_type"])
    if "tokenizer.ggml.scores" in fields:
        writer.add_token_scores(fields["tokenizer.ggml.scores"])
    if "tokenizer.ggml.merges" in fields:
        writer.add_token_merges(fields["tokenizer.ggml.merges"])
    writer.add_bos_token_id(fields["tokenizer.ggml.bos_token_id"])
    writer.add_eos_token_id(fields["tokenizer.ggml.eos_token_id"])
    if "tokenizer.ggml.add_bos_token" in fields:
        writer.add_add_bos_token(fields["tokenizer.ggml.add_bos_token"])
    if "tokenizer.chat_template" in fields:
        writer.add_chat_template(fields["tokenizer.chat_template"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    path = tmp_path_factory.mktemp("spm") / "spm.gguf"
    _write_gguf(path, _spm_fields())
    return tokenizer_from_gguf_file(path)


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    path = tmp_path_factory.mktemp("bpe") / "bpe.gguf"
    _write_gguf(path, _bpe_fields())
    return tokenizer_from_gguf_file(path)


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("ab ab", [264, 264]),  # ▁a first (best score), then ▁ab, for each word
        ("bab", [259, 261, 263]),  # "ab" outscores the leftmost "ba"
        ("é", [259, BYTE0 + 0xC3, BYTE0 + 0xA9]),  # unknown character: UTF-8 byte tokens
        ("", []),
    ],
)
def test_spm_encode_decode(spm, text, ids):
    assert spm.encode(text, add_special_tokens=False) == ids
    assert spm.decode(ids) == text


def test_spm_user_defined_token():
    tok = tokenizer_from_gguf_metadata(_spm_fields())
    # Always split out, and the text after it gets its own "▁" prefix, which decoding keeps
    # (as llama.cpp: only the first token's leading space is dropped).
    assert tok.encode("a<tool>b", add_special_tokens=False) == [262, TOOL, 259, 261]
    assert tok.decode([262, TOOL, 259, 261]) == "a<tool> b"


def test_spm_specials_and_bos(spm):
    assert spm.encode("ab") == [1, 264]  # add_bos_token
    assert spm.encode("<s>a", add_special_tokens=False) == [1, 262]  # parsed, then "▁a"
    assert spm.decode([1, 264, 2]) == "ab"
    # As llama.cpp: the "▁" prefixed after a special token stays a space.
    assert spm.decode([1, 264, 2], skip_special_tokens=False) == "<s> ab</s>"
    assert (spm.bos_token_id, spm.eos_token_id, spm.unk_token_id) == (1, 2, 0)
    assert spm.add_bos_token and not spm.add_eos_token
    prompt = spm.apply_chat_template([{"role": "user", "content": "ab"}])
    assert prompt == "<s>ab</s>"
    assert spm.encode_chat([{"role": "user", "content": "ab"}]) == [1, 264, 2]


def test_spm_parse_special_off_tokenizes_control_text(tmp_path):
    tok = tokenizer_from_gguf_metadata(_spm_fields(), parse_special=False)
    lt, s, gt = (BYTE0 + ord(c) for c in "<s>")
    assert tok.encode("<s>a", add_special_tokens=False) == [259, lt, s, gt, 260]
    assert tok.encode("a<tool>", add_special_tokens=False) == [262, TOOL]  # user-defined


def test_spm_tied_scores_merge_leftmost():
    # All scores equal: llama.cpp merges the leftmost pair ("ba"), which no BPE ranking does.
    tok = tokenizer_from_gguf_metadata(_spm_fields(tied=True))
    assert tok.encode("bab", add_special_tokens=False) == [259, 265, 261]
    assert tok.encode("ab ab", add_special_tokens=False) == [264, 264]
    assert tok.decode([259, 265, 261]) == "bab"


def test_spm_streaming_detokenizer(spm):
    ids = spm.encode("ab é bab", add_special_tokens=False)
    detok = IncrementalDetokenizer(spm, prompt_token_ids=[1])
    text = "".join(detok.update([i])[0] for i in ids) + detok.flush()
    assert text == "ab é bab"


# BPE ids: 0-255 are the bytes (GPT-2's characters), then one token per merge, in order.
HELLO, G_WORLD = 256 + 3, 256 + 8


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("hello world", [HELLO, G_WORLD]),
        ("hello  worlds!", [HELLO, ord(" "), G_WORLD, ord("s"), ord("!")]),  # " " then " worlds"
        ("hel", [256, ord("l")]),  # "he" merges first; "el" is no merge
        ("é", [0xC3, 0xA9]),  # bytes of a UTF-8 character
    ],
)
def test_bpe_encode_decode(bpe, text, ids):
    assert bpe.encode(text, add_special_tokens=False) == ids
    assert bpe.decode(ids) == text


def test_bpe_special_tokens(bpe):
    eot, tool = 256 + len(BPE_MERGES), 256 + len(BPE_MERGES) + 1
    assert bpe.encode("hello<|endoftext|>", add_special_tokens=False) == [HELLO, eot]
    assert bpe.encode("<tool>hello") == [tool, HELLO]  # gpt-2: no add_bos by default
    assert bpe.decode([HELLO, eot, tool]) == "hello<tool>"
    assert bpe.eos_token_id == eot


def test_eog_token_ids():
    fields = _bpe_fields()
    fields["tokenizer.ggml.tokens"] = [*fields["tokenizer.ggml.tokens"], "<|im_end|>"]
    eos = fields["tokenizer.ggml.eos_token_id"]
    assert eog_token_ids(fields) == [eos, len(fields["tokenizer.ggml.tokens"]) - 1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tokenizer.ggml.model": None}, "tokenizer.ggml.model is missing"),
        ({"tokenizer.ggml.model": "bert"}, "'bert'"),
        ({"tokenizer.ggml.pre": "no-such-pre"}, "'no-such-pre'"),
        ({"tokenizer.ggml.merges": None}, "without merges"),
        ({"tokenizer.ggml.tokens": []}, "no token list"),
        ({"tokenizer.ggml.tokens": ["a", "a"]}, "duplicate tokens"),
        ({"tokenizer.ggml.token_type": [1]}, "tokenizer.ggml.token_type"),
    ],
)
def test_bad_metadata_is_a_model_load_error(change, message):
    fields = {**_bpe_fields(), **change}
    with pytest.raises(ModelLoadError, match=message):
        tokenizer_from_gguf_metadata({k: v for k, v in fields.items() if v is not None})


def test_pad_id_on_an_ordinary_token_stays_ordinary():
    fields = {**_bpe_fields(), "tokenizer.ggml.padding_token_id": ord("!")}
    tok = tokenizer_from_gguf_metadata(fields)
    assert tok.pad_token_id is None
    assert tok.encode("hello!", add_special_tokens=False) == [HELLO, ord("!")]
    assert tok.decode([HELLO, ord("!")]) == "hello!"


def test_token_that_is_not_utf8_is_renamed():
    fields = _bpe_fields()
    tokens = list(fields["tokenizer.ggml.tokens"])
    tokens[255] = "\udcff"  # a reader's surrogate escape for a stray byte
    tok = tokenizer_from_gguf_metadata({**fields, "tokenizer.ggml.tokens": tokens})
    assert tok.convert_ids_to_tokens([255]) == ["[EMPTY_255]"]
    assert tok.encode("hello world", add_special_tokens=False) == [HELLO, G_WORLD]


def test_unreadable_file_is_a_model_load_error(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 20)
    with pytest.raises(ModelLoadError, match="broken.gguf"):
        tokenizer_from_gguf_file(path)
    with pytest.raises(ModelLoadError, match="missing.gguf"):
        tokenizer_from_gguf_file(tmp_path / "missing.gguf")


def test_phi3_special_tokens_swallow_following_spaces():
    fields = _spm_fields()
    assert tokenizer_from_gguf_metadata(fields).encode("<tool> a", add_special_tokens=False) == [
        TOOL,
        259,
        262,
    ]  # "▁" prefix + " a"
    phi3 = tokenizer_from_gguf_metadata({**fields, "general.name": "Phi-3 mini 4k"})
    assert phi3.encode("<tool> a", add_special_tokens=False) == [TOOL, 262]
    assert phi3.encode("<s> a", add_special_tokens=False) == [1, 259, 262]  # <s> keeps it


def test_spm_without_space_prefix():
    tok = tokenizer_from_gguf_metadata({**_spm_fields(), "tokenizer.ggml.add_space_prefix": False})
    assert tok.encode("ab", add_special_tokens=False) == [263]
    assert tok.encode(" ab", add_special_tokens=False) == [264]
    assert tok.decode([264]) == " ab"


@pytest.mark.parametrize("make", [_spm_fields, _bpe_fields])
def test_mutated_metadata_gives_a_tokenizer_or_a_model_load_error(make):
    """Every outcome of a wrong-typed or cut value is a clean error or a working tokenizer."""
    rng = random.Random(0)
    junk = [None, "x", -1, 10**12, 1.5, [], ["a b"], [1, 2], [None], "<s>", True, [[1]]]
    base = make()
    for _ in range(150):
        fields = dict(base)
        for key in rng.sample(sorted(fields), rng.randint(1, 3)):
            value = fields[key]
            if isinstance(value, list) and value and rng.random() < 0.5:
                fields[key] = value[: rng.randint(0, len(value) - 1)]  # cut short
            else:
                fields[key] = rng.choice(junk)
        try:
            tok = tokenizer_from_gguf_metadata({k: v for k, v in fields.items() if v is not None})
        except ModelLoadError:
            continue
        ids = tok.encode("hello ab é <s>")
        assert isinstance(tok.decode(ids), str)
