"""What the weight-cache tests share (test_weight_cache.py: GGUF files; test_weight_cache_insitu.py:
float folders quantized while loading): the prompt, and reading back the x8 groups, a greedy run
and the published cache files (their cache directory is conftest.py's weights_dir fixture)."""

from __future__ import annotations

from pathlib import Path

import torch

from minerva import LLM, SamplingParams
from minerva.quant import x8_cache

PROMPT = [1, 17, 42, 99, 3, 250, 7]
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=1)


def x8_bytes(llm: LLM) -> dict[str, torch.Tensor]:
    model = llm.engine.worker.model
    found = {}
    for prefix, module in model.named_modules():
        for name, _, _, layout in getattr(module, "gguf_groups", []):
            if layout == "x8":
                found[f"{prefix}.{name}"] = getattr(module, name).detach().clone()
    return found


def run(llm: LLM) -> tuple[list[int], list[float]]:
    out = llm.generate([PROMPT], GREEDY)[0].outputs[0]
    return out.token_ids, [lp.logprob for lp in out.logprobs]


def cache_files(weights_dir: Path) -> list[Path]:
    if not weights_dir.exists():
        return []
    found = weights_dir.glob(f"*{x8_cache.SUFFIX}")
    return sorted(p for p in found if not p.name.startswith(x8_cache.TEMP_PREFIX))
