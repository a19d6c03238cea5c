"""The LinearMethod for GGUF blocks: weights stay quantized (uint8 blocks) in memory.

A layer's parameters are its blocks, uint8 [rows, row_bytes], so weight_bytes is what the file
holds. The pieces of a fused layer (q | k | v, gate | up) may come in different types (Q4_K_M
keeps attn_v in Q6_K): consecutive pieces of one type are concatenated into one parameter,
`weight`, then `weight_g1`, `weight_g2`... Float checkpoint tensors are quantized while loading
(in-situ quantization) to the type `target_type(layer, shard_id)` chooses. `apply` runs the C
kernel where it exists and wins, else the torch twin: dequantize a tile of rows, matmul, next
tile. On the CPU, groups of the types with an interleaved layout (ops/cpu_quant_x8.c: Q4_0, Q5_0,
Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS) are rewritten into it once, after loading, and the
file's pages are let go. On CUDA with the Triton kernel set, Q4_0, Q8_0, Q4_K, Q5_K and Q6_K are
rewritten into planes (quant/gguf_planes.py) and run by ops/triton_quant.py, whose one-token kernel also takes the
batch-1 path's fused norm and residual hooks; the other types (IQ4_NL, IQ4_XS, Q2_K ...) keep the
file layout there and run the torch twin (logged once per type).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from minerva.errors import ModelLoadError
from minerva.ops import cpu_decode_step, cpu_quant, cpu_quant_x8
from minerva.quant import gguf_matmul as gguf_matmul_module
from minerva.quant import gguf_one_token, gguf_planes
from minerva.quant.base import LinearMethod, QuantConfig, shape_mismatch
from minerva.quant.gguf_cached_pieces import cached_piece, pieces_with_starts, planned_pieces
from minerva.quant.gguf_matmul import gguf_matmul
from minerva.quant.gguf_mix import base_type, fit_type, mix_type
from minerva.quant.gguf_quantize import quantize_tensor
from minerva.quant.gguf_types import (
    FLOAT_TYPES,
    SUPPORTED_WEIGHT_TYPES,
    GGMLType,
    LazyQuantizedTensor,
    QuantizedTensor,
    row_bytes,
    type_name,
)
from minerva.quant.x8_cache import LayerSlots, PackedGroup

INT8_ACTIVATIONS = True
"""One-token products on CUDA quantize x to 8 bits (llama.cpp's way, ops/triton_qgemv_int8.py);
off, the float kernel decodes the weights (ALU-bound on an H100: half the decode speed, see
benchmarks/results/decode_variants_mistral-7b-Q4_K_M_h100.json)."""

logger = logging.getLogger(__name__)
_twin_logged: set[GGMLType] = set()  # types whose CUDA fallback was logged

ShardTypes = Callable[[nn.Module, "str | int | None"], GGMLType]


class GGUFLinearMethod(LinearMethod):
    name = "gguf"
    tensor_parallel = True
    """Float tensors sliced per rank, then quantized (in situ); a GGUF file's blocks are refused
    under parallelism before loading (runner/parallel_checks.py)."""

    def __init__(self, kernels=None, target_type: GGMLType | ShardTypes | None = None) -> None:
        """`target_type`: the type float tensors are quantized to (a GGMLType, or a function of
        (layer, shard_id)); None accepts only tensors that are already blocks."""
        self.kernels = kernels
        self.target_type = target_type
        self.one_token_state = gguf_one_token.OneToken()

    def create_weights(self, layer, in_features, output_sizes, bias, params_dtype) -> None:
        # a placeholder the loader can address; the blocks replace it in process_after_loading
        layer.weight = nn.Parameter(torch.empty(0, dtype=torch.uint8), requires_grad=False)
        if bias:
            out = sum(output_sizes)
            layer.bias = nn.Parameter(torch.zeros(out, dtype=params_dtype), requires_grad=False)
        else:
            layer.register_parameter("bias", None)
        layer.gguf_pending = {}  # first output row -> QuantizedTensor
        layer.gguf_groups = []  # [(parameter name, GGMLType, rows, layout)]
        layer.gguf_shards = list(zip(layer.shard_ids, output_sizes, strict=True))
        layer.gguf_cached = set()  # first output rows of pieces a cache hit holds

    def load_weight(self, layer, param, tensor, shard_id) -> None:
        start, size = (
            layer.shard_rows(shard_id) if shard_id is not None else (0, layer.out_features)
        )
        if param is layer.bias and param is not None:
            if tuple(tensor.shape) != (size,):
                raise shape_mismatch(tensor.shape, (size,))
            param.data.narrow(0, start, size).copy_(torch.as_tensor(tensor))
            return
        want = (size, layer.in_features)
        if tuple(tensor.shape) != want:
            raise shape_mismatch(tensor.shape, want)
        if start in layer.gguf_cached:  # mapped from the weight cache: never quantized
            layer.gguf_pending[start] = cached_piece(self._target(layer, shard_id), want)
            return
        layer.gguf_pending[start] = self._blocks(layer, tensor, shard_id)

    def _target(self, layer, shard_id) -> GGMLType:
        target = self.target_type
        ggml_type = target if isinstance(target, GGMLType) else target(layer, shard_id)
        return fit_type(ggml_type, layer.in_features)  # rows of whole blocks

    def _blocks(self, layer, tensor, shard_id) -> QuantizedTensor:
        """The tensor as checked GGUF blocks (float tensors quantized to the target type)."""
        if not isinstance(tensor, QuantizedTensor):
            if self.target_type is None:
                raise ModelLoadError("is a float tensor, but this layer takes GGUF blocks")
            return quantize_tensor(torch.as_tensor(tensor), self._target(layer, shard_id))
        if tensor.ggml_type not in SUPPORTED_WEIGHT_TYPES:
            names = ", ".join(t.name for t in sorted(SUPPORTED_WEIGHT_TYPES))
            raise ModelLoadError(
                f"has type {type_name(tensor.ggml_type)}, which Minerva does not support "
                f"(supported: {names}); use a GGUF file quantized to one of these"
            )
        rows, cols = tensor.shape
        if isinstance(tensor, LazyQuantizedTensor) and not tensor.made:
            return self._checked_lazy(tensor, rows, cols)
        data = tensor.data
        if isinstance(data, np.ndarray):
            data = torch.from_numpy(np.array(data, dtype=np.uint8, copy=not data.flags.writeable))
        try:
            nbytes = row_bytes(tensor.ggml_type, cols)
        except ValueError as e:
            raise ModelLoadError(str(e)) from e
        if data.numel() != rows * nbytes:
            raise ModelLoadError(
                f"holds {data.numel()} bytes, but {rows} rows of {cols} {tensor.ggml_type.name} "
                f"values take {rows * nbytes}; the file is truncated or corrupt"
            )
        return QuantizedTensor(
            data.reshape(rows, nbytes), tensor.ggml_type, (rows, cols), release=tensor.release
        )

    def _named_groups(self, layer) -> list[tuple[str, list[QuantizedTensor]]]:
        """The pending pieces in output order, consecutive ones of one type grouped, each group
        with its parameter name ("weight", "weight_g1" ...)."""
        pending = layer.gguf_pending
        starts = sorted(pending)
        covered = sum(pending[s].shape[0] for s in starts)
        if covered != layer.out_features:
            raise ModelLoadError(f"has {covered} of its {layer.out_features} output rows")
        groups: list[list[QuantizedTensor]] = []
        for s in starts:
            if groups and groups[-1][0].ggml_type == pending[s].ggml_type:
                groups[-1].append(pending[s])
            else:
                groups.append([pending[s]])
        return [("weight" if i == 0 else f"weight_g{i}", g) for i, g in enumerate(groups)]

    def packed_groups(self, layer, prefix: str) -> list[PackedGroup]:
        """The groups that take the x8 layout (same bytes as the file's rows)."""
        if not layer.gguf_pending:
            return []
        return self._x8_groups(layer, prefix, self._named_groups(layer))

    def planned_groups(self, layer, prefix: str) -> list[PackedGroup]:
        """An in-situ quantization's x8 groups before loading: each piece's target type and
        shape, grouped as _named_groups will group the quantized pieces."""
        if self.target_type is None or layer.gguf_pending:
            return []
        return self._x8_groups(layer, prefix, self._planned(layer))

    def skip_planned(self, layer, prefix: str) -> list[tuple[str, str | int | None]]:
        planned = self._planned(layer)
        x8 = {g.name for g in self._x8_groups(layer, "", planned)}
        shard_ids = [shard_id for shard_id, _ in layer.gguf_shards]
        taken = []
        for shard_id, (group, start, piece) in zip(
            shard_ids, pieces_with_starts(planned), strict=True
        ):
            if group in x8:  # a file-layout group is not in the cache: quantized as it comes
                layer.gguf_cached.add(start)
                layer.gguf_pending[start] = piece
                taken.append((checkpoint_name(prefix, shard_id), shard_id))
        return taken

    def _planned(self, layer) -> list[tuple[str, list[QuantizedTensor]]]:
        return planned_pieces(layer, lambda shard_id: self._target(layer, shard_id))

    def _x8_groups(self, layer, prefix, named) -> list[PackedGroup]:
        device, cols, out = layer.weight.device, layer.in_features, []
        for name, group in named:
            ggml_type = group[0].ggml_type
            if self._layout(device, ggml_type, group, cols) == "x8":
                rows = sum(g.shape[0] for g in group)
                nbytes = rows * row_bytes(ggml_type, cols)
                full = f"{prefix}.{name}" if prefix else name
                out.append(PackedGroup(full, int(ggml_type), rows, cols, nbytes))
        return out

    @staticmethod
    def _checked_lazy(tensor: LazyQuantizedTensor, rows: int, cols: int) -> QuantizedTensor:
        """Its size checked without making its data (a weight cache hit never needs it)."""
        try:
            nbytes = row_bytes(tensor.ggml_type, cols)
        except ValueError as e:
            raise ModelLoadError(str(e)) from e
        if tensor.nbytes != rows * nbytes:
            raise ModelLoadError(
                f"holds {tensor.nbytes} bytes, but {rows} rows of {cols} "
                f"{tensor.ggml_type.name} values take {rows * nbytes}; the file is truncated "
                "or corrupt"
            )
        return tensor

    def process_after_loading(self, layer, slots: LayerSlots | None = None) -> None:
        if not layer.gguf_pending:
            return
        layer.gguf_groups = []
        device = layer.weight.device  # the placeholder's: where the model was built
        for name, group in self._named_groups(layer):
            ggml_type, cols = group[0].ggml_type, layer.in_features
            layout = self._layout(device, ggml_type, group, cols)
            if layout == "x8":
                data = _interleaved(group, cols, slots, name)
            else:
                data = torch.cat([g.data for g in group]) if len(group) > 1 else group[0].data
                data = data.to(device).contiguous()
                if layout == "planes":
                    data = gguf_planes.to_planes(data, ggml_type, cols)
                if layout == "planes" or device.type != "cpu" or len(group) > 1:
                    for g in group:  # copied: the file's pages can go
                        if g.release is not None:
                            g.release()
            setattr(layer, name, nn.Parameter(data, requires_grad=False))
            layer.gguf_groups.append((name, ggml_type, int(data.shape[0]), layout))
        layer.gguf_pending = {}

    def _layout(self, device, ggml_type, group, cols) -> str:
        """ "x8" (CPU kernels), "planes" (Triton kernels) or "file" (the torch twin)."""
        if device.type == "cpu":
            if all(cpu_quant_x8.supports(ggml_type, g.shape[0], cols) for g in group):
                return "x8"
        elif self._triton and gguf_planes.supports(ggml_type, cols):
            return "planes"
        elif device.type == "cuda" and ggml_type not in _twin_logged:
            _twin_logged.add(ggml_type)
            logger.info(
                "%s weights have no Triton kernel: they run as dequantize + matmul in torch "
                "(correct, slower than Q4_K / Q6_K / Q8_0 on a GPU)",
                ggml_type.name,
            )
        return "file"

    @property
    def _triton(self) -> bool:
        return self.kernels is not None and self.kernels.name == "triton"

    @property
    def _pdl(self) -> bool:
        return bool(self.kernels is not None and self.kernels.pdl)

    def weight_bytes(self, layer) -> int:
        """The blocks' bytes; before loading, what the target types will take (0 without)."""
        bias = 0 if layer.bias is None else layer.bias.numel() * layer.bias.element_size()
        if layer.gguf_groups or self.target_type is None:
            return super().weight_bytes(layer)
        total = bias
        for shard_id, rows in layer.gguf_shards:
            target = self.target_type
            ggml_type = target if isinstance(target, GGMLType) else target(layer, shard_id)
            total += rows * row_bytes(fit_type(ggml_type, layer.in_features), layer.in_features)
        return total

    def apply(self, layer, x: torch.Tensor) -> torch.Tensor:
        if layer.gguf_pending:
            self.process_after_loading(layer)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])  # [T, K]
        if x2.shape[0] == 1 and self._fused(layer):
            y = gguf_one_token.run(self, layer, x2)[0]
            return y.reshape(*lead, y.shape[-1])
        int8 = INT8_ACTIVATIONS and x2.shape[0] > 1
        outs = [
            gguf_matmul(x2, getattr(layer, name), ggml_type, rows, layout, self._pdl, int8)
            for name, ggml_type, rows, layout in layer.gguf_groups
        ]
        y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        if layer.bias is not None:
            y = y + layer.bias.to(y.dtype)
        return y.to(x.dtype).reshape(*lead, y.shape[-1])

    def step_groups(self, layer):
        """The groups in the x8 layout, or the file's for a type with a C kernel (what
        gguf_matmul runs for float32 x on the CPU)."""
        if layer.gguf_pending or not layer.gguf_groups:
            return None
        if gguf_matmul_module.KERNEL_MAX_ROWS < cpu_decode_step.MAX_ROWS:
            return None  # apply would take the torch twin for some of the step's rows
        if layer.bias is not None and layer.bias.dtype != torch.float32:
            return None
        groups = []
        for name, ggml_type, rows, layout in layer.gguf_groups:
            data = getattr(layer, name)
            if not data.is_cpu or not data.is_contiguous():
                return None
            if layout == "x8":
                kind = cpu_decode_step.X8
            elif layout == "file" and cpu_quant.has_kernel(ggml_type):
                kind = cpu_decode_step.FILE
            else:
                return None
            groups.append((kind, int(ggml_type), rows, data))
        return groups

    # -- one token: the Triton GEMVs over every group (quant/gguf_one_token.py) --------------
    def _fused(self, layer) -> bool:
        return bool(layer.gguf_groups) and all(g[3] == "planes" for g in layer.gguf_groups)

    def apply_norm_in(self, layer, h, partials, norm_weight, eps) -> torch.Tensor:
        if layer.gguf_pending:
            self.process_after_loading(layer)
        if not self._fused(layer):
            return super().apply_norm_in(layer, h, partials, norm_weight, eps)
        return gguf_one_token.run(self, layer, h, norm=(partials, norm_weight, eps))[0]

    def apply_add_residual(self, layer, x, residual, gated=False):
        if layer.gguf_pending:
            self.process_after_loading(layer)
        if not self._fused(layer):
            return super().apply_add_residual(layer, x, residual, gated)
        return gguf_one_token.run(self, layer, x, residual=residual, gated=gated)


