"""Paged attention on one NVIDIA GPU: the Triton kernels against the torch reference.

    PYTHONPATH=src python3 benchmarks/attention_bench.py [--output DIR] [--quick]

Mistral-7B attention shape (32 query heads, 8 KV heads, head_dim 128, bf16, block_size 16),
one layer. Decode at batch 1/8/64/256 x context 128/1k/4k: time per call, and the KV bytes it
must read over that time, as GB/s and as a fraction of the measured device copy bandwidth
(bytes read + written). Small cases rotate over many disjoint block tables (more bytes than
L2) and are timed as CUDA-graph replays, so neither the cache nor launch gaps flatter them.
Prefill of one 512 / 2048-token prompt, and KV write. A small tile-config sweep for tuning.
Writes attention_bench.json under --output.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

from minerva.attention import AttentionMetadata, torch_paged
from minerva.attention.triton_backend import TritonAttention
from minerva.attention.triton_decode import choose_num_splits, decode_attention
from minerva.attention.triton_kv_write import write_kv
from minerva.attention.triton_prefill import prefill_attention

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
DTYPE = torch.bfloat16
SCALE = HEAD_DIM**-0.5
MAX_ROTATIONS = 256
# (BLOCK_N, num_warps, num_stages) tried for decode, then other split counts.
DECODE_TILES = [(64, 4, 2), (64, 4, 3), (64, 4, 4), (32, 4, 2), (32, 4, 3), (128, 4, 2), (64, 8, 3)]
# (BLOCK_M, BLOCK_N, num_warps, num_stages) tried for prefill; the first is the default.
PREFILL_CONFIGS = [
    (64, 64, 4, 2),
    (128, 64, 8, 2),
    (128, 64, 8, 3),
    (128, 128, 8, 2),
    (64, 64, 4, 3),
    (64, 128, 4, 2),
    (128, 64, 4, 2),
    (64, 32, 4, 2),
]


def time_ms(fn, reps: int = 15, warmup: int = 2) -> float:
    """Median over reps of one fn() call, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def graph_of(fn):
    """Capture fn (already warmed up) into a CUDA graph; return its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def copy_bandwidth_gb_s() -> float:
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = time_ms(lambda: b.copy_(a), reps=10)
    return 2 * (1 << 30) / ms / 1e6


def decode_meta(tables: torch.Tensor, ctx: int) -> AttentionMetadata:
    n = tables.shape[0]
    seq_lens = torch.full((n,), ctx, dtype=torch.int32, device="cuda")
    qsl = list(range(n + 1))
    return AttentionMetadata(
        slot_mapping=torch.zeros(n, dtype=torch.int64, device="cuda"),
        block_tables=tables,
        seq_lens=seq_lens,
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device="cuda"),
        num_decodes=n,
        max_query_len=1,
        seq_lens_cpu=[ctx] * n,
        query_start_loc_cpu=qsl,
    )


def bench_decode(kv_cache, perm, batch, ctx, l2_bytes, num_sms, quick) -> dict:
    blocks_per_seq = math.ceil(ctx / BLOCK_SIZE)
    kv_bytes = 2 * batch * ctx * NUM_KV_HEADS * HEAD_DIM * kv_cache.element_size()
    avail = perm.numel() // (batch * blocks_per_seq)
    rotations = max(1, min(MAX_ROTATIONS, avail, math.ceil(4 * l2_bytes / kv_bytes)))
    tables = perm[: rotations * batch * blocks_per_seq].view(rotations, batch, blocks_per_seq)
    metas = [decode_meta(tables[r].int(), ctx) for r in range(rotations)]
    qs = torch.randn(rotations, batch, NUM_HEADS, HEAD_DIM, device="cuda").to(DTYPE)
    outs = torch.empty_like(qs)
    splits = choose_num_splits(batch, NUM_KV_HEADS, ctx, num_sms)

    def triton_all():
        for r, m in enumerate(metas):
            decode_attention(
                qs[r], kv_cache, m.block_tables, m.seq_lens, SCALE, None, splits, out=outs[r]
            )

    def reference_all():
        for r, m in enumerate(metas):
            torch_paged.paged_attention(qs[r], kv_cache, m, SCALE)

    triton_all()
    ref = torch_paged.paged_attention(qs[0], kv_cache, metas[0], SCALE)
    err = ((outs[0].float() - ref.float()).norm() / ref.float().norm()).item()
    reps = 5 if quick else 15
    row = dict(batch=batch, context=ctx, num_splits=splits, rotations=rotations, kv_bytes=kv_bytes)
    row["triton_graph_us"] = time_ms(graph_of(triton_all), reps) * 1e3 / rotations
    row["triton_eager_us"] = time_ms(triton_all, reps) * 1e3 / rotations
    row["torch_eager_us"] = time_ms(reference_all, max(3, reps // 3)) * 1e3 / rotations
    try:
        row["torch_graph_us"] = time_ms(graph_of(reference_all), reps) * 1e3 / rotations
    except Exception as e:  # noqa: BLE001 - report, keep benchmarking
        row["torch_graph_us"] = None
        row["torch_graph_error"] = repr(e)[:200]
    row["triton_gb_s"] = kv_bytes / row["triton_graph_us"] / 1e3
    row["rel_err_vs_torch_bf16"] = err
    return row


def bench_prefill(num_tokens: int, quick: bool) -> dict:
    blocks = math.ceil(num_tokens / BLOCK_SIZE)
    shape = (2, blocks + 1, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    kv_cache = torch.randn(shape, device="cuda").to(DTYPE)
    table = (torch.randperm(blocks, device="cuda") + 1).int()[None]
    pos = torch.arange(num_tokens, device="cuda")
    slots = table[0].long()[pos // BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE
    qsl = [0, num_tokens]
    meta = AttentionMetadata(
        slot_mapping=slots,
        block_tables=table,
        seq_lens=torch.tensor([num_tokens], dtype=torch.int32, device="cuda"),
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device="cuda"),
        num_decodes=0,
        max_query_len=num_tokens,
        seq_lens_cpu=[num_tokens],
        query_start_loc_cpu=qsl,
    )
    q = torch.randn(num_tokens, NUM_HEADS, HEAD_DIM, device="cuda").to(DTYPE)
    k = torch.randn(num_tokens, NUM_KV_HEADS, HEAD_DIM, device="cuda").to(DTYPE)
    v = torch.randn_like(k)
    attn = TritonAttention()
    reps = 5 if quick else 20
    out = attn.paged_attention(q, kv_cache, meta, SCALE)
    ref = torch_paged.paged_attention(q, kv_cache, meta, SCALE)
    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    flops = 4 * NUM_HEADS * HEAD_DIM * num_tokens * (num_tokens + 1) / 2  # causal QK^T and PV
    row = dict(tokens=num_tokens, rel_err_vs_torch_bf16=err)

    def triton_fn():
        attn.paged_attention(q, kv_cache, meta, SCALE)

    def torch_fn():
        torch_paged.paged_attention(q, kv_cache, meta, SCALE)

    # Graph replays give GPU time; eager adds Triton's host-side launch cost (~40 us/kernel).
    row["triton_us"] = time_ms(graph_of(triton_fn), reps) * 1e3
    row["triton_eager_us"] = time_ms(triton_fn, reps) * 1e3
    row["torch_us"] = time_ms(torch_fn, reps) * 1e3
    row["triton_tflop_s"] = flops / row["triton_us"] / 1e6
    row["torch_tflop_s"] = flops / row["torch_us"] / 1e6
    row["sweep"] = []
    for cfg in PREFILL_CONFIGS:
        entry = dict(block_m=cfg[0], block_n=cfg[1], num_warps=cfg[2], num_stages=cfg[3])

        def fn(cfg=cfg):
            prefill_attention(
                q, kv_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc, 0, 1,
                num_tokens, SCALE, None, out=out, config=cfg,
            )  # fmt: skip

        try:
            fn()
            entry["us"] = time_ms(graph_of(fn), reps) * 1e3
            entry["tflop_s"] = flops / entry["us"] / 1e6
            entry["rel_err"] = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        except Exception as e:  # noqa: BLE001 - a config may not fit; record and go on
            entry["error"] = repr(e)[:200]
        row["sweep"].append(entry)
    # Last: the writes overwrite the cache that ref was computed from.
    row["kv_write_triton_us"] = (
        time_ms(graph_of(lambda: write_kv(kv_cache, k, v, slots)), reps) * 1e3
    )
    row["kv_write_torch_us"] = (
        time_ms(graph_of(lambda: torch_paged.write_kv(kv_cache, k, v, slots)), reps) * 1e3
    )
    return row


def sweep(kv_cache, perm, batch, ctx, num_sms) -> list[dict]:
    """Tile configs of the decode kernel at one shape (graph-timed, one rotation)."""
    blocks_per_seq = math.ceil(ctx / BLOCK_SIZE)
    meta = decode_meta(perm[: batch * blocks_per_seq].view(batch, -1).int(), ctx)
    q = torch.randn(batch, NUM_HEADS, HEAD_DIM, device="cuda").to(DTYPE)
    out = torch.empty_like(q)
    kv_bytes = 2 * batch * ctx * NUM_KV_HEADS * HEAD_DIM * kv_cache.element_size()
    rows = []
    base_splits = choose_num_splits(batch, NUM_KV_HEADS, ctx, num_sms)
    configs = [(n, w, st, base_splits) for n, w, st in DECODE_TILES]
    configs += [(64, 4, 2, sp) for sp in (1, 2, 4, 8, 16, 32) if sp != base_splits]
    for block_n, warps, stages, splits in configs:
        row = dict(batch=batch, context=ctx, block_n=block_n, num_warps=warps, num_stages=stages)
        row["num_splits"] = splits

        def fn(block_n=block_n, warps=warps, stages=stages, splits=splits):
            decode_attention(
                q, kv_cache, meta.block_tables, meta.seq_lens, SCALE, None, splits, out=out,
                block_n=block_n, num_warps=warps, num_stages=stages,
            )  # fmt: skip

        try:
            fn()
            row["us"] = time_ms(graph_of(fn), 10) * 1e3
            row["gb_s"] = kv_bytes / row["us"] / 1e3
        except Exception as e:  # noqa: BLE001 - a config may not fit; record and go on
            row["error"] = repr(e)[:200]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    import triton

    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    num_sms = props.multi_processor_count
    l2_bytes = getattr(props, "L2_cache_size", 50 << 20)
    result = dict(
        benchmark="attention_bench",
        gpu=torch.cuda.get_device_name(0),
        torch=torch.__version__,
        triton=triton.__version__,
        shape=dict(
            num_heads=NUM_HEADS,
            num_kv_heads=NUM_KV_HEADS,
            head_dim=HEAD_DIM,
            block_size=BLOCK_SIZE,
            dtype="bfloat16",
        ),  # fmt: skip
        copy_bandwidth_gb_s=copy_bandwidth_gb_s(),
    )
    batches, contexts = [1, 8, 64, 256], [128, 1024, 4096]
    total_blocks = max(batches) * math.ceil(max(contexts) / BLOCK_SIZE)
    kv_cache = torch.empty(
        (2, total_blocks + 1, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM), dtype=DTYPE, device="cuda"
    ).normal_()
    perm = torch.randperm(total_blocks, device="cuda") + 1  # block 0 is the null block
    result["decode"] = []
    for batch in batches:
        for ctx in contexts:
            try:
                row = bench_decode(kv_cache, perm, batch, ctx, l2_bytes, num_sms, args.quick)
                row["fraction_of_copy_bw"] = row["triton_gb_s"] / result["copy_bandwidth_gb_s"]
                print(f"decode b={batch} ctx={ctx}: {row['triton_graph_us']:.1f} us", flush=True)
            except Exception as e:  # noqa: BLE001 - record the failure, measure the rest
                row = dict(batch=batch, context=ctx, error=repr(e)[:300])
                print(f"decode b={batch} ctx={ctx}: {row['error']}", flush=True)
            result["decode"].append(row)
            torch.cuda.empty_cache()  # drop the reference's graph pools between cases
    result["sweep"] = []
    for batch, ctx in [
        (1, 1024),
        (1, 4096),
        (8, 1024),
        (8, 4096),
        (32, 4096),
        (64, 4096),
        (256, 1024),
    ]:
        result["sweep"] += sweep(kv_cache, perm, batch, ctx, num_sms)
    del kv_cache
    torch.cuda.empty_cache()
    result["prefill"] = []
    for n in (512, 2048):
        try:
            result["prefill"].append(bench_prefill(n, args.quick))
        except Exception as e:  # noqa: BLE001 - record the failure
            result["prefill"].append(dict(tokens=n, error=repr(e)[:300]))

    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "attention_bench.json").write_text(json.dumps(result, indent=2))
    print_table(result)


def print_table(result: dict) -> None:
    bw = result["copy_bandwidth_gb_s"]
    print(f"\n{result['gpu']}  torch {result['torch']}  triton {result['triton']}  "
          f"copy bandwidth {bw:.0f} GB/s (read+write)")  # fmt: skip
    print("decode (one layer, Mistral-7B heads, bf16): times in us per call")
    print(" batch   ctx splits | triton(graph) triton(eager) torch(eager) torch(graph) | "
          "KV GB/s  of copy bw  err")  # fmt: skip
    for r in result["decode"]:
        if "error" in r:
            print(f"{r['batch']:6d} {r['context']:5d} error: {r['error']}")
            continue
        tg = r["torch_graph_us"]
        print(f"{r['batch']:6d} {r['context']:5d} {r['num_splits']:6d} | "
              f"{r['triton_graph_us']:13.1f} {r['triton_eager_us']:13.1f} "
              f"{r['torch_eager_us']:12.1f} {(tg if tg else float('nan')):12.1f} | "
              f"{r['triton_gb_s']:7.0f} {r['fraction_of_copy_bw']:10.1%} "
              f"{r['rel_err_vs_torch_bf16']:.1e}")  # fmt: skip
    print("decode tile sweep (graph-timed): batch ctx BLOCK_N warps stages splits -> us, GB/s")
    for r in result["sweep"]:
        cfg = (f"{r['batch']:4d} {r['context']:5d} {r['block_n']:4d} {r['num_warps']:2d} "
               f"{r['num_stages']:2d} {r['num_splits']:3d}")  # fmt: skip
        print(f"  {cfg} -> " + (f"{r['us']:8.1f} {r['gb_s']:6.0f}" if "us" in r else r["error"]))
    print("prefill (one prompt, causal; graph-timed GPU time): us (TFLOP/s); KV write us")
    for r in result["prefill"]:
        if "error" in r:
            print(f"  {r['tokens']:5d} tokens: error: {r['error']}")
            continue
        print(f"  {r['tokens']:5d} tokens: triton {r['triton_us']:8.1f} ({r['triton_tflop_s']:.0f}) "
              f"torch {r['torch_us']:8.1f} ({r['torch_tflop_s']:.0f})  err {r['rel_err_vs_torch_bf16']:.1e} | "
              f"kv write triton {r['kv_write_triton_us']:.1f} torch {r['kv_write_torch_us']:.1f}")  # fmt: skip
        print(
            f"         triton eager (with launch cost) {r['triton_eager_us']:.1f} us; tile sweep:"
        )
        for e in r["sweep"]:
            cfg = f"BLOCK_M {e['block_m']:3d} BLOCK_N {e['block_n']:3d} w{e['num_warps']} s{e['num_stages']}"
            print(f"           {cfg} -> " + (f"{e['us']:8.1f} us {e['tflop_s']:5.0f} TFLOP/s err {e['rel_err']:.1e}" if "us" in e else e["error"]))  # fmt: skip


if __name__ == "__main__":
    main()
