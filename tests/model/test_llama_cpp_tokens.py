"""The same GGUF file in Minerva and in llama.cpp (llama-cpp-python, where installed): the first
32 greedy tokens are equal, for an F16 file and for llama.cpp's own Q8_0
quantization of it (token_embd, the tied output, quantized too).
The demo model is trained, so its greedy choices are not near-ties that rounding could flip."""

from __future__ import annotations

import pytest
import torch

from minerva import LLM, SamplingParams
from minerva.demo import demo_model_path
from minerva.loader.checkpoint import iter_checkpoint_tensors
from minerva.loader.gguf_export import float_plan, write_gguf
from minerva.loader.hf_config import load_model_config
from minerva.quant.gguf_types import GGMLType

llama_cpp = pytest.importorskip("llama_cpp")
np = pytest.importorskip("numpy")

PROMPT = "SQLite is a database that"
NUM_TOKENS = 32
# llama.cpp's LLAMA_FTYPE_MOSTLY_*: its own quantizer writes these files. Q4_0 (2) and Q4_K_M
# (15) are left out: both engines quantize activations to 8 bits, which makes the demo model's
# logits move by ~0.05 with float-rounding differences, and at 4 bits its top two tokens come
# within that of each other inside 32 steps (step 15 / step 3), so the greedy paths part.
LLAMA_FTYPES = {"q8_0": 7}


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory):
    folder = demo_model_path()
    config = load_model_config(folder)
    out = tmp_path_factory.mktemp("llama_cpp")
    f16 = out / "demo-f16.gguf"
    tensors = iter_checkpoint_tensors(folder, torch.device("cpu"), torch.float32, progress=False)
    write_gguf(
        config, tensors, f16, float_plan(GGMLType.F16), tokenizer_dir=folder, file_type="f16"
    )
    files = {"f16": f16}
    for kind, ftype in LLAMA_FTYPES.items():
        files[kind] = out / f"demo-{kind}.gguf"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        quantized = llama_cpp.llama_model_quantize(
            str(f16).encode(), str(files[kind]).encode(), params
        )
        assert quantized == 0
    return files


def llama_cpp_greedy(path, n: int) -> tuple[list[int], list[int]]:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False)
    ids = llm.tokenize(PROMPT.encode(), add_bos=True)
    n_vocab = llm.n_vocab()
    out: list[int] = []
    llm.eval(ids)
    for _ in range(n):
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)
        )
        out.append(int(np.argmax(logits)))
        llm.eval([out[-1]])
    return ids, out


@pytest.mark.parametrize("kind", ["f16", *LLAMA_FTYPES])
def test_first_greedy_tokens_equal_llama_cpp(gguf_files, kind):
    path = gguf_files[kind]
    prompt_ids, expected = llama_cpp_greedy(path, NUM_TOKENS)
    llm = LLM(model=str(path), device="cpu", dtype="float32", max_model_len=256)
    assert llm.tokenizer.encode(PROMPT) == prompt_ids  # the GGUF's own vocabulary
    params = SamplingParams(max_tokens=NUM_TOKENS, temperature=0.0, ignore_eos=True)
    out = llm.generate([prompt_ids], params)[0]
    assert out.token_ids == expected


@pytest.mark.parametrize("arch", ["qwen3", "qwen2", "llama"])
def test_tiny_model_logits_equal_llama_cpp(tmp_path, arch):
    """A tiny random model of each GGUF architecture, written by Minerva's exporter as F32: every
    decode step's logits equal llama.cpp's on the same file (Qwen3: its per-head q / k norms
    and an explicit head_dim that is not hidden / heads, as in the released models)."""
    from tests.tiny_models import build_tiny_text_model

    folder = tmp_path / "hf"
    shape = dict(head_dim=32, num_attention_heads=4, num_key_value_heads=2)
    build_tiny_text_model(folder, seed=5, arch=arch, **(shape if arch == "qwen3" else {}))
    config = load_model_config(folder)
    tensors = iter_checkpoint_tensors(folder, torch.device("cpu"), torch.float32, progress=False)
    path = write_gguf(config, tensors, tmp_path / "m.gguf", float_plan(GGMLType.F32),
                      tokenizer_dir=folder, file_type="f32")  # fmt: skip
    llm = LLM(model=str(path), device="cpu", dtype="float32", max_model_len=128, progress=False)
    prompt = [7, 99, 250, 31, 400, 12, 5]
    runner = llm.engine.worker.runner
    runner.captured_logits = []
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    ours = llm.generate([prompt], params)[0].token_ids
    f32 = llama_cpp.GGML_TYPE_F32  # its KV cache in float32 too (the default is F16)
    ref = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=2, logits_all=True,
                          type_k=f32, type_v=f32, verbose=False)  # fmt: skip
    ref.eval(prompt + ours[:-1])
    theirs = torch.from_numpy(ref.scores[len(prompt) - 1 : len(prompt) + 11].copy())
    assert len(runner.captured_logits) == 12
    for step, row in enumerate(runner.captured_logits):
        torch.testing.assert_close(row[0], theirs[step], atol=1e-4, rtol=0, msg=f"step {step}")
    assert ours == [int(i) for i in theirs.argmax(-1)]
