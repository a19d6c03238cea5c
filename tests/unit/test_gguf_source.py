"""GGUF as a ModelSource, against references: a tiny transformers model saved as an HF folder and
written as GGUF in llama.cpp's conventions opens to the same config and the same weights; the
header parse equals the gguf package's GGUFReader; quantized weights equal gguf's quantize()."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from minerva.errors import ModelLoadError
from minerva.loader import open_model
from minerva.loader.gguf_file import read_gguf
from minerva.quant.gguf_types import GGMLType, QuantizedTensor
from tests.gguf_fixtures import CHAT_TEMPLATE, permute, write_gguf
from tests.tiny_models import build_tiny_model

gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")


def both(tmp_path, arch="llama", float_type="F32", **overrides):
    """(HF folder source, GGUF source, transformers model) of one tiny random model."""
    model = build_tiny_model(tmp_path / "hf", arch, **overrides)
    path = write_gguf(model, tmp_path / "model.gguf", float_type=float_type)
    return open_model(tmp_path / "hf"), open_model(path), model


def config_fields(source) -> dict:
    return {k: v for k, v in vars(source.config).items() if k not in ("raw", "dtype")}


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_config_and_weights_equal_the_hf_folder(tmp_path, arch):
    hf, gg, _ = both(tmp_path, arch)
    assert config_fields(gg) == config_fields(hf)
    assert gg.config.dtype == "float32" and gg.format == "gguf" and gg.quantization is None
    ref = dict(hf.iter_weights(progress=False))
    got = dict(gg.iter_weights(progress=False))
    assert set(got) == set(ref)
    for name, tensor in ref.items():
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], tensor), name  # Q/K un-permuted exactly


@pytest.mark.parametrize("float_type, torch_dtype", [("F16", torch.float16), ("BF16", None)])
def test_half_precision_files(tmp_path, float_type, torch_dtype):
    hf, gg, _ = both(tmp_path, "llama", float_type=float_type)
    assert gg.config.dtype == {"F16": "float16", "BF16": "bfloat16"}[float_type]
    got = dict(gg.iter_weights(dtype=torch.float32, progress=False))
    for name, tensor in hf.iter_weights(progress=False):
        if tensor.dim() == 1:  # llama.cpp keeps norms in F32
            expected = tensor
        elif torch_dtype is not None:
            expected = tensor.to(torch_dtype).float()
        else:  # gguf's reference BF16 rounding
            bits = gguf.quants.quantize(tensor.numpy(), gguf.GGMLQuantizationType.BF16)
            expected = torch.from_numpy(
                gguf.quants.dequantize(bits, gguf.GGMLQuantizationType.BF16)
            )
        assert torch.equal(got[name], expected.reshape(tensor.shape)), name


def test_requested_dtype_and_tied_embeddings(tmp_path):
    hf, gg, _ = both(tmp_path, "qwen2", tie_word_embeddings=True)
    assert gg.config.tie_word_embeddings is True
    got = dict(gg.iter_weights(dtype="bfloat16", progress=False))
    assert "lm_head.weight" not in got and "output.weight" not in gg.metadata
    emb = dict(hf.iter_weights(progress=False))["model.embed_tokens.weight"]
    assert torch.equal(got["model.embed_tokens.weight"], emb.to(torch.bfloat16))


def test_llama_attention_bias_is_unpermuted_too(tmp_path):
    model = build_tiny_model(tmp_path / "hf", "llama", attention_bias=True)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_()  # transformers initializes biases to zero
    model.save_pretrained(tmp_path / "hf")
    hf = open_model(tmp_path / "hf")
    gg = open_model(write_gguf(model, tmp_path / "model.gguf"))
    assert gg.config.attention_bias and gg.config.qkv_bias and gg.config.o_proj_bias
    ref, got = dict(hf.iter_weights(progress=False)), dict(gg.iter_weights(progress=False))
    name = "model.layers.1.self_attn.k_proj.bias"
    assert torch.equal(got[name], ref[name])
    assert not torch.equal(torch.from_numpy(permute(ref[name].numpy(), 2)), ref[name])


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0"])
def test_quantized_weights_are_the_reference_blocks(tmp_path, quant):
    model = build_tiny_model(tmp_path / "hf", "llama")
    gg = open_model(write_gguf(model, tmp_path / "q.gguf", quant_type=quant))
    assert gg.quantization == quant and gg.config.dtype is None
    qtype = gguf.GGMLQuantizationType[quant]
    state = model.state_dict()
    for name, tensor in gg.iter_weights(dtype=torch.float32, progress=False):
        if state[name].dim() == 1:
            assert isinstance(tensor, torch.Tensor) and torch.equal(tensor, state[name])
            continue
        assert isinstance(tensor, QuantizedTensor) and tensor.ggml_type == GGMLType[quant]
        assert tensor.shape == tuple(state[name].shape) and tensor.data.dtype == torch.uint8
        # Rows quantize independently: the loader's un-permuted rows equal quantizing HF's.
        expected = gguf.quants.quantize(state[name].numpy(), qtype)
        assert np.array_equal(tensor.data.numpy(), expected), name


def test_header_parse_equals_gguf_reader(tmp_path):
    model = build_tiny_model(tmp_path / "hf", "qwen2")
    path = write_gguf(
        model,
        tmp_path / "m.gguf",
        float_type="F16",
        metadata={"test.strings": ["a", "b\u00e9"], "test.ints": [1, 2, 3], "test.flag": True},
    )
    ours, ref = read_gguf(path), gguf.GGUFReader(path)
    assert set(ours.metadata) == {f.name for f in ref.fields.values()} - {"GGUF.version"} - {
        "GGUF.tensor_count",
        "GGUF.kv_count",
    }
    for field in ref.fields.values():
        if field.name.startswith("GGUF."):
            continue
        expected = field.contents()
        got = ours.metadata[field.name]
        assert got == pytest.approx(expected) if isinstance(expected, float) else got == expected
    assert len(ours.tensors) == len(ref.tensors)
    for t in ref.tensors:
        info = ours.tensors[t.name]
        assert info.shape == tuple(int(d) for d in reversed(t.shape))
        assert (info.ggml_type, info.offset, info.nbytes) == (
            t.tensor_type,
            t.data_offset,
            t.n_bytes,
        )


def test_split_files(tmp_path):
    model = build_tiny_model(tmp_path / "hf", "llama")
    writer_path = tmp_path / "split.gguf"
    write_gguf(model, writer_path, split_max_tensors=8)
    shards = sorted(tmp_path.glob("split-*-of-*.gguf"))
    assert len(shards) > 2
    ref = dict(open_model(tmp_path / "hf").iter_weights(progress=False))
    for shard in (shards[0], shards[-1]):
        source = open_model(shard)
        assert source.files == shards and source.config.num_hidden_layers == 2
        got = dict(source.iter_weights(progress=False))
        assert set(got) == set(ref) and all(torch.equal(got[n], ref[n]) for n in ref)
    shards[1].unlink()
    with pytest.raises(ModelLoadError, match=f"{shards[1].name} is missing.*download every"):
        open_model(shards[0])


def test_linear_rope_scaling(tmp_path):
    hf, gg, _ = both(tmp_path, "llama", rope_scaling={"rope_type": "linear", "factor": 2.0})
    assert (
        gg.config.rope_scaling == hf.config.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    )


def test_llama3_rope_from_rope_freqs(tmp_path):
    """llama.cpp stores Llama 3 scaling as a rope_freqs tensor: the factors between transformers'
    default and llama3 inverse frequencies. The loader recovers the HF rope_scaling from them."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_theta": 500000.0,
    }
    model = build_tiny_model(
        tmp_path / "hf", "llama", hidden_size=128, num_attention_heads=2, rope_parameters=rope
    )
    llama3_inv, _ = ROPE_INIT_FUNCTIONS["llama3"](model.config, "cpu")
    default_inv = 1.0 / (500000.0 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))
    factors = (default_inv / llama3_inv).numpy().astype(np.float32)
    path = write_gguf(model, tmp_path / "l3.gguf", extra_tensors={"rope_freqs.weight": factors})
    got = open_model(path).config.rope_scaling
    want = open_model(tmp_path / "hf").config.rope_scaling
    assert got.pop("rope_type") == want.pop("rope_type") == "llama3"
    assert got == pytest.approx(want, rel=1e-3)


