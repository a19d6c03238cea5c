"""The CPU's whole-step decode kernel (ops/cpu_decode_step.c) against the layered forward it
replaces: the same kernels in the same order, so every decode step's logits are bitwise equal,
for dense float32 weights (with biases, odd sizes, a sliding window) and for GGUF files whose
fused layers mix types and layouts (x8 and the file's). Where the step does not apply, the
model falls back to the layered path and says why by not building it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")

from minerva import LLM, SamplingParams  # noqa: E402
from minerva.loader.checkpoint import iter_checkpoint_tensors  # noqa: E402
from minerva.loader.gguf_export import write_gguf  # noqa: E402
from minerva.loader.hf_config import load_model_config  # noqa: E402
from minerva.ops import cpu_decode_step, cpu_linear, cpu_quant_x8  # noqa: E402
from minerva.ops.cpu_decode_step import DecodeStep  # noqa: E402
from minerva.quant.gguf_quantize import quantize_tensor  # noqa: E402
from minerva.quant.gguf_types import GGMLType  # noqa: E402
from tests.tiny_models import build_tiny_model  # noqa: E402

PROMPTS = [list(range(3, 40, 2)), [5, 9, 200, 31], list(range(60, 110))]
GREEDY = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)


@pytest.fixture(autouse=True)
def kernels_built():
    if not cpu_linear.load():
        pytest.skip(f"no CPU kernels here: {cpu_linear.status()}")


@pytest.fixture
def step_rows(monkeypatch) -> list[int]:
    """The row count of every decode step the C step computed (not fallen back)."""
    rows: list[int] = []
    run = DecodeStep.run

    def counting(self, x, *args, ids=None):
        out = run(self, x, *args, ids=ids)
        if out is not None:
            rows.append((ids if x is None else x).shape[0])
        return out

    monkeypatch.setattr(DecodeStep, "run", counting)
    return rows


def _llm(path: Path, **kw) -> LLM:
    kw = {"dtype": "float32", "max_model_len": 160, "max_num_seqs": 4, **kw}
    if kw["dtype"] == "float16" and not cpu_linear.entry(torch.float16):
        pytest.skip("no fp16 kernels on this CPU")
    return LLM(model=str(path), device="cpu", enable_prefix_caching=False, progress=False, **kw)


def _run(llm: LLM, prompts, on: bool):
    model, runner = llm.engine.worker.model, llm.engine.worker.runner
    model.use_cpu_step = on
    runner.captured_logits = []
    outs = llm.generate(prompts, GREEDY)
    return [o.outputs[0].token_ids for o in outs], runner.captured_logits


def assert_step_equals_layered(llm: LLM, step_rows: list[int]) -> None:
    """Batched (3 rows) and single-row decoding: tokens and every step's logits bitwise equal
    with the step on and off, and the step ran for the decode steps."""
    for prompts in (PROMPTS, PROMPTS[:1]):
        step_rows.clear()
        on_tokens, on_logits = _run(llm, prompts, True)
        assert step_rows and set(step_rows) == {len(prompts)}  # every pure decode step
        off_tokens, off_logits = _run(llm, prompts, False)
        assert on_tokens == off_tokens
        assert len(on_logits) == len(off_logits)
        for i, (a, b) in enumerate(zip(on_logits, off_logits)):
            assert torch.equal(a, b), f"step {i}: max diff {(a - b).abs().max().item()}"
    assert isinstance(llm.engine.worker.model._cpu_step, DecodeStep)


def build(path: Path, arch: str, seed: int, **shape) -> None:
    """A tiny random model whose biases (transformers starts them at zero) are random too."""
    model = build_tiny_model(path, arch, seed=seed, **shape)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.uniform_(-0.5, 0.5)
    model.save_pretrained(path)


DENSE = dict(vocab_size=1001, hidden_size=200, intermediate_size=425, num_attention_heads=5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize(
    "arch, extra",
    [
        ("llama", dict(attention_bias=True, mlp_bias=True, num_key_value_heads=1, head_dim=32)),
        ("mistral", dict(sliding_window=7, num_key_value_heads=5, head_dim=40)),
        ("qwen2", dict(num_key_value_heads=1, head_dim=40, tie_word_embeddings=True)),
        ("qwen3", dict(num_key_value_heads=1, head_dim=40, attention_bias=True)),
    ],
)
def test_dense_step_equals_layered(tmp_path, step_rows, arch, extra, dtype):
    """Every dtype the kernels take: in bf16 / fp16 each kernel rounds as the layered path's
    does (the same kernels), so the logits are bitwise equal there too."""
    build(tmp_path, arch, 3, **DENSE, **extra)
    assert_step_equals_layered(_llm(tmp_path, dtype=dtype), step_rows)


def _gguf(tmp_path: Path, plan, arch: str = "llama", **shape) -> Path:
    folder = tmp_path / "st"
    build(folder, arch, 4, hidden_size=256, intermediate_size=512, **shape)
    config = load_model_config(folder)
    tensors = iter_checkpoint_tensors(folder, "cpu", torch.float32, progress=False)
    return write_gguf(config, tensors, tmp_path / "m.gguf", plan, quantize=quantize_tensor)


def q4_k_m(name: str, shape) -> GGMLType:
    """q | k in Q4_K and v in Q6_K: two x8 groups in one fused layer."""
    if name == "output.weight" or name.endswith(("attn_v.weight", "ffn_down.weight")):
        return GGMLType.Q6_K
    return GGMLType.Q4_K


def file_and_x8(name: str, shape) -> GGMLType:
    """q, k, gate in Q4_1 (the file's layout), v, up, down in Q8_0 (x8): groups of two
    layouts in one layer, and several rows through the file kernel's separate buffer."""
    if name.endswith(("attn_v.weight", "ffn_up.weight", "ffn_down.weight")):
        return GGMLType.Q8_0
    if name == "output.weight" or name.endswith("attn_output.weight"):
        return GGMLType.Q3_K
    return GGMLType.Q4_1


def q4_0(name: str, shape) -> GGMLType:
    return GGMLType.Q4_0


@pytest.mark.parametrize(
    "plan, arch",
    [(q4_k_m, "llama"), (file_and_x8, "mistral"), (q4_0, "qwen2")],
    ids=["q4_k_m", "q4_1+q8_0+q3_k", "q4_0-qwen2"],
)
def test_gguf_step_equals_layered(tmp_path, step_rows, plan, arch):
    if not cpu_quant_x8.supports(GGMLType.Q4_0, 8, 32):
        pytest.skip("no x8 layout on this CPU")
    extra = dict(sliding_window=9) if arch == "mistral" else {}
    llm = _llm(_gguf(tmp_path, plan, arch, **extra))
    layouts = {g[3] for g in llm.engine.worker.model.model.layers[0].self_attn.qkv_proj.gguf_groups}
    assert layouts == ({"file", "x8"} if plan is file_and_x8 else {"x8"})
    assert_step_equals_layered(llm, step_rows)
    # the token embedding stays in GGUF blocks (Q4_K, Q4_1, Q4_0 here): the step gathered and
    # dequantized its rows itself, and the logits still equal the layered path's (torch's)
    assert llm.engine.worker.model.model.embed_tokens.blocks_type is not None
    assert llm.engine.worker.model._cpu_step.embeds


@pytest.mark.parametrize("kind", ["bfloat16", "q4_k_m", "file_and_x8"])
def test_one_region_equals_a_region_per_kernel(tmp_path, step_rows, monkeypatch, kind):
    """With two threads the step runs its layers in one OpenMP region (kernels in team mode,
    its own barriers): the same logits, bit for bit, as one region per kernel (plan.team off,
    the path one thread or a file-layout group takes) and as the layered path."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # what DecodeStep.run passes
    if kind == "bfloat16":
        build(tmp_path, "llama", 3, **DENSE, num_key_value_heads=1, head_dim=40)
        llm = _llm(tmp_path, dtype=kind)
    else:
        if not cpu_quant_x8.supports(GGMLType.Q4_0, 8, 32):
            pytest.skip("no x8 layout on this CPU")
        llm = _llm(_gguf(tmp_path, q4_k_m if kind == "q4_k_m" else file_and_x8))
    llm.generate([PROMPTS[0]], GREEDY)
    step: DecodeStep = llm.engine.worker.model._cpu_step
    one_region = kind != "file_and_x8"  # the file layout's kernel has no team mode
    assert step.in_one_region(2) is one_region and not step.in_one_region(1)
    assert_step_equals_layered(llm, step_rows)  # the logits of one region (or per kernel)
    team, logits = {}, {}
    for step.plan.team in (1, 0):
        assert step.in_one_region(2) is (one_region and step.plan.team == 1)
        team[step.plan.team], logits[step.plan.team] = _run(llm, PROMPTS, True)
    assert team[1] == team[0]
    assert all(torch.equal(a, b) for a, b in zip(logits[1], logits[0], strict=True))


def test_more_rows_than_the_step_takes_run_layered(tmp_path, step_rows):
    build_tiny_model(tmp_path, "llama", seed=5)
    llm = _llm(tmp_path, max_num_seqs=cpu_decode_step.MAX_ROWS + 2)
    prompts = [[3 + i, 7, 11] for i in range(cpu_decode_step.MAX_ROWS + 2)]
    step_rows.clear()  # the warm-up's one-row decode
    on, _ = _run(llm, prompts, True)
    assert not step_rows  # every decode step had 34 rows: all layered
    off, _ = _run(llm, prompts, False)
    assert on == off


def test_no_step_with_the_torch_kernels(tmp_path, step_rows):
    build_tiny_model(tmp_path, "llama", seed=6)
    llm = _llm(tmp_path, cpu_kernels=False)
    assert llm.engine.worker.model.use_cpu_step is False
    _run(llm, PROMPTS[:1], True)  # forced on: the plan refuses the torch kernel set
    assert not step_rows
    assert llm.engine.worker.model._cpu_step is None


def test_no_step_for_gguf_weights_in_a_bf16_model(tmp_path, step_rows):
    """The GGUF kernels take float32 rows: a bf16 model keeps the layered path."""
    llm = _llm(_gguf(tmp_path, q4_0), dtype="bfloat16")
    tokens, _ = _run(llm, PROMPTS[:1], True)
    assert not step_rows and len(tokens[0]) == GREEDY.max_tokens
    assert llm.engine.worker.model._cpu_step is None


@pytest.mark.parametrize("kv", ["float16", "bfloat16"])
def test_a_16_bit_cache_under_a_float32_model_steps_as_layered(tmp_path, step_rows, kv):
    """GGUF weights (float32 rows) over a 16-bit KV cache: the step and the layered path call
    the same float32-over-16-bit attention kernels, so the logits are bitwise equal."""
    if not cpu_quant_x8.supports(GGMLType.Q4_K, 8, 256):
        pytest.skip("no x8 layout on this CPU")
    llm = _llm(_gguf(tmp_path, q4_k_m), kv_cache_dtype=kv)
    assert llm.engine.worker.kv_caches[0].dtype == getattr(torch, kv)
    assert_step_equals_layered(llm, step_rows)


def test_an_fp8_kv_cache_falls_back(tmp_path, step_rows):
    """The step reads a float32 or 16-bit cache; with fp8 the decode steps run layered."""
    build_tiny_model(tmp_path, "llama", seed=7)
    llm = _llm(tmp_path, kv_cache_dtype="fp8")
    tokens, _ = _run(llm, PROMPTS, True)
    assert not step_rows and all(len(t) == GREEDY.max_tokens for t in tokens)


def test_out_of_range_inputs_are_refused_not_read(tmp_path):
    """A position past the rope table or a context longer than the block table: the C step
    returns an error (the caller falls back) instead of reading out of bounds."""
    build_tiny_model(tmp_path, "llama", seed=8)
    llm = _llm(tmp_path)
    llm.generate([PROMPTS[0]], GREEDY)
    worker = llm.engine.worker
    step: DecodeStep = worker.model._cpu_step
    x = torch.zeros(1, worker.model.config.hidden_size)
    slots = torch.zeros(1, dtype=torch.int64)
    tables = torch.zeros(1, 2, dtype=torch.int32)

    def run(position: int, seq_len: int):
        positions = torch.tensor([position])
        lens = torch.tensor([seq_len], dtype=torch.int32)
        return step.run(x, positions, worker.kv_caches, slots, tables, lens)

    assert run(0, 1) is not None
    assert run(step.plan.max_positions, 1) is None
    assert run(-1, 1) is None
    block_size = worker.kv_caches[0].shape[2]
    assert run(0, 2 * block_size + 1) is None  # needs a third block: the table has two
    assert run(0, 0) is None


def test_the_step_embeds_token_ids_as_the_embedding_layer(tmp_path):
    """Given token ids, the step gathers their rows of the embedding table itself: the same
    logits as when handed the embedding layer's output; an id outside the table is refused."""
    build_tiny_model(tmp_path, "llama", seed=9)
    llm = _llm(tmp_path)
    llm.generate([PROMPTS[0]], GREEDY)
    worker = llm.engine.worker
    step: DecodeStep = worker.model._cpu_step
    assert step.embeds
    vocab = worker.model.model.embed_tokens.weight.shape[0]
    ids = torch.tensor([3, vocab - 1], dtype=torch.int64)
    x = worker.model.model.embed_tokens(ids)
    positions = torch.tensor([0, 1])
    slots = torch.tensor([0, 1])
    tables = torch.zeros(2, 1, dtype=torch.int32)
    lens = torch.tensor([1, 2], dtype=torch.int32)
    args = (positions, worker.kv_caches, slots, tables, lens)
    given = step.run(x, *args)
    gathered = step.run(None, *args, ids=ids)
    assert given is not None and torch.equal(given, gathered)
    assert step.run(None, *args, ids=torch.tensor([0, vocab])) is None
    assert step.run(None, *args, ids=torch.tensor([-1, 0])) is None
    assert step.run(None, *args) is None  # neither embeddings nor ids


def test_verify_steps_run_in_the_step_as_a_row_per_token(tmp_path, step_rows):
    """N-gram speculation: a verify step's tokens go through the step as one decode row each
    (its row's table, its own length), with logits bitwise those of the layered path."""
    build(tmp_path, "llama", 5, **DENSE, num_key_value_heads=1, head_dim=40)
    spec = dict(speculative_method="ngram", num_speculative_tokens=4, speculative_adaptive=False)
    llm = _llm(tmp_path, **spec)
    repetitive = [[7, 8, 9, 10, 11] * 6, [40, 41, 42] * 8]
    step_rows.clear()
    on_tokens, on_logits = _run(llm, repetitive, True)
    assert max(step_rows) > len(repetitive)  # a step of more tokens than sequences: verify
    assert llm.engine.stats().spec_decode.num_accepted_tokens > 0
    off_tokens, off_logits = _run(llm, repetitive, False)
    assert on_tokens == off_tokens
    assert len(on_logits) == len(off_logits)
    for i, (a, b) in enumerate(zip(on_logits, off_logits)):
        assert torch.equal(a, b), f"step {i}: max diff {(a - b).abs().max().item()}"
