"""First-in-first-out eviction: the key inserted longest ago goes first; hits do not reorder.

The cache behind SE-MoE's ring of memory sections (`se-moe`): whole layers are copied in, in layer order,
and the layer copied in longest ago is the one that has just been computed, so FIFO evicts exactly the
section the ring frees next. Plain LRU would not: the routed experts of the layer just computed are the most
recently used keys, so LRU would evict the next layer's experts in their place.
"""

from __future__ import annotations

from simmoe.policies.base import CacheOptions
from simmoe.policies.cache.lru import LRU


class FIFO(LRU):
    """LRU's ordered keys without the move to the end on a hit: the oldest insertion is the victim."""

    name = "fifo"
    summary = "first-in-first-out expert cache (evict the key inserted longest ago; hits do not reorder)"
    reference = "classic FIFO (libCacheSim FIFO); the eviction order of SE-MoE's ring (Shen et al. 2022)"
    Options = CacheOptions

    def find(self, key: int, t: int) -> bool:
        return key in self._od
