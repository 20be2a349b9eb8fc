"""Invariants over random traces and configurations (hypothesis)."""

from __future__ import annotations

import json

from conftest import random_trace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simmoe.engine.config import ReplayConfig
from simmoe.engine.replay import Replay
from simmoe.hw.profile import load_profile
from simmoe.policies.base import PolicySet

HW = load_profile("rtx3090")
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

traces = st.builds(
    lambda rows, layers, experts, k, reqs, seed, pre: random_trace(rows, layers, experts, min(k, experts),
                                                                   requests=reqs, seed=seed, prefill=pre),
    rows=st.integers(8, 60), layers=st.integers(1, 4), experts=st.integers(2, 16), k=st.integers(1, 4),
    reqs=st.integers(1, 4), seed=st.integers(0, 10_000), pre=st.integers(0, 3),
)


def run(tr, policy, opts=None, **cfg):
    return Replay(tr, HW, PolicySet(policy, opts or {}), ReplayConfig(**cfg)).run()


@SETTINGS
@given(tr=traces, slots=st.integers(0, 16), batch=st.integers(1, 4),
       policy=st.sampled_from(["lru", "ondemand", "cpu-experts"]))
def test_memory_never_over_capacity_and_counts_add_up(tr, slots, batch, policy):
    opts = {"slots_per_layer": slots} if policy == "lru" else {}
    res = run(tr, policy, opts, batch=batch)
    s = res.summary
    assert s["peak_gpu_mem_bytes"] <= s["gpu_mem_usable_bytes"]
    assert (res.steps["cache_occupancy"] <= max(s["cache_slots"], 0)).all()
    assert s["hits"] + s["misses"] == s["accesses"]
    assert s["accesses"] <= s["activations"]
    assert res.steps["latency_us"].min() > 0
    # every row of the trace is served exactly once
    assert s["tokens"] == tr.num_rows and res.steps["tokens"].sum() == tr.num_rows


@SETTINGS
@given(tr=traces)
def test_every_activation_served_once_at_batch1_token_steps(tr):
    s = run(tr, "lru", {"slots_per_layer": 2}, prefill_chunk=1).summary
    assert s["accesses"] == s["activations"] == int((tr.experts >= 0).sum())


@SETTINGS
@given(tr=traces, a=st.integers(0, 15), b=st.integers(0, 15))
def test_lru_hit_rate_never_falls_as_slots_grow(tr, a, b):
    lo, hi = sorted((a, b))
    h_lo = run(tr, "lru", {"slots_per_layer": lo}).summary["hits"]
    h_hi = run(tr, "lru", {"slots_per_layer": hi}).summary["hits"]
    assert h_hi >= h_lo


@SETTINGS
@given(tr=traces, slots=st.integers(1, 8), batch=st.integers(1, 3))
def test_same_inputs_same_outputs_bit_for_bit(tr, slots, batch):
    a = run(tr, "lru", {"slots_per_layer": slots}, batch=batch)
    b = run(tr, "lru", {"slots_per_layer": slots}, batch=batch)
    sa, sb = dict(a.summary), dict(b.summary)
    sa.pop("wall_s")
    sb.pop("wall_s")
    assert json.dumps(sa) == json.dumps(sb)
    assert a.steps.equals(b.steps)


@SETTINGS
@given(tr=traces, slots=st.integers(1, 8))
def test_more_copy_bandwidth_never_slower(tr, slots):
    fast_pcie = HW.model_copy(update={"pcie": HW.pcie.model_copy(update={"h2d_pinned_gbps": 2 * HW.pcie.h2d_pinned_gbps})})
    a = run(tr, "lru", {"slots_per_layer": slots}).summary["makespan_s"]
    b = Replay(tr, fast_pcie, PolicySet("lru", {"slots_per_layer": slots}), ReplayConfig()).run().summary["makespan_s"]
    assert b <= a * (1 + 1e-12)
