"""The notebook-sized example from the README: a user-defined cache policy in under 30 lines, registered and
replayed by name next to the built-ins."""

from __future__ import annotations

import inspect

from conftest import random_trace

from simmoe.engine.replay import replay
from simmoe.policies.base import CacheOptions, CachePolicy
from simmoe.policies.registry import REGISTRY


class FIFO(CachePolicy):  # first in, first out: evict the oldest insertion, hits change nothing
    name = "fifo-example"
    summary = "first in, first out (a user-defined example)"
    Options = CacheOptions

    def __init__(self, ctx, options):
        super().__init__(ctx, options)
        self.order: list[int] = []

    def find(self, key, t):
        return key in self.order

    def insert(self, key, t):
        self.order.append(key)

    def to_evict(self, t):
        return self.order[0]

    def evict(self, key):
        self.order.remove(key)

    def __contains__(self, key):
        return key in self.order

    def __len__(self):
        return len(self.order)

    def keys(self):
        return list(self.order)


def test_user_policy_is_short_registers_and_replays():
    assert len(inspect.getsource(FIFO).splitlines()) < 30
    REGISTRY.register(FIFO)
    try:
        tr = random_trace(200, 3, 8, 2, seed=9)
        fifo = replay(tr, "a100-80gb-sxm", "fifo-example", {"slots_per_layer": 3}, prefill_chunk=1).summary
        belady = replay(tr, "a100-80gb-sxm", "belady", {"slots_per_layer": 3}, prefill_chunk=1).summary
        # plain FIFO per layer, as a reference
        hits = 0
        for m in range(3):
            q: list[int] = []
            for e in tr.experts[:, m].ravel().tolist():
                if e in q:
                    hits += 1
                    continue
                if len(q) == 3:
                    q.pop(0)
                q.append(e)
        assert fifo["hits"] == hits <= belady["hits"]
    finally:
        REGISTRY.unregister("fifo-example")
