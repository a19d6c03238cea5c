"""The same GGUF file in Minerva and in llama.cpp (llama-cpp-python, where installed): the first
32 greedy tokens are equal, for an F16 file and for llama.cpp's own Q8_0
quantization of it (token_embd, the tied output, quantized too).
The demo model is trained, so its greedy choices are not near-ties that rounding could flip.
llama.cpp's IQ4_XS and IQ4_NL files (the non-linear 4-bit codebook) are compared step by step
on llama.cpp's own greedy path, since at 4 bits near ties do come up (see LLAMA_FTYPES)."""

from __future__ import annotations

import pytest
import torch

from minerva import LLM, SamplingParams
from minerva.demo import demo_model_path
from minerva.loader.checkpoint import iter_checkpoint_tensors
from minerva.loader.gguf_export import float_plan, write_gguf
from minerva.loader.hf_config import load_model_config
from minerva.quant.gguf_quantize import quantize_array
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
IQ4_FTYPES = {"iq4_nl": 25, "iq4_xs": 30}  # LLAMA_FTYPE_MOSTLY_IQ4_NL / _IQ4_XS
# What 8-bit activation rounding moves the demo model's log-probabilities by at 4 bits: Q4_K_M
# files (whose kernels the other tests check) differ from llama.cpp by up to 0.2, IQ4_XS by
# 0.18, IQ4_NL by 0.08 over these 32 steps; a wrong decoder moves them by whole units.
LOGPROB_TOLERANCE = 0.3
NEAR_TIE = 0.1  # llama.cpp's top two within this: either token is a correct greedy choice


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
    for kind, ftype in (LLAMA_FTYPES | IQ4_FTYPES).items():
        files[kind] = out / f"demo-{kind}.gguf"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        quantized = llama_cpp.llama_model_quantize(
            str(f16).encode(), str(files[kind]).encode(), params
        )
        assert quantized == 0
    return files


def llama_cpp_greedy(path, n: int, logprobs: list | None = None) -> tuple[list[int], list[int]]:
    """(prompt ids, n greedy tokens); `logprobs` gets each step's log-softmax (float64)."""
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
        if logprobs is not None:
            z = logits.astype(np.float64) - logits.max()
            logprobs.append(z - np.log(np.exp(z).sum()))
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


@pytest.mark.parametrize("kind", list(IQ4_FTYPES))
def test_iq4_files_follow_llama_cpp_step_by_step(gguf_files, kind):
    """At each of 32 steps of llama.cpp's greedy path (each prefix a prompt: the prefill
    products), Minerva's next token is llama.cpp's unless llama.cpp's top two are a near tie,
    and its log-probability is llama.cpp's within the activation rounding. Then free-running
    (the batch-1 decode step), the tokens equal llama.cpp's up to the first such near tie."""
    path = gguf_files[kind]
    ref: list = []
    prompt_ids, expected = llama_cpp_greedy(path, NUM_TOKENS, ref)
    llm = LLM(model=str(path), device="cpu", dtype="float32", max_model_len=256)
    prefixes = [prompt_ids + expected[:i] for i in range(NUM_TOKENS)]
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=1)
    for i, out in enumerate(llm.generate(prefixes, params)):
        token, lp = out.outputs[0].token_ids[0], out.outputs[0].logprobs[0]
        top2 = np.sort(ref[i])[-2:]
        assert token == expected[i] or top2[1] - top2[0] < NEAR_TIE, f"step {i}"
        assert abs(lp.logprob - ref[i][token]) < LOGPROB_TOLERANCE, f"step {i}"
    params = SamplingParams(max_tokens=NUM_TOKENS, temperature=0.0, ignore_eos=True)
    tokens = llm.generate([prompt_ids], params)[0].outputs[0].token_ids
    parted = next((i for i, (a, b) in enumerate(zip(tokens, expected)) if a != b), None)
    if parted is not None:
        top2 = np.sort(ref[parted])[-2:]
        assert top2[1] - top2[0] < NEAR_TIE, f"parted at step {parted} without a near tie"


@pytest.mark.parametrize("kind", list(IQ4_FTYPES))
def test_iq4_quantizer_writes_llama_cpps_bytes(gguf_files, kind):
    """Every IQ4 tensor of llama.cpp's file, quantized by Minerva from the same F16 values:
    the same bytes (the same scale search, index choices and packing)."""
    gguf = pytest.importorskip("gguf")
    source = {t.name: t for t in gguf.GGUFReader(gguf_files["f16"]).tensors}
    ggml_type = GGMLType.IQ4_NL if kind == "iq4_nl" else GGMLType.IQ4_XS
    checked = 0
    for t in gguf.GGUFReader(gguf_files[kind]).tensors:
        if int(t.tensor_type) != ggml_type:
            continue
        values = np.array(source[t.name].data, dtype=np.float32)
        values = values.reshape(-1, values.shape[-1])
        ours = quantize_array(values, ggml_type)
        assert np.array_equal(ours, np.array(t.data).reshape(ours.shape)), t.name
        checked += 1
    assert checked >= 50  # the layers' weights (the embedding and one ffn_down are K types)
