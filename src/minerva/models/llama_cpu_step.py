"""The CPU's whole-step decode plan of a Llama-family model (ops/cpu_decode_step.py).

`build` reads a loaded LlamaForCausalLM into the plain-data plan the C step runs: every layer's
norm weights, sliding window and linear layers (each through its method's `step_groups`). It
returns None, and the model keeps its layered forward, wherever the step would not compute what
that forward computes: another kernel set or attention backend than the CPU's C ones, GGUF
weights in a model that is not float32, a method without a step kernel, weights not yet
processed.
"""

from __future__ import annotations

import ctypes

import torch

from minerva.ops import cpu_decode_step as step
from minerva.ops.cpu_decode_step import DecodeStep, LayerPlan, LinearPlan, ModelPlan


def build(model, kv_dtype: torch.dtype | None = None) -> DecodeStep | None:
    """The step of `model` (a LlamaForCausalLM) over a KV cache of `kv_dtype` (default: the
    model's dtype), or None where it does not apply."""
    options, dtype = model.options, model.dtype
    kv_dtype = kv_dtype or dtype
    if options.kernels.name != "cpu" or dtype not in step.DTYPES or model.cos is None:
        return None
    step_kernels = getattr(options.attention, "step_kernels", None)
    attention = step_kernels(dtype, kv_dtype) if step_kernels is not None else None
    kernels = step.kernels(attention, dtype) if attention is not None else None
    if kernels is None:
        return None
    keep: list[torch.Tensor] = []
    layers = model.model.layers
    eps = layers[0].input_layernorm.eps
    plans = (LayerPlan * len(layers))()
    for plan, layer in zip(plans, layers):
        attn, mlp = layer.self_attn, layer.mlp
        norms = {"in_norm": layer.input_layernorm, "post_norm": layer.post_attention_layernorm}
        if attn.q_norm is not None:  # Qwen3: each q / k head normed before RoPE
            norms |= {"q_norm": attn.q_norm, "k_norm": attn.k_norm}
        if any(n.eps != eps for n in norms.values()):
            return None
        linears = [
            (plan.qkv, attn.qkv_proj),
            (plan.o, attn.o_proj),
            (plan.gate_up, mlp.gate_up_proj),
            (plan.down, mlp.down_proj),
        ]
        if not all(_linear(dst, src, kernels, dtype, keep) for dst, src in linears):
            return None
        for field, norm in norms.items():  # absent q / k norms stay NULL
            ptr = _ptr(norm.weight, dtype, keep)
            if ptr is None:
                return None
            setattr(plan, field, ptr)
        plan.window = attn.window or 0
    c, first = model.config, layers[0].self_attn
    head = LinearPlan()
    if not _linear(head, model.lm_head, kernels, dtype, keep):
        return None
    final_norm = _ptr(model.model.norm.weight, dtype, keep)
    cos, sin = _ptr(model.cos, dtype, keep), _ptr(model.sin, dtype, keep)
    if final_norm is None or cos is None or sin is None or model.model.norm.eps != eps:
        return None
    embed = model.model.embed_tokens  # a table the step gathers from; else the caller's
    embed_type, embed_row_bytes = 0, 0
    if embed.blocks_type is None:
        embed_ptr = _ptr(embed.weight, dtype, keep)
    elif step.embeds_blocks(embed.blocks_type) and _ptr(embed.weight, torch.uint8, keep):
        # GGUF blocks: the step dequantizes the rows it gathers
        embed_ptr, embed_type = embed.weight.data_ptr(), int(embed.blocks_type)
        embed_row_bytes = embed.weight.shape[1]
    else:
        embed_ptr = None
    plan = ModelPlan(
        layers=len(layers), hidden=c.hidden_size, heads=first.num_heads,
        kv_heads=first.num_kv_heads, head_dim=first.head_dim,
        intermediate=layers[0].mlp.intermediate_size, vocab=model.lm_head.out_features,
        max_positions=model.cos.shape[0], eps=eps, scale=first.scale, dtype=step.DTYPES[dtype],
        layer=ctypes.cast(plans, ctypes.POINTER(LayerPlan)), final_norm=final_norm, head=head,
        cos=cos, sin=sin, k=kernels, embed=embed_ptr, embed_rows=embed.weight.shape[0],
        embed_type=embed_type, embed_row_bytes=embed_row_bytes, team=1,
    )  # fmt: skip
    return DecodeStep(plan, plans, keep, dtype, kv_dtype)


def _linear(dst: LinearPlan, layer, kernels, dtype: torch.dtype, keep: list) -> bool:
    """Fill `dst` from a linear layer; False where its method has no step kernel."""
    groups = layer.method.step_groups(layer)
    if not groups or len(groups) > step.MAX_GROUPS:
        return False
    if any(kind != step.DENSE for kind, *_ in groups) and dtype != torch.float32:
        return False  # the GGUF kernels take float32 rows
    if any(kind == step.DENSE and t.dtype != dtype for kind, _, _, t in groups):
        return False
    if any(kind == step.X8 for kind, *_ in groups) and not kernels.x8:
        return False
    if any(kind == step.FILE for kind, *_ in groups) and not kernels.qgemm:
        return False
    dst.in_features, dst.out_features, dst.n_groups = (
        layer.in_features,
        layer.out_features,
        len(groups),
    )
    for g, (kind, ggml_type, rows, tensor) in zip(dst.groups, groups):
        g.kind, g.type, g.rows, g.w = kind, ggml_type, rows, tensor.data_ptr()
        keep.append(tensor)
    if layer.bias is None:
        dst.bias = None
    else:
        dense = groups[0][0] == step.DENSE
        dst.bias = _ptr(layer.bias, dtype if dense else torch.float32, keep)
        if dst.bias is None:
            return False
    return sum(rows for _, _, rows, _ in groups) == layer.out_features


def _ptr(t: torch.Tensor, dtype: torch.dtype, keep: list[torch.Tensor]) -> int | None:
    """The address of a contiguous CPU tensor of `dtype` (kept alive), else None."""
    if t.dtype != dtype or not t.is_cpu or not t.is_contiguous():
        return None
    keep.append(t)
    return t.data_ptr()
