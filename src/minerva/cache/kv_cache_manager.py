"""KVCacheManager: block tables for requests, with automatic prefix caching. No torch.

The scheduler drives it in three calls:

    hit_ids, num_hit_tokens = kv.get_computed_blocks(req)          # new or preempted request
    if kv.allocate_slots(req, num_new_tokens, hit_ids, num_hit_tokens):
        ...  # req.block_ids now covers every token computed after this step
    kv.free(req)                                                   # finished, aborted, preempted

Every call costs O(blocks touched): block hashes are extended, never recomputed, and each
request remembers how many of its blocks are already registered in the prefix cache.
"""

from __future__ import annotations

from collections.abc import Sequence

from minerva.cache.block_pool import BlockPool, KVCacheBlock
from minerva.cache.prefix_hash import hash_block
from minerva.errors import ConfigError
from minerva.request import Request


class KVCacheManager:
    """Hands out KV blocks to requests and shares full blocks with equal prefixes."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 2:
            raise ConfigError(
                f"num_blocks must be at least 2 (block 0 is reserved), got {num_blocks}: "
                "give the KV cache more memory or use a smaller block_size"
            )
        if block_size < 1:
            raise ConfigError(f"block_size must be a positive integer, got {block_size}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.block_pool = BlockPool(num_blocks)
        self.prefix_cache_queries = 0
        """Prompt tokens looked up in the prefix cache (vLLM's counter, in tokens)."""
        self.prefix_cache_hits = 0
        """Tokens served from the prefix cache."""
        # request_id -> [leading blocks already in the cache before this request (hits),
        #                leading blocks registered in the cache so far]
        self._req_cached: dict[str, list[int]] = {}

    # ---- sizes and stats -------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        """Total blocks, including the reserved null block 0."""
        return self.block_pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take now (free, cached-but-unused included)."""
        return self.block_pool.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of usable blocks held by requests, 0..1."""
        usable = self.block_pool.num_usable_blocks
        return (usable - self.block_pool.num_free_blocks) / usable

    @property
    def num_cached_blocks(self) -> int:
        """Blocks registered in the prefix cache (in use or free)."""
        return len(self.block_pool.cached_blocks)

    def num_blocks_needed(self, num_tokens: int) -> int:
        """Blocks that hold ``num_tokens`` tokens."""
        return -(-num_tokens // self.block_size)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix; returns False (and does nothing) while blocks are in use."""
        return self.block_pool.reset_prefix_cache()

    # ---- the scheduler's API ---------------------------------------------------------------

    def get_computed_blocks(self, request: Request) -> tuple[list[int], int]:
        """Longest run of cached leading blocks of a request without blocks, and its tokens.

        Hashes the request's full blocks (incrementally), then looks them up in order. The hit
        never covers every known token: the last one must run to produce logits.
        """
        if not self.enable_prefix_caching:
            return [], 0
        if request.block_ids:
            raise RuntimeError(
                f"get_computed_blocks({request.request_id!r}): the request already holds blocks"
            )
        num_tokens = request.num_tokens
        self._update_block_hashes(request, num_tokens)
        max_hit_blocks = max(0, (num_tokens - 1) // self.block_size)
        hit_ids: list[int] = []
        for block_hash in request.block_hashes[:max_hit_blocks]:
            block = self.block_pool.get_cached_block(block_hash)
            if block is None:
                break
            hit_ids.append(block.block_id)
        num_hit_tokens = len(hit_ids) * self.block_size
        self.prefix_cache_queries += num_tokens
        self.prefix_cache_hits += num_hit_tokens
        return hit_ids, num_hit_tokens

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: Sequence[int] = (),
        num_new_computed_tokens: int = 0,
    ) -> bool:
        """Grow ``request.block_ids`` to hold the tokens computed after this step.

        ``new_computed_blocks`` (prefix-cache hits from ``get_computed_blocks``) are prepended
        to an empty block table and referenced. Returns False, changing nothing, when the free
        pool cannot cover the new blocks plus the free cached blocks the hits take out of it.
        """
        if not new_computed_blocks:  # the common decode step: room left, nothing to register
            num_total = request.num_computed_tokens + num_new_tokens
            if num_total <= len(request.block_ids) * self.block_size:
                if not self.enable_prefix_caching:
                    return True
                state = self._req_cached.get(request.request_id)
                full = min(num_total, request.num_tokens) // self.block_size
                if state is not None and full <= state[1]:
                    return True
        if new_computed_blocks and request.block_ids:
            raise RuntimeError(
                f"allocate_slots({request.request_id!r}): computed blocks go to an empty table"
            )
        pool = self.block_pool
        hits = [pool.blocks[i] for i in new_computed_blocks] if new_computed_blocks else []
        num_total = request.num_computed_tokens + num_new_computed_tokens + num_new_tokens
        num_needed = -(-num_total // self.block_size)  # ceil
        num_new_blocks = max(0, num_needed - len(request.block_ids) - len(hits))
        # A hit on a free cached block removes it from the free pool just like an allocation.
        num_free_hits = sum(1 for block in hits if block.ref_cnt == 0) if hits else 0
        if num_new_blocks + num_free_hits > pool.num_free_blocks:
            return False

        state = self._req_cached.setdefault(request.request_id, [0, 0])
        if hits:
            pool.touch(hits)
            request.block_ids.extend([block.block_id for block in hits])
            state[0] = state[1] = len(hits)
        if num_new_blocks:
            request.block_ids.extend([b.block_id for b in pool.get_new_blocks(num_new_blocks)])
        if self.enable_prefix_caching:
            num_known = min(num_total, request.num_tokens)
            if num_known // self.block_size > state[1]:  # a block becomes full this step
                self._cache_full_blocks(request, num_known, state)
        return True

    def free(self, request: Request) -> None:
        """Release the request's blocks (last block first into the free queue); idempotent.

        ``request.block_hashes`` is kept: it stays valid for a preempted request's recompute.
        Call this BEFORE resetting ``num_computed_tokens`` of a preempted request.
        """
        block_ids = request.block_ids
        num_hit_blocks, num_registered = self._req_cached.pop(request.request_id, (0, 0))
        if not block_ids:
            return
        pool = self.block_pool
        blocks = [pool.blocks[i] for i in block_ids]
        # Blocks are registered when allocated, before their step runs. If the request leaves
        # before that (aborted, runner error), those blocks were never written: un-cache them.
        num_written = max(num_hit_blocks, request.num_computed_tokens // self.block_size)
        for block in blocks[num_written:num_registered]:
            if block.ref_cnt == 1:
                pool.uncache_block(block)
        pool.free_blocks(reversed(blocks))
        block_ids.clear()

    # ---- helpers ---------------------------------------------------------------------------

    def _update_block_hashes(self, request: Request, num_tokens: int) -> None:
        """Extend ``request.block_hashes`` to every full block of the first ``num_tokens``."""
        hashes = request.block_hashes
        bs = self.block_size
        parent = hashes[-1] if hashes else None
        for i in range(len(hashes), num_tokens // bs):
            parent = hash_block(parent, request.token_slice(i * bs, (i + 1) * bs))
            hashes.append(parent)

    def _cache_full_blocks(self, request: Request, num_known_tokens: int, state: list[int]) -> None:
        """Register the blocks that are full once this step's known tokens are computed.

        Registering before the step runs is safe: each layer writes the K/V of every scheduled
        token before attention reads the cache, so a later step (or a later request in this
        same step) that reuses the block reads values written by then.
        """
        num_full = min(num_known_tokens // self.block_size, len(request.block_ids))
        self._update_block_hashes(request, num_full * self.block_size)
        blocks = self.block_pool.blocks
        for i in range(state[1], num_full):
            block: KVCacheBlock = blocks[request.block_ids[i]]
            self.block_pool.cache_block(block, request.block_hashes[i])
        state[1] = num_full


__all__ = ["KVCacheManager"]
