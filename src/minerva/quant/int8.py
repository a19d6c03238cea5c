"""int8 weights with one float32 scale per output row, quantized while a float checkpoint loads
(`--quantization int8`): weight-only 8-bit for any CUDA GPU, half the bytes of bf16 for a decode
step to stream, without fp8's need for compute capability 8.9.

A row's scale is its largest magnitude / 127 and its codes round to nearest (ties to even), so
every row uses the whole int8 range and a q / k / v or gate / up piece of a fused layer is
quantized on its own (fp8's rules, quant/fp8.py, with int8 codes). On CUDA one token runs the
Triton GEMV (ops/triton_gemv.py) on the int8 rows with the scale in its epilogue, keeping the
batch-1 fusions; several tokens run ops/triton_int8.py, which widens the codes to x's dtype in
registers (exact: |code| <= 127) and multiplies on the tensor cores, x staying in bf16. The CPU
runs the twin (decode the rows, multiply: correct, slow); q8_0 is the 8-bit type with CPU kernels.
"""

from __future__ import annotations

import torch

from minerva.quant.fp8 import TINY, FP8LinearMethod

INT8_MAX = 127.0


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (int8 codes [N, K], float32 scales [N]): w ~ codes * scale[:, None]."""
    w = w.float()
    scale = (w.abs().amax(dim=1) / INT8_MAX).clamp(min=TINY)
    codes = torch.round(w / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return codes, scale


class Int8LinearMethod(FP8LinearMethod):
    """FP8LinearMethod's layout and batch-1 path with int8 codes; see the module docstring."""

    name = "int8"
    codes_dtype = torch.int8

    def check_device(self, dest: torch.Tensor) -> None:
        return None  # int8 rows live anywhere

    def quantize(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_rows(w)

    def several_tokens(
        self, x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor | None:
        if not (x.is_cuda and x.dtype in (torch.bfloat16, torch.float16)):
            return None
        from minerva.ops import triton_int8  # noqa: PLC0415 - needs triton (CUDA only)

        return triton_int8.gemm(x, codes, scale)