def file_blocks(layer, name: str) -> torch.Tensor:
    """A group's blocks in the file's layout (undoing the x8 or plane rewrite where applied)."""
    for group, ggml_type, _, layout in layer.gguf_groups:
        if group == name:
            data = getattr(layer, name)
            if layout == "x8":
                return cpu_quant_x8.unpack(data, ggml_type, layer.in_features)
            if layout == "planes":
                return gguf_planes.from_planes(data, ggml_type, layer.in_features)
            return data
    raise KeyError(name)


def _interleaved(group: list[QuantizedTensor], cols: int, slots=None, name="") -> torch.Tensor:
    """The pieces of one group, rewritten into one interleaved tensor, or (a weight cache hit)
    the cache file's mapped copy of it. Each piece's mapped file pages are let go once copied,
    so loading never holds the file and the copy at once."""
    rows = sum(g.shape[0] for g in group)
    shape = (rows, row_bytes(group[0].ggml_type, cols))
    mapped = slots.get(name, shape) if slots is not None and slots.filled else None
    if mapped is not None:
        for g in group:
            if g.release is not None:
                g.release()
        return mapped
    out = torch.empty(shape, dtype=torch.uint8)
    start = 0
    for g in group:
        data = torch.as_tensor(g.data)
        cpu_quant_x8.repack(data, g.ggml_type, cols, out=out[start : start + g.shape[0]])
        start += g.shape[0]
        if g.release is not None:
            g.release()
    if slots is not None and not slots.filled:
        slots.put(name, out)  # written to the cache file after loading
    return out


