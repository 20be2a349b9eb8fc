"""Hit counts of lru, lfu, belady and arc equal those of the independent libCacheSim (one global partition,
unit-size objects), on random key sequences and on the engine's own access sequence of a trace."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_trace

from simmoe.engine.replay import replay
from simmoe.engine.scenario import NEVER, next_use_of
from simmoe.policies.base import CacheContext, CacheOptions

lcs = pytest.importorskip("libcachesim")

INT64_MAX = np.iinfo(np.int64).max


def lcs_hits(name: str, keys: np.ndarray, cap: int) -> list[bool]:
    cache = getattr(lcs, name)(cap)
    nxt = next_use_of(keys)
    out = []
    for t, k in enumerate(keys):
        # libCacheSim's Belady wants INT64_MAX (not -1) for "never again"
        nv = INT64_MAX if nxt[t] == NEVER else int(nxt[t])
        req = lcs.Request(obj_size=1, obj_id=int(k) + 1, clock_time=t, next_access_vtime=nv)
        req.op = lcs.ReqOp.OP_GET
        out.append(bool(cache.get(req)))
    return out


def our_hits(name: str, keys: np.ndarray, cap: int) -> list[bool]:
    from simmoe.policies.registry import get_policy

    cls = get_policy(name, "cache")
    pol = cls(CacheContext(cap, int(keys.max()) + 1, (0,), next_use_of(keys)), CacheOptions(scope="global"))
    out = []
    for t, k in enumerate(keys.tolist()):
        hit = pol.find(k, t)
        out.append(hit)
        if not hit:
            if len(pol) >= cap:
                pol.evict(pol.to_evict(t))
            pol.insert(k, t)
    return out


PAIRS = [("lru", "LRU"), ("lfu", "LFU"), ("belady", "Belady"), ("arc", "ARC")]


@pytest.mark.parametrize("ours,theirs", PAIRS)
@pytest.mark.parametrize("seed", range(12))
def test_random_sequences_hit_for_hit(ours, theirs, seed):
    rng = np.random.default_rng(seed)
    n_keys = int(rng.integers(3, 40))
    cap = int(rng.integers(1, n_keys))
    # skewed popularity, so frequency and recency policies disagree
    keys = rng.zipf(1.3, 600).astype(np.int64) % n_keys if seed % 2 else rng.integers(0, n_keys, 600)
    assert our_hits(ours, keys, cap) == lcs_hits(theirs, keys, cap)


@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_engine_global_scope_matches(ours, theirs):
    """Through the engine: scope=global is one partition, so the count equals libCacheSim's on the engine's
    access sequence (requests in order, rows in order, slots in order, prefill_chunk=1)."""
    tr = random_trace(120, 4, 16, 2, requests=3, seed=2)
    order = np.argsort(tr.request, kind="stable")
    keys = np.array([m * 16 + int(e) for r in order for m, lay in enumerate(tr.experts[r]) for e in lay if e >= 0])
    slots = 20
    gb = slots * tr.spec.expert_bytes() / 2**30
    res = replay(tr, "a100-80gb-sxm", ours, {"scope": "global", "cache_gb": gb}, prefill_chunk=1)
    assert res.summary["cache_slots"] == slots
    want = sum(lcs_hits(theirs, keys, slots))
    assert res.summary["hits"] == want
    assert res.summary["hits"] + res.summary["misses"] == len(keys)
