"""The same weights in every packaging give the same tokens (seed 003's checklist): safetensors,
.bin and an F16 GGUF of one random model; a quantized GGUF against Minerva's own run on its
dequantized weights saved as safetensors (the demo model: trained, so no near-ties); a Q4_K_M-
shaped file whose token_embd and output are quantized too, tied or not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")

from minerva import LLM, SamplingParams  # noqa: E402
from minerva.demo import demo_model_path  # noqa: E402
from minerva.loader import open_model  # noqa: E402
from minerva.loader.checkpoint import iter_checkpoint_tensors  # noqa: E402
from minerva.loader.gguf_export import float_plan, write_gguf  # noqa: E402
from minerva.loader.hf_config import load_model_config  # noqa: E402
from minerva.quant import gguf_matmul  # noqa: E402
from minerva.quant.gguf_dequant import dequantize_tensor  # noqa: E402
from minerva.quant.gguf_mix import mix_type  # noqa: E402
from minerva.quant.gguf_quantize import quantize_tensor  # noqa: E402
from minerva.quant.gguf_types import GGMLType, QuantizedTensor  # noqa: E402
from minerva.runner.model_loading import weight_bytes_of  # noqa: E402
from tests.tiny_models import build_tiny_model  # noqa: E402

PROMPT = [1, 17, 42, 99, 3, 250, 7]
GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, logprobs=1)
DEMO_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def greedy(path: Path, prompt=PROMPT):
    llm = LLM(model=str(path), device="cpu", dtype="float32", max_model_len=128)
    out = llm.generate([prompt], GREEDY)[0].outputs[0]
    return out.token_ids, [lp.logprob for lp in out.logprobs], llm


def to_gguf(folder: Path, out: Path, plan, file_type: str, **kw) -> Path:
    config = load_model_config(folder)
    tensors = iter_checkpoint_tensors(folder, "cpu", torch.float32, progress=False)
    return write_gguf(
        config, tensors, out, plan, quantize=quantize_tensor, file_type=file_type, **kw
    )


def dequantized_folder(gguf_path: Path, out: Path, like: Path) -> Path:
    """The GGUF's weights dequantized to float32 as a safetensors folder (config from `like`)."""
    from safetensors.torch import save_file

    out.mkdir()
    weights = {
        name: (dequantize_tensor(t) if isinstance(t, QuantizedTensor) else t.float()).contiguous()
        for name, t in open_model(gguf_path).iter_weights(progress=False)
    }
    save_file(weights, out / "model.safetensors")
    for name in DEMO_FILES:
        if (like / name).exists():
            shutil.copy(like / name, out / name)
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_safetensors_bin_and_f16_gguf_give_identical_tokens(tmp_path, arch):
    st = tmp_path / "st"
    model = build_tiny_model(st, arch, dtype=torch.float16)  # fp16 values: F16 GGUF is exact
    (tmp_path / "bin").mkdir()
    shutil.copy(st / "config.json", tmp_path / "bin" / "config.json")
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    gguf = to_gguf(st, tmp_path / "m.gguf", float_plan(GGMLType.F16), "f16")
    ref_tokens, ref_logprobs, _ = greedy(st)
    for path in (tmp_path / "bin", gguf):
        tokens, logprobs, _ = greedy(path)
        assert tokens == ref_tokens
        assert logprobs == ref_logprobs  # the same float32 weights: the same arithmetic


def q4_k_m_plan(name: str, shape) -> GGMLType:
    """The shape of a real Q4_K_M file: token_embd Q4_K, output Q6_K, wider attn_v / ffn_down."""
    if name == "output.weight" or name.endswith(("attn_v.weight", "ffn_down.weight")):
        return GGMLType.Q6_K
    return GGMLType.Q4_K


