"""GGUF models on CUDA: the Triton kernels over the plane layout inside the engine (CUDA graphs,
fused batch-1 hooks) give the tokens of the CPU run and of the torch twin on the GPU."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gguf")

from minerva import LLM, SamplingParams  # noqa: E402
from minerva.demo import demo_model_path  # noqa: E402
from minerva.quant import gguf_matmul  # noqa: E402
from minerva.quant.gguf_types import GGMLType  # noqa: E402
from tests.gpu.near_tie import assert_agree_until_near_tie  # noqa: E402
from tests.model.test_cross_format import q4_k_m_plan, to_gguf  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

PROMPTS = [
    [1, 3088, 295, 263, 628, 327],  # "SQLite is a database that"
    [1, 450, 3996, 1354, 1701, 2916],
    [1, 1724, 338, 278],
]
PLANS = {
    "q8_0": lambda n, s: GGMLType.Q8_0,
    "q4_k_m": q4_k_m_plan,
    "q4_0": lambda n, s: GGMLType.Q4_0,
    "q5_k": lambda n, s: GGMLType.Q6_K if n == "output.weight" else GGMLType.Q5_K,
}


@pytest.fixture(scope="module", params=list(PLANS))
def demo_gguf(request, tmp_path_factory):
    demo = demo_model_path()
    path = tmp_path_factory.mktemp("gguf") / f"demo-{request.param}.gguf"
    return to_gguf(demo, path, PLANS[request.param], request.param, tokenizer_dir=demo)


def _greedy(path, device, dtype, n=32, **kw):
    llm = LLM(model=str(path), device=device, dtype=dtype, max_model_len=256, **kw)
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, logprobs=1)
    outs = [o.outputs[0] for o in llm.generate(PROMPTS, params)]
    return [o.token_ids for o in outs], [[lp.logprob for lp in o.logprobs] for o in outs], llm


def test_gpu_tokens_equal_the_cpu_twin(demo_gguf, monkeypatch):
    tokens, logprobs, llm = _greedy(demo_gguf, "cuda", "float32")
    layer = llm.engine.worker.model.model.layers[0].self_attn.qkv_proj
    assert {g[3] for g in layer.gguf_groups} == {"planes"}
    assert llm.engine.worker.runner.graphs is not None and llm.engine.worker.model.one_token
    del llm
    monkeypatch.setattr(gguf_matmul, "KERNEL_MAX_ROWS", 0)  # the CPU's torch twin: exact weights
    ref_tokens, ref_logprobs, _ = _greedy(demo_gguf, "cpu", "float32")
    assert tokens == ref_tokens
    torch.testing.assert_close(
        torch.tensor(logprobs), torch.tensor(ref_logprobs), atol=2e-3, rtol=0
    )


NEAR_TIE = 0.1
"""bf16 logprobs of the fused kernels and of the torch twin differ by up to ~0.085 on the demo
model (H100, 2026-12-07): greedy paths may part only where the twin's top two are this close."""


def _greedy_top2(path, **kw):
    llm = LLM(model=str(path), device="cuda", dtype="bfloat16", max_model_len=256, **kw)
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, logprobs=2)
    outs = [o.outputs[0] for o in llm.generate(PROMPTS, params)]
    return [(o.token_ids, o.logprobs) for o in outs], llm


@pytest.mark.parametrize(
    "int8, fuse", [(False, False), (True, False), (True, True)],
    ids=["float-x", "int8-x", "int8-x-from-producer"],
)  # fmt: skip
def test_bf16_kernels_match_the_torch_twin_on_the_gpu(demo_gguf, int8, fuse, monkeypatch):
    """Each prompt's greedy tokens equal the twin's up to a point where the twin's two most
    likely tokens are a near tie (bf16 rounding decides); logprobs agree to NEAR_TIE before."""
    from minerva.quant import gguf, gguf_one_token

    monkeypatch.setattr(gguf, "INT8_ACTIVATIONS", int8)
    monkeypatch.setattr(gguf_one_token, "FUSE_QUANT_OUT", fuse)
    runs, _ = _greedy_top2(demo_gguf)
    twins, llm = _greedy_top2(demo_gguf, attention_backend="torch", fused_kernels=False)
    layer = llm.engine.worker.model.model.layers[0].mlp.down_proj
    assert {g[3] for g in layer.gguf_groups} == {"file"}  # the twin: dequantize + matmul
    assert_agree_until_near_tie(runs, twins, NEAR_TIE)


def test_int8_x_from_the_producer_is_the_separate_quantization(demo_gguf, monkeypatch):
    """The next layer's 8-bit x made by the producing GEMV (gguf_one_token.FUSE_QUANT_OUT) gives
    the logprobs of the separate quantize launch (same arithmetic, reductions aside)."""
    from minerva.quant import gguf_one_token

    separate, _ = _greedy_top2(demo_gguf)
    monkeypatch.setattr(gguf_one_token, "FUSE_QUANT_OUT", True)
    fused, llm = _greedy_top2(demo_gguf)
    state = llm.engine.worker.model.model.layers[0].mlp.down_proj.method.one_token_state
    assert state.count is not None and int(state.count) == 0  # the fused path ran
    assert_agree_until_near_tie(fused, separate, 0.02)
