"""Least-frequently-used eviction, ties broken by recency (LRU among the least frequent).

Frequency is counted over a key's current stay in the cache (reset to 1 when it is inserted again), as in
libCacheSim's `LFU`: tests/test_policies_oracle.py checks hit counts against it exactly. Frequency buckets
(each an insertion-ordered LRU list) give O(1) look-up, insert and victim choice.
"""

from __future__ import annotations

from collections import OrderedDict

from simmoe.policies.base import CacheOptions, CachePolicy


class LFU(CachePolicy):
    name = "lfu"
    summary = "least-frequently-used expert cache (in-cache frequency, LRU among the least frequent)"
    reference = "classic LFU; semantics of libCacheSim LFU (Yang et al., libCacheSim)"
    Options = CacheOptions

    def __init__(self, ctx, options) -> None:
        super().__init__(ctx, options)
        self._freq: dict[int, int] = {}
        self._buckets: dict[int, OrderedDict[int, None]] = {}  # freq -> keys, least recent first
        self._min = 0

    def _drop(self, key: int, f: int) -> None:
        b = self._buckets[f]
        del b[key]
        if not b:
            del self._buckets[f]

    def _add(self, key: int, f: int) -> None:
        self._freq[key] = f
        self._buckets.setdefault(f, OrderedDict())[key] = None

    def find(self, key: int, t: int) -> bool:
        f = self._freq.get(key)
        if f is None:
            return False
        self._drop(key, f)
        self._add(key, f + 1)
        if f == self._min and f not in self._buckets:
            self._min = f + 1
        return True

    def insert(self, key: int, t: int) -> None:
        self._add(key, 1)
        self._min = 1

    def to_evict(self, t: int) -> int:
        return next(iter(self._buckets[self._min]))

    def evict(self, key: int) -> None:
        f = self._freq.pop(key)
        self._drop(key, f)
        if f == self._min and f not in self._buckets:
            self._min = min(self._buckets, default=0)

    def __contains__(self, key: int) -> bool:
        return key in self._freq

    def __len__(self) -> int:
        return len(self._freq)

    def keys(self) -> list[int]:
        return list(self._freq)
