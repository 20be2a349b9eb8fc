"""Adaptive Replacement Cache: two LRU lists (T1 seen once, T2 seen again) whose split adapts to ghost hits
in B1/B2 (recently evicted keys). Megiddo & Modha's algorithm mapped onto the engine's hooks: a missing
`find` adapts the target p and trims the ghost lists (ARC's case II-IV bookkeeping), `to_evict` is ARC's
REPLACE without moving anything, `evict` moves the victim to its ghost list, `insert` places the key in T1,
or in T2 after a ghost hit. Checked hit for hit against libCacheSim's ARC (tests/test_policies_oracle.py).
"""

from __future__ import annotations

from collections import OrderedDict

from simmoe.policies.base import CacheOptions, CachePolicy


class ARC(CachePolicy):
    name = "arc"
    summary = "adaptive replacement cache: recency and frequency lists balanced by ghost hits"
    reference = "Megiddo & Modha 2003, ARC: A Self-Tuning, Low Overhead Replacement Cache"
    Options = CacheOptions

    def __init__(self, ctx, options) -> None:
        super().__init__(ctx, options)
        self.t1: OrderedDict[int, None] = OrderedDict()  # least recent first
        self.t2: OrderedDict[int, None] = OrderedDict()
        self.b1: OrderedDict[int, None] = OrderedDict()
        self.b2: OrderedDict[int, None] = OrderedDict()
        self.p = 0.0
        self._pending: int | None = None  # the key of the last missing look-up
        self._discard = False  # ARC case IV-A with T1 full: the victim leaves without a ghost

    def _miss(self, key: int) -> None:
        c = self.capacity
        self._pending, self._discard = key, False
        if key in self.b1:
            self.p = min(float(c), self.p + max(len(self.b2) / len(self.b1), 1.0))
        elif key in self.b2:
            self.p = max(0.0, self.p - max(len(self.b1) / len(self.b2), 1.0))
        else:
            l1 = len(self.t1) + len(self.b1)
            total = l1 + len(self.t2) + len(self.b2)
            if l1 >= c:
                if len(self.t1) < c:
                    self.b1.popitem(last=False)
                else:
                    self._discard = True
            elif total >= 2 * c:
                self.b2.popitem(last=False)

    def find(self, key: int, t: int) -> bool:
        if key in self.t1:
            del self.t1[key]
            self.t2[key] = None
            return True
        if key in self.t2:
            self.t2.move_to_end(key)
            return True
        self._miss(key)
        return False

    def insert(self, key: int, t: int) -> None:
        if key != self._pending:  # inserted without a look-up (a prefetch): bookkeeping of a plain miss
            self._miss(key)
        self._pending = None
        if key in self.b1:
            del self.b1[key]
            self.t2[key] = None
        elif key in self.b2:
            del self.b2[key]
            self.t2[key] = None
        else:
            self.t1[key] = None

    def to_evict(self, t: int) -> int:
        n1 = len(self.t1)
        if n1 and (self._discard or n1 > self.p or (self._pending in self.b2 and n1 == self.p) or not self.t2):
            return next(iter(self.t1))
        return next(iter(self.t2))

    def evict(self, key: int) -> None:
        if key in self.t1:
            del self.t1[key]
            if not self._discard:
                self.b1[key] = None
        else:
            del self.t2[key]
            self.b2[key] = None
        self._discard = False

    def __contains__(self, key: int) -> bool:
        return key in self.t1 or key in self.t2

    def __len__(self) -> int:
        return len(self.t1) + len(self.t2)

    def keys(self) -> list[int]:
        return list(self.t1) + list(self.t2)
