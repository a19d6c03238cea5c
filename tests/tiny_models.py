"""Tiny random Llama / Mistral / Qwen2 / Qwen3 checkpoints built with transformers, for tests."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 256

BASE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
    initializer_range=0.1,
)


def make_config(arch: str, **overrides):
    import transformers

    kwargs = {**BASE, **overrides}
    if arch == "llama":
        return transformers.LlamaConfig(**kwargs)
    if arch == "mistral":
        kwargs.setdefault("sliding_window", 8)
        return transformers.MistralConfig(**kwargs)
    if arch == "qwen2":
        return transformers.Qwen2Config(**kwargs)
    if arch == "qwen3":
        kwargs.setdefault("head_dim", 16)  # Qwen3Config's default is 128, not hidden / heads
        return transformers.Qwen3Config(**kwargs)
    raise ValueError(arch)


def build_tiny_model(
    path: Path, arch: str = "llama", seed: int = 0, dtype=torch.float32, **overrides
):
    """Save a random model into `path`; returns the transformers model (eval, fp32)."""
    import transformers

    torch.manual_seed(seed)
    config = make_config(arch, **overrides)
    cls = {
        "llama": transformers.LlamaForCausalLM,
        "mistral": transformers.MistralForCausalLM,
        "qwen2": transformers.Qwen2ForCausalLM,
        "qwen3": transformers.Qwen3ForCausalLM,
    }[arch]
    model = cls(config).to(dtype).eval()
    if arch == "qwen3":  # q_norm / k_norm start at ones: random weights, so a test sees them
        for name, param in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                param.data.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    return model


@torch.no_grad()
def hf_greedy(
    model, prompt: list[int], max_new_tokens: int, repetition_penalty: float = 1.0
) -> tuple[list[int], list[torch.Tensor]]:
    """The slow twin: full forward without a cache at every step; returns tokens and logits.

    repetition_penalty follows the CTRL / transformers definition over prompt + output."""
    ids = list(prompt)
    logits_per_step = []
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([ids])).logits[0, -1].float()
        logits_per_step.append(logits)
        if repetition_penalty != 1.0:
            seen = torch.zeros_like(logits, dtype=torch.bool)
            seen[torch.tensor(ids)] = True
            pen = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
            logits = torch.where(seen, pen, logits)
        ids.append(int(logits.argmax()))
    return ids[len(prompt) :], logits_per_step


def build_tiny_text_model(path: Path, seed: int = 0, arch: str = "llama", **overrides) -> Path:
    """A tiny random model with a real byte-level BPE tokenizer (vocab 500) and chat template."""
    from minerva.tokenizer import Tokenizer
    from tests.tokenizer_fixtures import build_byte_level

    build_byte_level(path, vocab_size=500)
    tok = Tokenizer.from_folder(path)
    build_tiny_model(
        path,
        arch,
        seed=seed,
        vocab_size=tok.vocab_size,
        eos_token_id=tok.eos_token_id,
        **overrides,
    )
    return path
