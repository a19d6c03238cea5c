"""Attention backends over the paged KV cache. The torch reference runs everywhere; Triton
kernels run on CUDA; C kernels take the decode rows on the CPU. All offer
`write_kv(kv_cache, k, v, slot_mapping)` and `paged_attention(q, kv_cache, meta, scale,
sliding_window)`."""

from __future__ import annotations

from minerva.attention import cpu_backend, torch_paged
from minerva.attention.cpu_backend import CPUAttention
from minerva.attention.metadata import AttentionMetadata
from minerva.attention.torch_paged import paged_attention, write_kv
from minerva.attention.triton_backend import TritonAttention, triton_available
from minerva.errors import ConfigError


class TorchAttention:
    """The plain-torch reference behind the backend interface."""

    name = "torch"
    graph_safe = False  # reads host-side lengths every step

    write_kv = staticmethod(torch_paged.write_kv)
    paged_attention = staticmethod(torch_paged.paged_attention)


def select_attention_backend(
    requested: str, device_type: str, num_sms: int | None, cpu_kernels: bool = False
):
    """auto: Triton on CUDA when triton is installed; on the CPU the C decode kernels when
    cpu_kernels is on and they build; else the torch reference."""
    if requested == "auto" and device_type == "cpu" and cpu_kernels and cpu_backend.load():
        return CPUAttention()
    if requested == "torch" or (requested == "auto" and device_type != "cuda"):
        return TorchAttention()
    if device_type == "cuda" and triton_available():
        return TritonAttention(num_sms=num_sms)
    if requested == "triton":
        raise ConfigError(
            "attention_backend=triton needs a CUDA GPU and the triton package "
            "(it ships with CUDA builds of torch); use attention_backend=torch or auto"
        )
    return TorchAttention()


__all__ = [
    "AttentionMetadata",
    "CPUAttention",
    "TorchAttention",
    "TritonAttention",
    "paged_attention",
    "select_attention_backend",
    "triton_available",
    "write_kv",
]