# ---- in-situ quantization: which type each piece of each layer gets -----------------------

_LAYER = re.compile(r"layers\.(\d+)\.")
_SHARD_NAMES = {
    ("qkv_proj", "q"): "q_proj",
    ("qkv_proj", "k"): "k_proj",
    ("qkv_proj", "v"): "v_proj",
    ("gate_up_proj", 0): "gate_proj",
    ("gate_up_proj", 1): "up_proj",
}


def checkpoint_name(prefix: str, shard_id: str | int | None) -> str:
    """The Hugging Face weight name of one piece of a (fused) layer, for the mix rules."""
    head, _, last = prefix.rpartition(".")
    piece = _SHARD_NAMES.get((last, shard_id), last)
    return f"{head}.{piece}.weight" if head else f"{piece}.weight"


class GGUFQuantConfig(QuantConfig):
    """In-situ quantization of a float checkpoint to `mix` (q4_k_m, q8_0, Q4K ...) following
    llama.cpp's per-tensor rules (quant/gguf_mix.py)."""

    def __init__(self, mix: str, num_layers: int, kernels=None) -> None:
        self.mix, self.num_layers, self.kernels = mix, num_layers, kernels
        self.name = f"gguf-{mix.lower()}"
        base_type(mix)  # a ConfigError names the choices

    def embedding_type(self, vocab_size: int, hidden_size: int) -> int | None:
        """The mix's type of token_embd, as llama-quantize chooses it (a float type: dense)."""
        name = "model.embed_tokens.weight"
        chosen = mix_type(self.mix, name, None, self.num_layers, cols=hidden_size)
        return None if chosen in FLOAT_TYPES else chosen

    def get_method(self, prefix: str) -> LinearMethod:
        found = _LAYER.search(prefix)
        index = int(found.group(1)) if found else None

        def target(module: nn.Module, shard_id: str | int | None) -> GGMLType:
            name = checkpoint_name(prefix, shard_id)
            cols = module.in_features
            return mix_type(self.mix, name, index, self.num_layers, cols=cols)

        return GGUFLinearMethod(self.kernels, target)
