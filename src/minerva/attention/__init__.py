"""Attention backends over the paged KV cache. The torch reference runs everywhere; Triton
kernels run on CUDA; C kernels take the decode rows on the CPU. All implement base.py's
AttentionBackend protocol; `select_attention_backend` picks one."""

from __future__ import annotations

from minerva.attention import cpu_backend
from minerva.attention.base import AttentionBackend
from minerva.attention.cpu_backend import CPUAttention
from minerva.attention.metadata import AttentionMetadata
from minerva.attention.torch_paged import TorchAttention, paged_attention, write_kv
from minerva.attention.triton_backend import TritonAttention, triton_available
from minerva.errors import ConfigError


def select_attention_backend(
    requested: str,
    device_type: str,
    num_sms: int | None,
    cpu_kernels: bool = False,
    pdl: bool = False,
) -> AttentionBackend:
    """auto: Triton on CUDA when triton is installed; on the CPU the C decode kernels when
    cpu_kernels is on and they build; else the torch reference. pdl: Triton kernels launch
    with programmatic dependent launch (ops/pdl.py)."""
    if requested == "auto" and device_type == "cpu" and cpu_kernels and cpu_backend.load():
        return CPUAttention()
    if requested == "torch" or (requested == "auto" and device_type != "cuda"):
        return TorchAttention()
    if device_type == "cuda" and triton_available():
        return TritonAttention(num_sms=num_sms, pdl=pdl)
    if requested == "triton":
        raise ConfigError(
            "attention_backend=triton needs a CUDA GPU and the triton package "
            "(it ships with CUDA builds of torch); use attention_backend=torch or auto"
        )
    return TorchAttention()


__all__ = [
    "AttentionBackend",
    "AttentionMetadata",
    "CPUAttention",
    "TorchAttention",
    "TritonAttention",
    "paged_attention",
    "select_attention_backend",
    "triton_available",
    "write_kv",
]
