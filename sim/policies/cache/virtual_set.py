"""The GPU side of SwapMoE's virtual experts: a per-layer cache that holds exactly the virtual set of the
`virtual-experts` routing policy. Its victim is a resident expert outside the set(s) the current step's rows
were routed with (the one used least recently among those); only when every resident is still in a set (at
batch > 1 the rows' sets may differ) does it fall back to plain LRU. With any other routing policy (or none)
it is LRU. See sim/policies/routing/swapmoe.py.
"""

from __future__ import annotations

import numpy as np

from simmoe.policies.base import CacheOptions
from simmoe.policies.cache.lru import LRU


class VirtualSetCache(LRU):
    name = "virtual-set"
    summary = "holds the current set of the virtual-experts routing (SwapMoE): evicts experts that left it"
    reference = ("Kong et al. ACL 2024, SwapMoE: Serving Off-the-shelf MoE-based Large Language Models with "
                 "Tunable Memory Budget")
    Options = CacheOptions

    def __init__(self, ctx, options) -> None:
        super().__init__(ctx, options)
        self._router = None
        self._rows: np.ndarray | None = None

    def bind_routing(self, router) -> None:
        # only a router that records its per-row sets can be followed
        self._router = router if getattr(router, "version", None) is not None else None

    def on_step(self, rows: np.ndarray) -> None:
        self._rows = rows

    def to_evict(self, t: int) -> int:
        if self._router is not None and self._rows is not None:
            E = self.ctx.num_experts
            keep: dict[int, set[int]] = {}
            for key in self._od:
                m = key // E
                inset = keep.get(m)
                if inset is None:
                    inset = keep[m] = self._router.members(m, self._rows)
                if key - m * E not in inset:
                    return key
        return super().to_evict(t)
