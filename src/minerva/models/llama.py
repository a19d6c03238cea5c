"""The Llama family: LlamaForCausalLM, MistralForCausalLM (sliding window), Qwen2ForCausalLM (qkv bias).

Parameter names follow Hugging Face, except that q/k/v and gate/up are fused into one matmul
each (`qkv_proj`, `gate_up_proj`); `load_weights` copies the checkpoint's pieces into place.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from minerva.attention import AttentionMetadata, TorchAttention
from minerva.errors import ModelLoadError
from minerva.models import cpu_linear, cpu_ops
from minerva.models.layers import GatedMLP, RMSNorm
from minerva.models.rope import apply_rope, fold_sin, rope_cos_sin


def layer_sliding_windows(config) -> list[int | None]:
    """Per-layer attention window (None = full attention), from the loader's layer_types."""
    window = config.sliding_window
    return [window if t == "sliding_attention" else None for t in config.layer_types]


class Attention(nn.Module):
    def __init__(self, config, layer_idx: int, window: int | None, dtype: torch.dtype) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.window = window
        self.layer_idx = layer_idx
        self.backend = TorchAttention()  # replaced by set_attention_backend
        self.rope = apply_rope  # models.triton_ops.apply_rope on CUDA (use_fused_kernels)
        self.rope_write_kv = None  # RoPE + KV write in one kernel on CUDA (use_fused_kernels)
        self.linear = F.linear  # models.cpu_linear.linear on CPU (use_cpu_kernels)
        h = config.hidden_size
        self.qkv_proj = nn.Linear(
            h, self.q_size + 2 * self.kv_size, bias=config.qkv_bias, dtype=dtype
        )
        self.o_proj = nn.Linear(self.q_size, h, bias=config.o_proj_bias, dtype=dtype)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        qkv = self.linear(x, self.qkv_proj.weight, self.qkv_proj.bias)
        out = self.attend(qkv, cos, sin, kv_cache, meta)
        return self.linear(out, self.o_proj.weight, self.o_proj.bias)

    def attend(
        self,
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """Projected qkv [T, q + 2 kv] -> RoPE, K/V into the cache, attention: [T, q_size]."""
        num_tokens = qkv.shape[0]
        heads, kv_heads = self.num_heads, self.num_kv_heads
        if self.rope_write_kv is not None:  # one kernel for RoPE and the KV write
            q = self.rope_write_kv(qkv, cos, sin, kv_cache, meta.slot_mapping, heads, kv_heads)
        else:
            qkv = qkv.view(num_tokens, heads + 2 * kv_heads, self.head_dim)
            qk = self.rope(qkv[:, : heads + kv_heads], cos, sin)  # q and k at once
            q, k = qk[:, :heads], qk[:, heads:]
            self.backend.write_kv(kv_cache, k, qkv[:, heads + kv_heads :], meta.slot_mapping)
        out = self.backend.paged_attention(q, kv_cache, meta, self.scale, self.window)
        return out.view(num_tokens, self.q_size)


class DecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int, window: int | None, dtype: torch.dtype) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_idx, window, dtype)
        mlp_bias = config.mlp_bias
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, mlp_bias, dtype)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)

    def forward(self, x, residual, cos, sin, kv_cache, meta):
        if residual is None:
            residual = x
            x = self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, cos, sin, kv_cache, meta)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    def __init__(self, config, dtype: torch.dtype) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, dtype=dtype)
        windows = layer_sliding_windows(config)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, windows[i], dtype) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)


