"""The padding of verify-graph steps (every row padded to K + 1 tokens) is exact: the padded
forward's kept logits equal the eager verify step's, checked on CPU with the model itself
(padded tokens write to the null block here; on CUDA their slot is -1, which the kernels skip)."""

from __future__ import annotations

import numpy as np
import torch

from minerva import LLM, SamplingParams
from minerva.attention import AttentionMetadata
from minerva.runner.verify_graphs import pad_rows
from tests.tiny_models import build_tiny_model

PROMPTS = [[5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [9, 10, 9, 10, 9], [40, 41, 42, 3, 50], [7] * 6]


def padded_forward(runner, host, q, b):
    rows = pad_rows(host, q, b)
    slots = np.where(rows["slot_mapping"] < 0, 0, rows["slot_mapping"])  # block 0: no data
    seq_lens = rows["seq_lens"].tolist()
    # As the graph's static table: columns past the step's widest, zeros (the null block).
    bs = runner.block_size
    tables = np.zeros((b, -(-max(seq_lens) // bs)), dtype=np.int32)
    tables[: host.num_seqs, : host.block_tables.shape[1]] = host.block_tables
    meta = AttentionMetadata(
        slot_mapping=torch.from_numpy(slots),
        block_tables=torch.from_numpy(tables),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        query_start_loc=torch.arange(0, b * q + 1, q, dtype=torch.int32),
        num_decodes=0,
        max_query_len=q,
        seq_lens_cpu=seq_lens,
        query_start_loc_cpu=list(range(0, b * q + 1, q)),
    )
    ids = torch.from_numpy(rows["input_ids"])
    positions = torch.from_numpy(rows["positions"])
    every = torch.arange(b * q)
    logits = runner.model(ids, positions, runner.kv_caches, meta, every)
    return logits[torch.from_numpy(rows["keep"])]


def test_padded_verify_rows_give_the_eager_logits(tmp_path):
    build_tiny_model(tmp_path, "mistral", seed=3, sliding_window=6)
    k = 4
    llm = LLM(
        model=str(tmp_path), device="cpu", dtype="float32", block_size=4, progress=False,
        speculative_method="ngram", num_speculative_tokens=k, max_model_len=64,
        speculative_adaptive=False,
    )  # fmt: skip
    runner = llm.engine.worker.runner
    launch, checked = runner.launch, []

    def checking_launch(out):
        step = launch(out)
        host = step.host
        if host.num_logits is not None and len(host.sampling_states) == host.num_seqs:
            eager = runner.captured_logits[-1]
            got = padded_forward(runner, host, k + 1, host.num_seqs)
            torch.testing.assert_close(got, eager, atol=1e-5, rtol=0)
            checked.append(host.num_seqs)
        return step

    runner.captured_logits = []
    runner.launch = checking_launch
    llm.generate(PROMPTS, SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True))
    assert len(checked) > 3 and max(checked) > 1


def test_pad_rows_layout():
    from minerva.runner.input_batch import HostInputs

    host = HostInputs(
        input_ids=np.array([11, 12, 13, 21, 31, 32], dtype=np.int64),
        positions=np.array([7, 8, 9, 4, 2, 3], dtype=np.int64),
        slot_mapping=np.array([70, 71, 72, 40, 20, 21], dtype=np.int64),
        block_tables=np.zeros((3, 4), dtype=np.int32),
        seq_lens=np.array([10, 5, 4], dtype=np.int32),
        query_start_loc=np.array([0, 3, 4, 6], dtype=np.int32),
        logits_indices=np.array([0, 1, 2, 3, 5], dtype=np.int64),
        num_decodes=0,
        sampling_states=[],
        sampling_rows=[],
        pending_indices=[],
        pending_sources=[],
    )
    rows = pad_rows(host, 3, 4)
    assert rows["input_ids"].tolist() == [11, 12, 13, 21, 0, 0, 31, 32, 0, 0, 0, 0]
    assert rows["positions"].tolist() == [7, 8, 9, 4, 0, 0, 2, 3, 0, 0, 0, 0]
    assert rows["slot_mapping"].tolist() == [70, 71, 72, 40, -1, -1, 20, 21, -1, -1, -1, -1]
    assert rows["seq_lens"].tolist() == [10, 7, 5, 0]  # context + q; padding row 0
    assert rows["keep"].tolist() == [0, 1, 2, 3, 7]
