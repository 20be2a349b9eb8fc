"""The access planner: the one look-up / admit / evict sequence of the engine and the executor.

- each access order gives the hit counts of a plain re-implementation of that framework's loop;
- invariants for every registered policy of every kind, through the planner (tests/test_policies_kinds.py);
- the fast step timing equals the reference one bit for bit; a Replay runs twice with identical results.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
from conftest import plan_run, random_trace

from simmoe.engine import replay as replay_mod
from simmoe.engine.config import ReplayConfig
from simmoe.engine.planner import LOAD, RUN, AccessPlanner
from simmoe.engine.replay import Replay
from simmoe.engine.scenario import prepare
from simmoe.engine.step_timing import StepTiming
from simmoe.errors import InputError
from simmoe.hw.profile import load_profile
from simmoe.policies.base import PolicySet

HW = "a100-80gb-sxm"


# ---- access orders against plain re-implementations of the frameworks' loops -------------------------------
def reference_lru(trace, slots: int, batch: int, order: str, lookup: str) -> tuple[int, int]:
    """Per-layer LRU caches over the run's steps (the closed-loop schedule), written as the frameworks do:
    - order "appearance", lookup "at-use": simmoe's default (first appearance over the step's rows and slots);
    - order "index", lookup "at-use": HF transformers' `for expert_idx in expert_hit` (ascending ids), an
      offload hook loading each expert when its forward is called;
    - lookup "layer": Mixtral-offloading's loader, which looks the layer's experts up and yields the ones
      already on the GPU first, then loads the others in turn."""
    sc = prepare(trace, load_profile(HW), PolicySet("lru", {"slots_per_layer": slots}), ReplayConfig(batch=batch))
    caches = [OrderedDict() for _ in range(trace.num_layers)]
    hits = misses = 0
    for step in sc.steps:
        for m, cache in enumerate(caches):
            routed = [int(e) for e in trace.experts[step.rows, m].ravel() if e >= 0]
            experts = list(dict.fromkeys(routed))
            if order == "index":
                experts.sort()
            if lookup == "layer":
                found = [e for e in experts if e in cache]
                for e in found:
                    cache.move_to_end(e)
                experts = [e for e in experts if e not in found]
                hits += len(found)
            for e in experts:
                if e in cache:
                    cache.move_to_end(e)
                    hits += 1
                    continue
                misses += 1
                if len(cache) >= slots:
                    cache.popitem(last=False)
                cache[e] = None
    return hits, misses


@pytest.fixture(scope="module")
def batched():
    return random_trace(240, 4, 16, 4, requests=8, seed=11, prefill=6)


@pytest.mark.parametrize("order,lookup", [("appearance", "at-use"), ("index", "at-use"), ("appearance", "layer"),
                                          ("index", "layer")])
@pytest.mark.parametrize("batch", [1, 4])
def test_each_access_order_equals_its_reference_loop(batched, order, lookup, batch):
    planner, _ = plan_run(batched, PolicySet("lru", {"slots_per_layer": 6}), order=order, lookup=lookup, batch=batch)
    assert (planner.c.hits, planner.c.misses) == reference_lru(batched, 6, batch, order, lookup)


def test_the_orders_differ_where_the_issue_says(batched):
    # batch > 1 and prefill: the order decides the hit count; at batch 1 decode it cannot (one row)
    counts = {(o, lk): plan_run(batched, PolicySet("lru", {"slots_per_layer": 6}), order=o, lookup=lk,
                                batch=4)[0].c.hits
              for o in ("appearance", "index") for lk in ("at-use", "layer")}
    assert len(set(counts.values())) == 4, counts
    assert counts[("appearance", "layer")] > counts[("appearance", "at-use")]


def test_index_order_with_load_at_use_thrashes_a_half_layer_cache():
    # every step routes all 8 experts of each layer (batch 8, top-2): a cache of half a layer's experts gets no
    # hit in expert-index order with load at use (each load evicts an expert the next step needs first), while a
    # loader that runs the cached experts first keeps half of them
    rng = np.random.default_rng(0)
    ex = np.zeros((8, 20, 2, 2), np.int16)  # request, row, layer, slot
    for r in range(8):
        for row in range(20):
            for m in range(2):
                ex[r, row, m] = rng.permutation([2 * (r % 4), 2 * (r % 4) + 1])
    toy = random_trace(160, 2, 8, 2)  # for its model spec
    tr = toy.__class__(ex.reshape(160, 2, 2), np.repeat(np.arange(8, dtype=np.int32), 20), np.ones(160, np.int8),
                       toy.meta)
    kw = {"batch": 8}
    idx, _ = plan_run(tr, PolicySet("lru", {"slots_per_layer": 4}), order="index", **kw)
    first, _ = plan_run(tr, PolicySet("lru", {"slots_per_layer": 4}), lookup="layer", **kw)
    assert idx.c.hits == 0 and idx.c.misses == 20 * 2 * 8
    assert first.c.hits == 19 * 2 * 4  # from the second step on, the 4 cached experts of each layer


def test_layer_wise_placement_needs_a_whole_layer_lookup_and_nested_precision_its_own_order(batched):
    sc = prepare(batched, load_profile(HW), PolicySet("hybrimoe", {"slots_per_layer": 4}), ReplayConfig(batch=2))
    assert AccessPlanner(sc).lookup == "layer"
    sc = prepare(batched, load_profile(HW), PolicySet("d2moe", {"slots_per_layer": 4}))
    with pytest.raises(InputError, match="orders a layer's experts itself"):
        AccessPlanner(sc, order="index")


# ---- what a plan promises ----------------------------------------------------------------------------------
def check_plan(trace, records, planner) -> None:
    """Every activation is served once per (step, layer); a kernel reads the buffer holding its expert;
    counts add up."""
    E = planner.E
    holds: dict[int, int] = {k_b[1]: k_b[0] for k_b in planner.preloaded}
    sc = planner.sc
    runs = loads = fetched_runs = fetches = prefetches = 0
    for i, m, ops, cpu, pre in records:
        step = sc.steps[i]
        routed = {int(e) for e in sc.trace.experts[step.rows, m].ravel() if e >= 0}
        served = [op[3] for op in ops if op[0] in (RUN, LOAD)] + [e for e, _ in cpu]
        assert sorted(served) == sorted(routed), (i, m)
        fetched = set()
        for op in ops:
            kind, buf, layer, e = op[:4]
            if kind == LOAD or (kind != RUN and op[5]):  # a copy that overwrites the buffer
                holds[buf] = layer * E + e
            if kind not in (LOAD, RUN):
                fetched.add(buf)
                fetches += bool(op[5])
            if kind in (LOAD, RUN):
                assert holds.get(buf) == layer * E + e, (i, m, op)
            runs += kind in (LOAD, RUN)
            loads += kind == LOAD
            fetched_runs += kind == RUN and buf in fetched  # copied in this layer: a miss
        for _, buf, layer, e, _ in pre:
            holds[buf] = layer * E + e
            prefetches += 1
    c = planner.c
    assert c.hits + c.misses == c.accesses
    assert c.prefetches == prefetches
    if sc.nested is None:
        assert c.copies == loads + fetches + prefetches
        assert c.hits == runs - loads - fetched_runs
    for part, cap in zip(planner.parts, planner.caps):
        assert len(part) <= cap


@pytest.mark.parametrize("pset", [
    PolicySet("lru", {"slots_per_layer": 3}),
    PolicySet("lru", {"scope": "global", "slots_per_layer": 3}),
    PolicySet("ondemand"),
    PolicySet("lru", {"slots_per_layer": 3}, prefetch="oracle"),
    PolicySet("lru", {"slots_per_layer": 3}, placement="fiddler"),
    PolicySet("hybrimoe", {"slots_per_layer": 3}),
    PolicySet("d2moe", {"slots_per_layer": 3}),
    PolicySet("daop", {"slots_per_layer": 3}),
    PolicySet("lru", {"slots_per_layer": 3}, routing="adaptive-k", routing_options={"top_p": 0.6}),
], ids=lambda p: p.describe())
@pytest.mark.parametrize("batch", [1, 3])
def test_plans_keep_their_promises(pset, batch):
    tr = random_trace(90, 3, 8, 2, requests=3, seed=4, prefill=5)
    tr = tr.__class__(tr.experts, tr.request, tr.phase, tr.meta,
                      gates=np.random.default_rng(1).random(tr.experts.shape).astype(np.float32))
    planner, records = plan_run(tr, pset, batch=batch)
    check_plan(tr, records, planner)
    again, records2 = plan_run(tr, pset, batch=batch)
    assert records2 == records  # deterministic


# ---- timing ----------------------------------------------------------------------------------------------
TIMING_CASES = [
    (PolicySet("lru", {"slots_per_layer": 4}), {}),
    (PolicySet("lru", {"slots_per_layer": 4}), {"copy_stream": "compute"}),
    (PolicySet("lru", {"slots_per_layer": 4}), {"host_memory": "pageable"}),
    (PolicySet("ondemand"), {"batch": 3}),
    (PolicySet("cpu-experts"), {}),
    (PolicySet("lru", {"slots_per_layer": 2}, placement="fiddler"), {"batch": 3}),
    (PolicySet("lru", {"slots_per_layer": 4}, prefetch="oracle"), {"batch": 2}),
    (PolicySet("hybrimoe", {"slots_per_layer": 3}), {"batch": 3}),
    (PolicySet("d2moe", {"slots_per_layer": 3}), {}),
    (PolicySet("lru", {"slots_per_layer": 4}), {"prefill_chunk": 3, "batch": 2}),
]


@pytest.mark.parametrize("pset,cfg", TIMING_CASES, ids=lambda x: x.describe() if isinstance(x, PolicySet) else
                         ",".join(f"{k}={v}" for k, v in x.items()))
def test_fast_step_timing_equals_the_reference_bit_for_bit(monkeypatch, pset, cfg):
    tr = random_trace(80, 3, 8, 2, requests=3, seed=7, prefill=5, model="deepseek-v2-lite")
    hw = load_profile("rtx3090")
    fast = Replay(tr, hw, pset, ReplayConfig(**cfg)).run()
    monkeypatch.setattr(replay_mod, "FastStepTiming", StepTiming)
    ref = Replay(tr, hw, pset, ReplayConfig(**cfg)).run()
    pd.testing.assert_frame_equal(fast.steps, ref.steps, check_exact=True)
    for k in ("tpot_ms", "ttft_ms", "stall_ms", "gpu_busy", "pcie_busy", "hits", "bytes_h2d"):
        assert fast.summary[k] == ref.summary[k], k


def test_a_replay_runs_twice_with_identical_results():
    # the old engine overwrote its trace and spec while preparing: the second run rerouted the rerouted trace
    tr = random_trace(60, 3, 8, 2, requests=3, seed=2)
    tr = tr.__class__(tr.experts, tr.request, tr.phase, tr.meta,
                      gates=np.random.default_rng(3).random(tr.experts.shape).astype(np.float32))
    rp = Replay(tr, load_profile(HW), PolicySet("lru", {"slots_per_layer": 3}, routing="adaptive-k",
                                                routing_options={"top_p": 0.6}))
    a, b = rp.run(), rp.run()
    pd.testing.assert_frame_equal(a.steps, b.steps, check_exact=True)
    sa = {k: v for k, v in a.summary.items() if k != "wall_s"}
    sb = {k: v for k, v in b.summary.items() if k != "wall_s"}
    assert sa == sb and sa["routing_fidelity"] < 1.0
    assert rp.trace is tr  # the inputs are not changed
