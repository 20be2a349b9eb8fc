"""Every expert resident on the GPU from the start: the no-offloading baseline (an error if it does not fit)."""

from __future__ import annotations

from simmoe.policies.base import CachePolicy, Options


class Resident(CachePolicy):
    name = "resident"
    summary = "all experts resident on the GPU (no offloading); an error if the model does not fit"
    Options = Options
    fixed_capacity = "all"

    def __init__(self, ctx, options) -> None:
        super().__init__(ctx, options)
        self._keys = set(self.preload())

    def preload(self) -> list[int]:
        e = self.ctx.num_experts
        if self.ctx.capacity == 0:  # a layer whose experts a placement keeps on the CPU
            return []
        return [layer * e + x for layer in self.ctx.layers for x in range(e)]

    def find(self, key: int, t: int) -> bool:
        return key in self._keys

    def insert(self, key: int, t: int) -> None:
        self._keys.add(key)

    def to_evict(self, t: int) -> int:
        raise RuntimeError("resident cache never evicts")

    def evict(self, key: int) -> None:
        raise RuntimeError("resident cache never evicts")

    def __contains__(self, key: int) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> list[int]:
        return sorted(self._keys)