def test_generation_defaults_eos_and_chat_template(tmp_path):
    model = build_tiny_model(tmp_path / "hf", "llama")
    meta = {
        "general.sampling.temp": 0.5,
        "general.sampling.top_k": 20,
        "tokenizer.ggml.eot_token_id": 7,
        "tokenizer.chat_template.tool_use": "{{ tools }}",
    }
    gg = open_model(write_gguf(model, tmp_path / "m.gguf", metadata=meta))
    assert gg.generation_defaults == {"temperature": 0.5, "top_k": 20}
    assert gg.eos_token_ids == [2, 7] and gg.config.bos_token_id == 1
    assert gg.chat_template == {"default": CHAT_TEMPLATE, "tool_use": "{{ tools }}"}


def test_tokenizer_absent_warns_and_tokenizer_path_plugs_in(tmp_path, caplog):
    from tests.tokenizer_fixtures import build_byte_level

    model = build_tiny_model(tmp_path / "hf", "llama", vocab_size=500)
    path = write_gguf(model, tmp_path / "m.gguf")
    with caplog.at_level(logging.WARNING):
        assert open_model(path).tokenizer is None
    assert "m.gguf has no tokenizer" in caplog.text and "--tokenizer" in caplog.text
    build_byte_level(tmp_path / "tok", vocab_size=500)
    source = open_model(path, tokenizer_path=tmp_path / "tok")
    assert source.tokenizer is not None and source.tokenizer.encode("hello")


