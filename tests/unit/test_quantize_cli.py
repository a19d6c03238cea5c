"""`minerva quantize`: a GGUF file in llama.cpp's layout whose blocks are the reference bytes."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from minerva.cli import main
from minerva.demo import demo_model_path
from minerva.loader.checkpoint import iter_checkpoint_tensors
from minerva.loader.gguf_export import gguf_tensor_name
from minerva.loader.gguf_names import permute_rows
from minerva.loader.hf_config import load_model_config
from minerva.quant.gguf_mix import use_more_bits

gguf = pytest.importorskip("gguf")


def _reference_tensors() -> dict[str, np.ndarray]:
    """The demo model's float weights under llama.cpp's names, q/k rows permuted as it does."""
    config = load_model_config(demo_model_path())
    out = {}
    cpu = torch.device("cpu")
    for name, t in iter_checkpoint_tensors(demo_model_path(), cpu, torch.float32, progress=False):
        gname = gguf_tensor_name(name)
        if gname is None:
            continue
        if ".attn_q." in gname:
            t = permute_rows(t, config.num_attention_heads)
        elif ".attn_k." in gname:
            t = permute_rows(t, config.num_key_value_heads)
        out[gname] = t.numpy()
    return out


def test_q8_0_blocks_equal_the_reference_quantizer(tmp_path):
    path = tmp_path / "demo-q8_0.gguf"
    assert main(["quantize", str(demo_model_path()), str(path), "--type", "q8_0"]) == 0
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.file_type"].parts[-1][0] == 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    ref = _reference_tensors()
    assert {t.name for t in reader.tensors} == set(ref)
    for t in reader.tensors:
        if ref[t.name].ndim == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            assert np.array_equal(np.asarray(t.data), ref[t.name])
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
            expected = gguf.quants.quantize(ref[t.name], gguf.GGMLQuantizationType.Q8_0)
            assert np.array_equal(np.asarray(t.data).reshape(expected.shape), expected), t.name


def test_q4_k_m_follows_llama_cpp_mix_rules(tmp_path):
    path = tmp_path / "demo-q4_k_m.gguf"
    assert main(["quantize", str(demo_model_path()), str(path), "--type", "Q4_K_M"]) == 0
    reader = gguf.GGUFReader(path)
    config = load_model_config(demo_model_path())
    n = config.num_hidden_layers
    ref = _reference_tensors()
    q = gguf.GGMLQuantizationType
    for t in reader.tensors:
        if ref[t.name].ndim == 1:
            continue
        m = re.match(r"blk\.(\d+)\.(attn_v|ffn_down)\.", t.name)
        if t.name == "token_embd.weight":  # tied to the output: Q6_K
            want = q.Q6_K
        elif m and use_more_bits(int(m.group(1)), n):
            want = q.Q6_K
        else:
            want = q.Q4_K
        assert t.tensor_type == want, t.name
        deq = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(ref[t.name].shape)
        err = np.linalg.norm(deq - ref[t.name]) / np.linalg.norm(ref[t.name])
        assert err < (0.03 if want == q.Q6_K else 0.12), (t.name, err)


@pytest.mark.parametrize("name, ftype", [("iq4_xs", 30), ("iq4_nl", 25)])
def test_iq4_files_hold_iq4_blocks_that_gguf_py_and_llama_cpp_read(tmp_path, name, ftype):
    """Every weight in the IQ4 type (the tied embedding in Q6_K), decoding by gguf-py's
    reference close to the float weights; llama.cpp opens the file and evaluates a token."""
    path = tmp_path / f"demo-{name}.gguf"
    assert main(["quantize", str(demo_model_path()), str(path), "--type", name]) == 0
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.file_type"].parts[-1][0] == ftype  # LLAMA_FTYPE_MOSTLY_IQ4_*
    ref = _reference_tensors()
    q = gguf.GGMLQuantizationType
    for t in reader.tensors:
        if ref[t.name].ndim == 1:
            continue
        want = q.Q6_K if t.name == "token_embd.weight" else q[name.upper()]
        assert t.tensor_type == want, t.name
        deq = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(ref[t.name].shape)
        err = np.linalg.norm(deq - ref[t.name]) / np.linalg.norm(ref[t.name])
        assert err < (0.03 if want == q.Q6_K else 0.12), (t.name, err)
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, verbose=False)
    llm.eval(llm.tokenize(b"Hello", add_bos=True))
    logits = np.ctypeslib.as_array(
        llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)
    )
    assert np.isfinite(logits).all()


def test_bad_type_and_bad_output_are_clear_errors(tmp_path, capsys):
    out = tmp_path / "x.gguf"
    assert main(["quantize", str(demo_model_path()), str(out), "--type", "q9_9"]) == 1
    assert "q4_k_m" in capsys.readouterr().err
    assert main(["quantize", str(demo_model_path()), str(tmp_path / "x.bin")]) == 1
    assert ".gguf" in capsys.readouterr().err
    assert not out.exists()
