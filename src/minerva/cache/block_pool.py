"""The pool of KV blocks: ref counts, the free queue (eviction order) and the hash -> block map.

No torch: a block is an id into the runner's KV tensors ``[2, num_blocks, block_size, ...]``.
Block 0 is a null block for padding block tables and is never handed out.

A free block whose ``block_hash`` is set still holds valid KV for that prefix: it stays in the
hash map, so a later request can take it back ("touch"), until the free queue pops it for a new
allocation, which evicts the hash. The free queue front is evicted first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

NULL_BLOCK_ID = 0


@dataclass(slots=True)
class KVCacheBlock:
    """Metadata of one physical KV block."""

    block_id: int
    ref_cnt: int = 0
    block_hash: int | None = None
    """Chained hash of the full block's contents while it is in the prefix cache, else None."""


class BlockPool:
    """Ref-counted blocks, an O(1) LRU free queue and the prefix-cache hash map."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.blocks = [KVCacheBlock(i) for i in range(num_blocks)]
        # block_id -> block, in eviction order (front first); O(1) removal from the middle.
        self.free_queue: OrderedDict[int, KVCacheBlock] = OrderedDict(
            (b.block_id, b) for b in self.blocks[NULL_BLOCK_ID + 1 :]
        )
        self.cached_blocks: dict[int, KVCacheBlock] = {}
        """block_hash -> the one block registered for it (duplicates are not registered)."""

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    def get_cached_block(self, block_hash: int) -> KVCacheBlock | None:
        return self.cached_blocks.get(block_hash)

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        """Pop ``num_blocks`` from the free queue front, evicting their cached hashes."""
        if num_blocks > len(self.free_queue):
            raise RuntimeError(f"asked for {num_blocks} blocks, only {len(self.free_queue)} free")
        blocks = []
        for _ in range(num_blocks):
            _, block = self.free_queue.popitem(last=False)
            if block.block_hash is not None:
                self._uncache(block)
            block.ref_cnt = 1
            blocks.append(block)
        return blocks

    def touch(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Take a reference on cached blocks; a free one leaves the free queue (0 -> 1)."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self.free_queue[block.block_id]
            block.ref_cnt += 1

    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        """Drop one reference each; blocks reaching 0 join the free queue in the given order.

        Cached blocks go to the tail (most recently used, evicted last); blocks without a hash
        hold nothing reusable, so they go to the front and are recycled before any cached block.
        """
        for block in ordered_blocks:
            block.ref_cnt -= 1
            if block.ref_cnt < 0:
                raise RuntimeError(f"block {block.block_id} freed more often than allocated")
            if block.ref_cnt == 0:
                self.free_queue[block.block_id] = block
                if block.block_hash is None:
                    self.free_queue.move_to_end(block.block_id, last=False)

    def cache_block(self, block: KVCacheBlock, block_hash: int) -> bool:
        """Register a full block under its hash; False if another block already holds it."""
        if block.block_hash is not None:
            return block.block_hash == block_hash
        if block_hash in self.cached_blocks:
            return False  # Same content computed twice: keep the first, no sharing for this one.
        block.block_hash = block_hash
        self.cached_blocks[block_hash] = block
        return True

    def uncache_block(self, block: KVCacheBlock) -> None:
        """Drop a block's hash (its KV will not be reused); a free block moves to the front."""
        if block.block_hash is None:
            return
        self._uncache(block)
        if block.ref_cnt == 0:
            self.free_queue.move_to_end(block.block_id, last=False)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash; refused (False) while any block is in use."""
        if self.num_free_blocks != self.num_usable_blocks:
            return False
        for block in self.cached_blocks.values():
            block.block_hash = None
        self.cached_blocks.clear()
        return True

    def _uncache(self, block: KVCacheBlock) -> None:
        if self.cached_blocks.get(block.block_hash) is block:
            del self.cached_blocks[block.block_hash]
        block.block_hash = None