def test_digest_is_the_files_sha256(tmp_path):
    import hashlib

    _, gg, _ = both(tmp_path)
    assert gg.digest() == "sha256:" + hashlib.sha256(gg.path.read_bytes()).hexdigest()
    assert gg.num_bytes == gg.path.stat().st_size


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_same_greedy_tokens_as_the_hf_folder(tmp_path, arch):
    from minerva import LLM, SamplingParams

    _, gg, _ = both(tmp_path, arch)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    prompt = [[5, 17, 99, 3, 42]]
    outs = []
    for model in (tmp_path / "hf", gg.path):
        llm = LLM(model=str(model), device="cpu", dtype="float32", progress=False)
        outs.append(llm.generate(prompt, params)[0].token_ids)
    assert outs[0] == outs[1] and len(outs[0]) == 8


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen3"])
def test_round_trip_through_our_exporter(tmp_path, arch):
    """loader/gguf_export writes, open_model reads: the config and weights come back."""
    from minerva.loader.gguf_export import float_plan
    from minerva.loader.gguf_export import write_gguf as export_gguf

    build_tiny_model(tmp_path / "hf", arch, rope_scaling={"rope_type": "linear", "factor": 2.0})
    gen = {"temperature": 0.6, "top_k": 30, "top_p": 0.9, "repetition_penalty": 1.1}
    (tmp_path / "hf" / "generation_config.json").write_text(json.dumps(gen))
    hf = open_model(tmp_path / "hf")
    out = export_gguf(
        hf.config,
        hf.iter_weights(progress=False),
        tmp_path / "out.gguf",
        float_plan(GGMLType.F32),
        file_type="f32",
        generation=hf.generation,
    )
    gg = open_model(out)
    assert gg.generation_defaults == pytest.approx(hf.generation_defaults)
    ids = ("bos_token_id", "eos_token_id")  # written with the tokenizer, which has none here
    drop = lambda fields: {k: v for k, v in fields.items() if k not in ids}  # noqa: E731
    assert drop(config_fields(gg)) == drop(config_fields(hf))
    ref, got = dict(hf.iter_weights(progress=False)), dict(gg.iter_weights(progress=False))
    assert set(got) == set(ref) and all(torch.equal(got[n], ref[n]) for n in ref)


def test_tokenizer_from_gguf_metadata_matches_the_hf_tokenizer(tmp_path):
    """With tokenizer metadata (written by our exporter through gguf.vocab), the GGUF source's
    own tokenizer encodes like the folder's tokenizer.json, and EOS comes from the file."""
    from minerva.loader.gguf_export import float_plan
    from minerva.loader.gguf_export import write_gguf as export_gguf
    from tests.tiny_models import build_tiny_text_model

    folder = build_tiny_text_model(tmp_path / "hf")
    hf = open_model(folder)
    out = export_gguf(
        hf.config,
        hf.iter_weights(progress=False),
        tmp_path / "tok.gguf",
        float_plan(GGMLType.F16),
        tokenizer_dir=folder,
        file_type="f16",
    )
    gg = open_model(out)
    text = "Hello world, this is a test. 123 don't"
    assert gg.tokenizer is not None
    assert gg.tokenizer.encode(text) == hf.tokenizer.encode(text)
    assert hf.tokenizer.eos_token_id in gg.eos_token_ids


def test_float_tensors_let_their_file_pages_go_once_consumed(tmp_path, monkeypatch):
    """A float tensor is converted (or copied by the model) as it is consumed: its mapped pages
    are released when the consumer asks for the next one, so loading an F16 file never holds
    the whole file and the model at once. Quantized tensors keep theirs until their method
    copies them (they carry the release instead)."""
    import minerva.loader.gguf as gguf_loader

    released: list[int] = []

    def recorder(mm, offset, nbytes):
        return lambda: released.append(offset)

    monkeypatch.setattr(gguf_loader, "_releaser", recorder)
    _, gg, _ = both(tmp_path, "llama", float_type="F16")
    offsets = {hf: gg.tensors[name][1].offset for name, hf in gg.hf_names.items()}
    seen = []
    for name, tensor in gg.iter_weights(dtype=torch.bfloat16, progress=False):
        assert released == [offsets[n] for n in seen]  # each earlier one, not this one yet
        assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.bfloat16
        seen.append(name)
    assert released == [offsets[n] for n in seen]


def test_file_type_names_are_the_gguf_packages():
    """The table that spares opening a file the gguf import names each type as gguf does,
    and a type outside it still gets the package's name."""
    gguf = pytest.importorskip("gguf")
    from minerva.loader.gguf_config import FILE_TYPE_NAMES, gguf_quantization

    for value, name in FILE_TYPE_NAMES.items():
        assert gguf.LlamaFileType(value).name.removeprefix("MOSTLY_") == name
    for member in gguf.LlamaFileType:
        if member.value not in (0, 1, 32):  # dense files report None
            expected = member.name.removeprefix("MOSTLY_")
            assert gguf_quantization({"general.file_type": member.value}, []) == expected
