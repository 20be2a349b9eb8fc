"""Belady's MIN: evict the cached key whose next use lies furthest in the future (offline optimal for
demand paging; an upper bound on the hit count of every policy that admits every miss).

Oracle: reads `ctx.next_use` (the next access index of the same key after access t). A max-heap of
(next use, key) with the stale entries cleared after each change gives O(log n) per access; the victim is
always the valid heap top, so `to_evict` only reads. Ties (several keys never used again) go to the
smallest key, which cannot change the hit count.

Keys inserted with t = -1 (prefetches, preloads) have no access of their own. When the engine supplies
`ctx.access_keys` (the key of every access, in order) their next use is looked up exactly; otherwise it
is taken as imminent (kept until its next look-up tells the truth), the benefit of the doubt a prefetcher
would want.
"""

from __future__ import annotations

import heapq

import numpy as np

from simmoe.policies.base import CacheOptions, CachePolicy

NEVER = np.iinfo(np.int64).max


class Belady(CachePolicy):
    name = "belady"
    summary = "offline optimal (Belady MIN): evict the expert whose next use is furthest away (oracle)"
    reference = "Belady 1966, A study of replacement algorithms for a virtual-storage computer"
    reads_future = True
    Options = CacheOptions

    def __init__(self, ctx, options) -> None:
        super().__init__(ctx, options)
        if ctx.next_use is None:
            raise RuntimeError("belady needs ctx.next_use (the engine fills it for reads_future policies)")
        self._next = ctx.next_use
        self._nu: dict[int, int] = {}  # key -> its next use
        self._heap: list[tuple[int, int]] = []  # (-next use, key), possibly stale
        self._now = -1  # last access index this partition has seen
        self._pos: dict[int, np.ndarray] | None = None

    def _set(self, key: int, nu: int) -> None:
        self._nu[key] = nu
        heapq.heappush(self._heap, (-nu, key))
        self._clean()

    def _clean(self) -> None:
        h, nu = self._heap, self._nu
        while h and nu.get(h[0][1]) != -h[0][0]:
            heapq.heappop(h)
        if len(h) > 4 * len(nu) + 64:  # drop stale entries now and then so the heap stays small
            self._heap = [(-v, k) for k, v in nu.items()]
            heapq.heapify(self._heap)

    def _next_after(self, key: int) -> int:
        """Next access of `key` after the last one this partition saw (t = -1 inserts)."""
        keys = getattr(self.ctx, "access_keys", None)
        if keys is None:
            return self._now + 1  # unknown: imminent
        if self._pos is None:
            order = np.argsort(keys, kind="stable")
            uniq, starts = np.unique(keys[order], return_index=True)
            bounds = np.append(starts, len(order))
            self._pos = {int(k): order[bounds[i]:bounds[i + 1]] for i, k in enumerate(uniq)}
        p = self._pos.get(key)
        if p is None:
            return NEVER
        i = int(np.searchsorted(p, self._now, side="right"))
        return int(p[i]) if i < len(p) else NEVER

    def find(self, key: int, t: int) -> bool:
        self._now = t
        if key in self._nu:
            self._set(key, int(self._next[t]))
            return True
        return False

    def insert(self, key: int, t: int) -> None:
        self._set(key, int(self._next[t]) if t >= 0 else self._next_after(key))

    def to_evict(self, t: int) -> int:
        return self._heap[0][1]

    def evict(self, key: int) -> None:
        del self._nu[key]
        self._clean()

    def __contains__(self, key: int) -> bool:
        return key in self._nu

    def __len__(self) -> int:
        return len(self._nu)

    def keys(self) -> list[int]:
        return list(self._nu)
