"""KV cache block management with automatic prefix caching (pure Python, no torch)."""

from minerva.cache.block_pool import NULL_BLOCK_ID, BlockPool, KVCacheBlock
from minerva.cache.kv_cache_manager import KVCacheManager
from minerva.cache.prefix_hash import NONE_HASH, hash_block, hash_block_tokens

__all__ = [
    "NONE_HASH",
    "NULL_BLOCK_ID",
    "BlockPool",
    "KVCacheBlock",
    "KVCacheManager",
    "hash_block",
    "hash_block_tokens",
]
