"""Exact hit/miss counts of each cache policy on the bundled DeepSeek-V2-Lite synthetic trace, through the
engine (first 4 of its 16 requests, 16 slots per layer, prefill one row per step). The numbers were measured
by running the engine; they pin behaviour, so a change in any of them needs an explanation.

static-popular profiles requests 8..15 of the same trace (a disjoint part of the same workload) and
replays requests 0..3.

mrs gets the trace's gate weights through `on_routing` (mean gate per expert over the step's tokens).
"""

from __future__ import annotations

import pytest
from conftest import REPO

from simmoe.engine.replay import replay
from simmoe.trace.format import read_trace, write_trace

TRACE = REPO / "traces/deepseek-v2-lite-synth.npz"

# (policy, extra options) -> (hits, misses, bytes_h2d); 119808 accesses in all
GOLDEN = {
    ("lru", ()): (53305, 66503, 1150601920512),
    ("lfu", ()): (52137, 67671, 1170810077184),
    ("belady", ()): (83318, 36490, 631331880960),
    ("arc", ()): (54717, 65091, 1126172196864),
    ("mrs", ()): (56347, 63461, 1097970745344),
    ("static-popular", ()): (64553, 55255, 955994603520),
    ("static-popular", (("lru_slots", 4),)): (65516, 54292, 939333255168),
}


@pytest.fixture(scope="module")
def trace():
    return read_trace(TRACE)


@pytest.fixture(scope="module")
def profile(trace, tmp_path_factory):
    p = tmp_path_factory.mktemp("profile") / "requests-8-15.npz"
    write_trace(trace.select(requests=trace.request_ids[8:]), p)
    return str(p)


@pytest.mark.parametrize("policy,extra", list(GOLDEN), ids=[f"{p}{dict(e) or ''}" for p, e in GOLDEN])
def test_golden_bundled(trace, profile, policy, extra):
    opts = {"slots_per_layer": 16, **dict(extra)}
    if policy == "static-popular":
        opts["profile"] = profile
    s = replay(trace, "rtx3090", policy, opts, prefill_chunk=1, max_requests=4).summary
    assert (s["hits"], s["misses"], s["bytes_h2d"]) == GOLDEN[(policy, extra)]
    assert s["hits"] + s["misses"] == s["accesses"] == 119808


def test_golden_ordering():
    """What the numbers must say regardless of their exact values: the oracle beats every online policy."""
    best_online = max(h for (p, _), (h, _, _) in GOLDEN.items() if p != "belady")
    assert GOLDEN[("belady", ())][0] > best_online