@pytest.mark.parametrize("tied", [False, True])
def test_a_q4_k_m_file_with_quantized_embedding_and_output(tmp_path, monkeypatch, tied):
    """token_embd in Q4_K stays in its blocks (rows dequantized when looked up); the output (its own Q6_K tensor,
    or tied: the embedding's Q4_K blocks) stays quantized; the logits equal the dense run of
    the dequantized weights (torch twin: the same weights, fp32 rounding apart)."""
    folder = tmp_path / "st"
    build_tiny_model(folder, hidden_size=256, intermediate_size=512, tie_word_embeddings=tied)
    gguf = to_gguf(folder, tmp_path / "m.gguf", q4_k_m_plan, "q4_k_m")
    source = open_model(gguf)
    types = source.tensor_types
    assert types["model.embed_tokens.weight"] == GGMLType.Q4_K
    assert ("lm_head.weight" in types) != tied
    dense = dequantized_folder(gguf, tmp_path / "dq", folder)
    monkeypatch.setattr(gguf_matmul, "KERNEL_MAX_ROWS", 0)  # the torch twin
    tokens, logprobs, llm = greedy(gguf)
    ref_tokens, ref_logprobs, _ = greedy(dense)
    assert tokens == ref_tokens
    torch.testing.assert_close(
        torch.tensor(logprobs), torch.tensor(ref_logprobs), atol=1e-4, rtol=0
    )
    model = llm.engine.worker.model
    head = model.lm_head
    assert [g[1] for g in head.gguf_groups] == [GGMLType.Q4_K if tied else GGMLType.Q6_K]
    assert model.weight_bytes() == weight_bytes_of(source, torch.float32)  # planned = loaded
    file_bytes = sum(info.nbytes for _, info in source.tensors.values())
    embed = model.model.embed_tokens.weight
    assert embed.dtype == torch.uint8  # the table stays in its blocks
    # the file's blocks, and a tied head's own copy of the embedding's blocks
    embed_blocks = source.tensors["token_embd.weight"][1].nbytes
    assert embed.numel() == embed_blocks
    assert model.weight_bytes() == file_bytes + (embed_blocks if tied else 0)


def test_q8_0_gguf_equals_minerva_on_its_dequantized_weights(tmp_path, monkeypatch):
    demo = demo_model_path()
    gguf = to_gguf(
        demo, tmp_path / "demo-q8_0.gguf", lambda n, s: GGMLType.Q8_0, "q8_0", tokenizer_dir=demo
    )
    dense = dequantized_folder(gguf, tmp_path / "dq", demo)
    prompt = [1, 3088, 295, 263, 628, 327]  # "SQLite is a database that"
    ref_tokens, ref_logprobs, _ = greedy(dense, prompt)
    tokens, _, _ = greedy(gguf, prompt)  # the C kernel: 8-bit activations, as llama.cpp
    assert tokens == ref_tokens
    monkeypatch.setattr(gguf_matmul, "KERNEL_MAX_ROWS", 0)  # the torch twin: exact weights
    tokens, logprobs, _ = greedy(gguf, prompt)
    assert tokens == ref_tokens
    torch.testing.assert_close(
        torch.tensor(logprobs), torch.tensor(ref_logprobs), atol=1e-4, rtol=0
    )


def test_in_situ_quantization_equals_the_same_mix_written_as_gguf(tmp_path):
    """`quantization=q4_k_m` on a float folder gives the blocks a GGUF of the same mix holds
    (token_embd in the mix's type in both), so the two runs are the same arithmetic."""
    folder = tmp_path / "st"
    build_tiny_model(folder, hidden_size=256, intermediate_size=512, num_hidden_layers=4)
    config = load_model_config(folder)

    def plan(name: str, shape) -> GGMLType:
        layer = int(name.split(".")[1]) if name.startswith("blk.") else None
        return mix_type("q4_k_m", name, layer, config.num_hidden_layers, cols=shape[1])

    gguf = to_gguf(folder, tmp_path / "m.gguf", plan, "q4_k_m")
    llm = LLM(model=str(folder), device="cpu", dtype="float32", max_model_len=128,
              quantization="Q4_K_M")  # fmt: skip
    out = llm.generate([PROMPT], GREEDY)[0].outputs[0]
    tokens, logprobs, _ = greedy(gguf)
    assert out.token_ids == tokens and [lp.logprob for lp in out.logprobs] == logprobs
    assert llm.engine.worker.weight_bytes == weight_bytes_of(
        open_model(folder), torch.float32, "q4_k_m"
    )
