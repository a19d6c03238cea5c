"""memory_limit on the CPU: a model past it is refused before loading; within it the KV cache
takes exactly what the limit leaves, and a load that needs more queues and preempts instead of
allocating: every request still gets the tokens it gets alone."""

from __future__ import annotations

import pytest

from minerva import LLM, SamplingParams
from minerva.errors import ConfigError
from tests.tiny_models import build_tiny_model
from tests.tokenizer_fixtures import build_byte_level

PROMPTS = [f"request {i}: " + "lorem ipsum dolor sit amet " * (1 + i % 3) for i in range(8)]
COMMON = dict(device="cpu", dtype="float32", block_size=4, max_model_len=96, max_num_seqs=8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_limit")
    build_byte_level(path, vocab_size=500)
    build_tiny_model(path, "llama", seed=3, vocab_size=500)
    return str(path)


def test_a_model_past_memory_limit_is_refused_with_the_numbers(model_dir):
    with pytest.raises(ConfigError) as err:
        LLM(model=model_dir, memory_limit="64K", progress=False, **COMMON)
    message = str(err.value)
    assert message.startswith("the model does not fit on cpu:")
    assert "GiB of float32 weights" in message and "memory_limit=" in message


def test_the_kv_cache_takes_what_the_limit_leaves_and_load_queues(model_dir):
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    free = LLM(model=model_dir, progress=False, **COMMON)
    alone = [free.generate(p, params)[0].token_ids for p in PROMPTS]
    worker = free.engine.worker
    spec_bytes = worker.kv_cache_bytes // worker.num_kv_blocks
    blocks = 2 * 96 // 4  # room for two sequences at full length, of 8 running
    limit = worker.weight_bytes + worker.activation_reserve + blocks * spec_bytes
    del free

    llm = LLM(model=model_dir, memory_limit=limit, progress=False, **COMMON)
    worker = llm.engine.worker
    assert worker.num_kv_blocks == blocks  # the null block included
    kv_tensors = [t.data_ptr() for t in worker.kv_caches]
    outs = llm.generate(PROMPTS, params)
    assert [o.token_ids for o in outs] == alone
    assert llm.engine.scheduler.num_preemptions > 0  # the limit was reached, and held
    assert [t.data_ptr() for t in worker.kv_caches] == kv_tensors  # nothing reallocated
    assert worker.weight_bytes + worker.activation_reserve + worker.kv_cache_bytes <= limit
    print(f"\n[reliability] KV exhaustion: {len(PROMPTS)} requests in a KV cache for 2: "
          f"{llm.engine.scheduler.num_preemptions} preemptions, every output as alone, "
          "nothing reallocated, memory_limit held")  # fmt: skip
