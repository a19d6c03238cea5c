"""What a model is built with: the kernel set, the attention backend and the quantization
config, chosen once by the worker (runner/worker.py) from the platform, the config and the
checkpoint, and handed to every layer at construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from minerva.attention import TorchAttention
from minerva.attention.base import AttentionBackend
from minerva.distributed import SINGLE, ParallelContext, PipelineContext
from minerva.ops.kernels import KernelSet, torch_kernels
from minerva.quant.base import LinearMethod, QuantConfig
from minerva.quant.registry import build_quant_config


@dataclass(frozen=True)
class ModelOptions:
    kernels: KernelSet = field(default_factory=torch_kernels)
    attention: AttentionBackend = field(default_factory=TorchAttention)
    quant: QuantConfig | None = None
    """None: dense weights run by `kernels`."""
    parallel: ParallelContext = SINGLE
    """This rank's place in the tensor-parallel group (layers keep their share of the model)."""
    pipeline: PipelineContext | None = None
    """This rank's pipeline stage (the model keeps its run of layers); None: every layer."""

    def __post_init__(self) -> None:
        if self.quant is None:
            object.__setattr__(self, "quant", build_quant_config(None, self.kernels))

    def linear_method(self, prefix: str) -> LinearMethod:
        """The method of the linear layer named `prefix` (e.g. "model.layers.0.mlp.down_proj")."""
        return self.quant.get_method(prefix)
