"""`--quantization fp8` (quant/fp8.py) and `int8` (quant/int8.py): e4m3 or int8 codes with a
scale per row, quantized while a float checkpoint loads. The codes against each format's
rounding; the demo model (trained: no near ties) quantized in situ against Minerva's own run on
the weights decoded back to floats and saved as safetensors (the CPU runs the twin: the same
weights, float products)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from minerva import LLM, SamplingParams
from minerva.config import load_config
from minerva.demo import demo_model_path
from minerva.errors import ConfigError
from minerva.loader.checkpoint import iter_checkpoint_tensors
from minerva.quant import int4, int8
from minerva.quant.fp8 import FP8, FP8_MAX, dequantize_rows, quantize_rows

PROMPT = [1, 3088, 295, 263, 628, 327]  # "SQLite is a database that"
GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, logprobs=1)
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def test_rows_use_the_whole_range_and_round_to_e4m3():
    torch.manual_seed(0)
    w = torch.randn(6, 96) * torch.tensor([1e-3, 0.02, 1.0, 30.0, 0.5, 0.0])[:, None]
    codes, scale = quantize_rows(w)
    assert codes.dtype == FP8 and scale.dtype == torch.float32 and scale.shape == (6,)
    top = codes.float().abs().amax(dim=1)
    assert torch.equal(top[:5], torch.full((5,), FP8_MAX))  # each row's largest value -> 448
    assert not codes[5].float().any()  # an all-zero row stays zero
    deq = dequantize_rows(codes, scale)
    # e4m3 keeps 3 mantissa bits: round-to-nearest is within 2^-4 relative (2^-9 * scale
    # absolute below the smallest normal)
    bound = torch.maximum(w.abs() * 2**-4, scale[:, None] * 2**-9) * 1.0001
    assert bool(((deq - w).abs() <= bound).all())
    # and it is round to nearest: no other e4m3 value is closer
    ref = (w / scale[:, None]).to(FP8).float()
    assert torch.equal(codes.float(), ref)


def test_int8_rows_use_the_whole_range_and_round_to_nearest():
    torch.manual_seed(1)
    w = torch.randn(5, 96) * torch.tensor([1e-3, 0.02, 1.0, 30.0, 0.0])[:, None]
    w[1, 7] = -w[1].abs().max() * 1.5  # the largest magnitude negative: code -127
    codes, scale = int8.quantize_rows(w)
    assert codes.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (5,)
    top = codes.float().abs().amax(dim=1)
    assert torch.equal(top[:4], torch.full((4,), 127.0)) and codes[1, 7] == -127
    assert not codes[4].any()  # an all-zero row stays zero
    # round to nearest: within half a step of the scale, and no other code is closer
    err = (dequantize_rows(codes, scale) - w).abs()
    assert bool((err <= scale[:, None] / 2 * 1.0001).all())
    assert torch.equal(codes, torch.round(w / scale[:, None]).to(torch.int8))


def test_int4_groups_map_a_clipped_range_onto_16_codes():
    torch.manual_seed(2)
    w = torch.randn(3, 384) * torch.tensor([0.01, 1.0, 5.0])[:, None]
    w[2, 128:256] = 0.75  # an all-equal group: scale 0, every value its offset
    w[1, 5] = 40.0  # an outlier: clipping it costs less than stretching the other 127's step
    packed, scale, offset = int4.quantize_rows(w)
    assert packed.shape == (3, 192) and packed.dtype == torch.uint8
    assert scale.shape == offset.shape == (3, 3) and scale.dtype == torch.float16
    deq = int4.dequantize_rows(packed, scale, offset)
    assert bool((deq[2, 128:256] == 0.75).all())
    g = w.reshape(3, 3, 128)
    lo, hi = g.amin(dim=2), g.amax(dim=2)
    top = offset.float() + 15 * scale.float()
    assert bool((offset.float() >= lo - 1e-2).all() and (top <= hi + 1e-2).all())  # within
    # never worse than plain min-max rounding, and clearly better where the outlier sits
    s = ((hi - lo) / 15).half().float()[..., None]
    o = lo.half().float()[..., None]
    minmax = torch.round((g - o) / s.clamp(min=1e-30)).clamp(0, 15) * s + o
    err = (deq.reshape(3, 3, 128) - g).square().sum(dim=2)
    err_minmax = (minmax - g).square().sum(dim=2)
    assert bool((err <= err_minmax * (1 + 1e-6) + 1e-12).all())
    assert err[1, 0] < 0.85 * err_minmax[1, 0] and top[1, 0] < 40.0
    # rounding to the nearest code of the chosen range, and the layout: byte i of a group
    # holds code i (low nibble) and code 64 + i (high)
    codes = torch.round((g - offset.float()[..., None]) / scale.float().clamp(min=1e-30)[..., None])
    codes = codes.clamp(0, 15).to(torch.uint8)
    assert torch.equal(packed.reshape(3, 3, 64) & 15, codes[..., :64])
    assert torch.equal(packed.reshape(3, 3, 64) >> 4, codes[..., 64:])


def test_fp8_and_int8_spellings_are_accepted():
    for given in ("fp8", "FP8", "f8e4m3", "fp8-e4m3"):
        assert load_config(None, {"quantization": given}, env={})[0].model.quantization == "fp8"
    for given in ("int8", "INT8", "w8a16"):
        assert load_config(None, {"quantization": given}, env={})[0].model.quantization == "int8"
    for given in ("int4", "W4A16", "int4_g128"):
        assert load_config(None, {"quantization": given}, env={})[0].model.quantization == "int4"
    with pytest.raises(ConfigError, match="fp8"):
        load_config(None, {"quantization": "fp16x"}, env={})


def _decoded_folder(src: Path, out: Path, roundtrip, head_roundtrip) -> Path:
    """The demo model with every linear weight replaced by its quantized form decoded to float32
    (`roundtrip`: rows -> rows), the tied head as a separate lm_head (`head_roundtrip`: the
    in-situ formats give the head codes of its own)."""
    from safetensors.torch import save_file

    out.mkdir()
    weights = {}
    for name, t in iter_checkpoint_tensors(src, "cpu", torch.float32, progress=False):
        if any(f".{p}." in name for p in LINEAR):
            t = roundtrip(t)
        weights[name] = t.contiguous()
        if name == "model.embed_tokens.weight":
            weights["lm_head.weight"] = head_roundtrip(t).contiguous()
    save_file(weights, out / "model.safetensors")
    for f in src.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt", ".model") and f.name != "config.json":
            shutil.copy(f, out / f.name)
    config = json.loads((src / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (out / "config.json").write_text(json.dumps(config))
    return out


def _fp8(t):
    return dequantize_rows(*quantize_rows(t))


def _int8(t):
    return dequantize_rows(*int8.quantize_rows(t))


def _int4(t):
    return int4.dequantize_rows(*int4.quantize_rows(t))


@pytest.mark.parametrize(
    "name, codes_dtype, head_dtype, roundtrip, head_roundtrip",
    [
        ("fp8", FP8, FP8, _fp8, _fp8),
        ("int8", torch.int8, torch.int8, _int8, _int8),
        ("int4", torch.uint8, torch.int8, _int4, _int8),  # the head in int8 rows
    ],
)
def test_in_situ_quantization_equals_minerva_on_the_decoded_weights(
    tmp_path, name, codes_dtype, head_dtype, roundtrip, head_roundtrip
):
    demo = demo_model_path()
    folder = _decoded_folder(demo, tmp_path / "dq", roundtrip, head_roundtrip)
    ref = LLM(model=str(folder), device="cpu", dtype="float32", max_model_len=128)
    want = ref.generate([PROMPT], GREEDY)[0].outputs[0]
    llm = LLM(model=str(demo), device="cpu", dtype="float32", max_model_len=128,
              quantization=name)  # fmt: skip
    got = llm.generate([PROMPT], GREEDY)[0].outputs[0]
    assert got.token_ids == want.token_ids
    torch.testing.assert_close(
        torch.tensor([lp.logprob for lp in got.logprobs]),
        torch.tensor([lp.logprob for lp in want.logprobs]),
        atol=1e-4, rtol=0,
    )  # fmt: skip
    model = llm.engine.worker.model
    layer = model.model.layers[0].self_attn.qkv_proj
    assert layer.weight.dtype == codes_dtype and layer.method.name == name
    assert model.lm_head.weight.dtype == head_dtype  # the tied head got codes of its own
    rows, cols = layer.weight.shape
    if name == "int4":  # 4 bits per weight, a float16 scale and offset per 128
        assert layer.method.weight_bytes(layer) == rows * cols + rows * (cols * 2 // 128) * 4
    else:  # half the bytes of bf16 (plus a float32 scale per row) for what the GEMV streams
        assert layer.method.weight_bytes(layer) == rows * cols + rows * 4
