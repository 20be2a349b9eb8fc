"""Least-recently-used eviction (per-layer or global scope): the baseline of Mixtral-offloading."""

from __future__ import annotations

from collections import OrderedDict

from simmoe.policies.base import CacheOptions, CachePolicy


class LRU(CachePolicy):
    name = "lru"
    summary = "least-recently-used expert cache (scope=layer with slots_per_layer, or scope=global with cache_gb)"
    reference = "Eliseev & Mazur 2023, Fast Inference of MoE Language Models with Offloading"
    Options = CacheOptions

    def __init__(self, ctx, options) -> None:
        super().__init__(ctx, options)
        self._od: OrderedDict[int, None] = OrderedDict()

    def find(self, key: int, t: int) -> bool:
        od = self._od
        if key in od:
            od.move_to_end(key)
            return True
        return False

    def insert(self, key: int, t: int) -> None:
        self._od[key] = None

    def to_evict(self, t: int) -> int:
        return next(iter(self._od))

    def evict(self, key: int) -> None:
        del self._od[key]

    def __contains__(self, key: int) -> bool:
        return key in self._od

    def __len__(self) -> int:
        return len(self._od)

    def keys(self) -> list[int]:
        return list(self._od)