class LlamaForCausalLM(nn.Module):
    """One model class for Llama, Mistral and Qwen2 checkpoints."""

    _stacked = {  # checkpoint piece -> (fused parameter, shard index)
        "q_proj": ("qkv_proj", 0),
        "k_proj": ("qkv_proj", 1),
        "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config, dtype: torch.dtype, max_positions: int) -> None:
        super().__init__()
        self.config = config
        self.dtype = dtype
        self.max_positions = max_positions
        self.model = LlamaModel(config, dtype)
        self.tie_word_embeddings = config.tie_word_embeddings
        if self.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, dtype=dtype)
        self.cos: torch.Tensor | None = None
        self.sin: torch.Tensor | None = None
        self.one_token = None  # models.triton_gemv on CUDA: the fused batch-1 path
        self.linear = F.linear  # for the vocab projection; see use_cpu_kernels

    def set_attention_backend(self, backend) -> None:
        """Use `backend` (torch reference or Triton) in every attention layer."""
        for layer in self.model.layers:
            layer.self_attn.backend = backend

    def use_fused_kernels(self, enabled: bool = True) -> None:
        """Swap the torch glue (add + RMSNorm, SiLU * mul, RoPE) for fused Triton kernels and
        one-token linear layers for the Triton GEMV, or back. RoPE and the KV-cache write
        become one kernel (the cache layout is the same for every attention backend)."""
        if enabled:
            from minerva.attention import triton_kv_write  # noqa: PLC0415 - needs triton
            from minerva.models import triton_gemv, triton_ops  # noqa: PLC0415 - needs triton
        for module in self.modules():
            if hasattr(module, "fused"):
                module.fused = triton_ops if enabled else None
            if hasattr(module, "linear"):
                module.linear = triton_ops.linear if enabled else F.linear
            if isinstance(module, Attention):
                module.rope = triton_ops.apply_rope if enabled else apply_rope
                module.rope_write_kv = triton_kv_write.rope_write_kv if enabled else None
        self.one_token = triton_gemv if enabled else None

    def use_cpu_kernels(self, enabled: bool = True) -> bool:
        """Run the linear layers through models.cpu_linear (C matrix-vector kernels) and the
        glue (add + RMSNorm, RoPE) through models.cpu_ops, or all through torch. Returns
        whether the kernels are on (they may fail to build: then torch, logged once)."""
        on = enabled and cpu_linear.load() and cpu_ops.load()
        for module in self.modules():
            if hasattr(module, "linear"):
                module.linear = cpu_linear.linear if on else F.linear
            if hasattr(module, "fused"):
                module.fused = cpu_ops if on else None
            if isinstance(module, Attention):
                module.rope = cpu_ops.apply_rope if on else apply_rope
        return on

    def init_rope(self, device: torch.device) -> None:
        """Build the cos/sin tables once, on the device, in the model dtype."""
        c = self.config
        cos, sin = rope_cos_sin(
            c.head_dim, c.rope_theta, c.rope_scaling, c.max_position_embeddings, self.max_positions
        )
        self.cos = cos.to(device, self.dtype)
        self.sin = fold_sin(sin).to(device, self.dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        """input_ids, positions [num_tokens] -> logits [len(logits_indices), vocab] in float32."""
        x = self.model.embed_tokens(input_ids)  # [num_tokens, hidden]
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)  # [T, 1, D]
        if self.one_token is not None and x.shape[0] == 1 and logits_indices.shape[0] == 1:
            return self._forward_one_token(x, cos, sin, kv_caches, meta)
        residual = None
        for layer, kv_cache in zip(self.model.layers, kv_caches):
            x, residual = layer(x, residual, cos, sin, kv_cache, meta)
        # Only the rows that sample need the final norm and the vocab projection.
        x, _ = self.model.norm(x[logits_indices], residual[logits_indices])
        return self.compute_logits(x)

    def _forward_one_token(self, x, cos, sin, kv_caches, meta) -> torch.Tensor:
        """Batch-1 decode on CUDA with the glue folded into the GEMVs: each linear layer that
        ends a block adds the residual stream in its epilogue, each one that starts a block
        applies the RMSNorm while loading its input, and the down projection computes
        silu(gate) * up while loading (the same roundings as the layered path)."""
        g = self.one_token
        layers = self.model.layers
        h, partials = x, None  # the residual stream and its sum-of-squares partials
        for i, (layer, kv_cache) in enumerate(zip(layers, kv_caches)):
            attn, mlp = layer.self_attn, layer.mlp
            norm = layer.input_layernorm
            if i == 0:
                qkv = g.gemv(norm(x), attn.qkv_proj.weight, attn.qkv_proj.bias)
            else:
                qkv = g.gemv_rms_norm(
                    h, partials, norm.weight, norm.eps, attn.qkv_proj.weight, attn.qkv_proj.bias
                )
            out = attn.attend(qkv, cos, sin, kv_cache, meta)
            h, partials = g.gemv_add_residual(out, attn.o_proj.weight, attn.o_proj.bias, h)
            norm = layer.post_attention_layernorm
            gate_up = g.gemv_rms_norm(
                h, partials, norm.weight, norm.eps, mlp.gate_up_proj.weight, mlp.gate_up_proj.bias
            )
            down = mlp.down_proj  # its input is silu(gate) * up, computed while loading
            h, partials = g.gemv_add_residual(gate_up, down.weight, down.bias, h, gated=True)
        norm = self.model.norm
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return g.gemv_rms_norm(h, partials, norm.weight, norm.eps, weight).float()

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return self.linear(hidden, weight).float()

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors into the (possibly fused) parameters; error on gaps."""
        params = dict(self.named_parameters())
        pending = {
            n: set(range(3 if "qkv_proj" in n else 2))
            for n in params
            if "qkv_proj" in n or "gate_up_proj" in n
        }
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb" in name or (name == "lm_head.weight" and self.lm_head is None):
                continue
            target, shard = name, None
            for piece, (fused, index) in self._stacked.items():
                if f".{piece}." in name:
                    target, shard = name.replace(piece, fused), index
                    break
            param = params.get(target)
            if param is None:
                raise ModelLoadError(
                    f"checkpoint tensor {name!r} does not belong to this model architecture"
                )
            dest = param.data if shard is None else self._shard_view(param.data, target, shard)
            if tuple(dest.shape) != tuple(tensor.shape):
                raise ModelLoadError(
                    f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                    f"but config.json implies {tuple(dest.shape)}"
                )
            dest.copy_(tensor)
            if shard is None:
                loaded.add(target)
            else:
                pending[target].discard(shard)
                if not pending[target]:
                    loaded.add(target)
        missing = sorted(set(params) - loaded)
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ModelLoadError(f"checkpoint is missing {len(missing)} tensors: {shown}")

    def _shard_view(self, data: torch.Tensor, target: str, shard: int) -> torch.Tensor:
        c = self.config
        if "qkv_proj" in target:
            q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
            starts, sizes = [0, q, q + kv], [q, kv, kv]
        else:
            i = c.intermediate_size
            starts, sizes = [0, i], [i, i]
        return data.narrow(0, starts[shard], sizes[shard])
