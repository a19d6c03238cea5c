"""Chained block hashes for automatic prefix caching. No torch.

A full block's hash covers its own tokens AND, through ``parent_hash``, every token before it:
two requests get the same hash for block ``i`` only if their first ``(i + 1) * block_size``
tokens agree. That is what lets a request reuse another's KV blocks by hash alone.

The hash is 64 bits of BLAKE2b over a fixed little-endian encoding, so it is the same in every
process and on every platform (Python's ``hash()`` is not guaranteed to be), and an adversarial
prompt cannot cheaply collide with another user's prefix. It is cheap next to a step
(per-block cost: benchmarks/results/host_costs_cpu.json).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

_ROOT_SEED = b"minerva-prefix-cache-root-v1"

NONE_HASH: int = int.from_bytes(hashlib.blake2b(_ROOT_SEED, digest_size=8).digest(), "little")
"""Parent hash of a sequence's first block (the root of every chain)."""


def hash_block(parent_hash: int | None, token_ids: Sequence[int], extra: tuple = ()) -> int:
    """64-bit hash of one full block, chained on ``parent_hash`` (None = first block).

    ``extra`` salts the block with keys that change its KV content without changing its
    tokens (a LoRA adapter id, a multimodal input hash); it must have a stable ``repr``.
    """
    parent = NONE_HASH if parent_hash is None else parent_hash
    n = len(token_ids)
    # Encoding the token count keeps tokens and extra keys from bleeding into each other.
    payload = struct.pack(f"<QQ{n}q", parent, n, *token_ids)
    if extra:
        payload += repr(extra).encode()
    return int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "little")


def hash_block_tokens(
    token_ids: Sequence[int],
    block_size: int,
    parent_hash: int | None = None,
    extra: tuple = (),
) -> list[int]:
    """Chained hashes of every full block of ``token_ids`` (a trailing partial block is skipped)."""
    hashes: list[int] = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent_hash = hash_block(parent_hash, token_ids[start : start + block_size], extra)
        hashes.append(parent_hash)
    return hashes
