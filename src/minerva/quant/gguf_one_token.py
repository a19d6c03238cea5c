"""The batch-1 GEMVs of GGUF layers on CUDA (plane layout): every group of a layer over one x,
with the fused RMSNorm in, SiLU * mul in and residual out of the batch-1 path (quant/base.py).

bf16 / fp16 models quantize x to 8 bits (ops/triton_qgemv_int8.py); float32 models and
INT8_ACTIVATIONS off run the float kernel (ops/triton_quant.py). Quantizing x is a launch of its
own, ~130 per 7B decode step; a layer whose output the next layer reads through a norm or a
gate (o_proj -> gate_up, gate_up -> down, down -> the next qkv or the head: the model says so in
`layer.one_token_next`, see quant/base.py) lets its GEMV's last program quantize that output
instead, and hands the result to the next call (`Handoff`), which skips its own quantization.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FUSE_QUANT_OUT = False
"""Hand the next layer its 8-bit input from the producing GEMV (off: a quantize launch each,
which measured faster on a GPU: see the README's GGUF section)."""


@dataclass
class Handoff:
    out: torch.Tensor  # the producing layer's output (the next call's h or x)
    xq: tuple  # its 8-bit form (ops/triton_qgemv_int8.QuantX)
    norm_weight: torch.Tensor | None  # the RMSNorm applied before quantizing, or None
    gated: bool  # silu(gate) * up quantized


class OneToken:
    """State of a model's batch-1 chain: the counter the producing kernels use and the pending
    hand-off (one at a time: the next call takes it or drops it)."""

    def __init__(self) -> None:
        self.count: torch.Tensor | None = None
        self.pending: Handoff | None = None

    def take(self, x: torch.Tensor, norm_weight: torch.Tensor | None, gated: bool) -> tuple | None:
        """The pending 8-bit x if it was made of this very x, read the same way; dropped either
        way (a plain read matches no hand-off: each has a norm or a gate)."""
        p, self.pending = self.pending, None
        if p is not None and p.out is x and p.norm_weight is norm_weight and p.gated == gated:
            return p.xq
        return None

    def counter(self, device: torch.device) -> torch.Tensor:
        """An int32 zero on `device` (every kernel leaves it at zero; kept for the model's life,
        also when first made inside a CUDA graph's capture)."""
        if self.count is None or self.count.device != device:
            self.count = torch.zeros(1, dtype=torch.int32, device=device)
        return self.count


def run(method, layer, x, *, norm=None, gated=False, residual=None):
    """(layer(x) [1, out_features] (+ residual), partials of the new residual stream or None)."""
    from minerva.ops import triton_qgemv_int8, triton_quant  # noqa: PLC0415 - CUDA only
    from minerva.quant import gguf  # noqa: PLC0415 - INT8_ACTIVATIONS, read at call time

    state: OneToken = method.one_token_state
    pdl = method._pdl
    out = torch.empty(1, layer.out_features, dtype=x.dtype, device=x.device)
    int8 = gguf.INT8_ACTIVATIONS and x.dtype != torch.float32
    groups = layer.gguf_groups
    xq = quant_out = None
    if int8:
        xq = state.take(x, norm[1] if norm is not None else None, gated)
        if xq is None:
            xq = triton_qgemv_int8.quantize_x(x, layer.in_features, norm, gated, pdl=pdl)
        quant_out = _quant_out(state, layer, out, residual is not None, len(groups))
    parts, start = [], 0
    for name, ggml_type, rows, _ in groups:
        bias = None if layer.bias is None else layer.bias[start : start + rows]
        o = out[:, start : start + rows]
        res = None if residual is None else residual[:, start : start + rows]
        planes = getattr(layer, name)
        if int8:
            p = triton_qgemv_int8.qgemv_int8(
                xq, planes, ggml_type, bias, out=o, residual=res, pdl=pdl, quant_out=quant_out
            )
        else:
            _, p = triton_quant.qgemv(
                x, planes, ggml_type, bias, out=o, norm=norm, residual=res, gated=gated, pdl=pdl
            )
        parts.append(p)
        start += rows
    if quant_out is not None:
        norm_w = quant_out.norm[0] if quant_out.norm is not None else None
        state.pending = Handoff(out, quant_out.xq, norm_w, quant_out.gated)
    if residual is None:
        return out, None
    return out, parts[0] if len(parts) == 1 else torch.cat(parts)


def _quant_out(state: OneToken, layer, out: torch.Tensor, res_out: bool, num_groups: int):
    """The QuantOut for this layer's GEMV, or None (not linked, several groups, no counter)."""
    from minerva.ops import triton_qgemv_int8  # noqa: PLC0415 - CUDA only

    nxt = getattr(layer, "one_token_next", None)
    if not FUSE_QUANT_OUT or nxt is None or num_groups != 1:
        return None
    gated = nxt == "gated"
    if gated == res_out:  # a gate's producer adds no residual; a norm's producer does
        return None
    kq = out.shape[1] // 2 if gated else out.shape[1]
    if kq % 32:
        return None
    return triton_qgemv_int8.QuantOut(
        triton_qgemv_int8.quant_out_buffers(kq, out.device),
        state.counter(out.device),
        norm=None if gated else nxt,
        gated=gated,
    )
