"""SwapMoE: the virtual-experts routing policy (set dynamics, masked routing, fidelity), the virtual-set cache
that follows it, and the swapmoe system through the engine, with golden numbers on the bundled trace."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import REPO, make_trace, plan_run, random_trace

from simmoe.engine.config import ReplayConfig
from simmoe.engine.planner import LOAD
from simmoe.engine.replay import Replay, replay
from simmoe.errors import InputError
from simmoe.hw.profile import load_profile
from simmoe.policies.base import PolicySet, parse_options
from simmoe.policies.routing.swapmoe import VirtualExperts, VirtualExpertsOptions
from simmoe.policies.systems.swapmoe import SwapMoE

HW = "a100-80gb-sxm"


def gated_trace(rows: int = 200, layers: int = 3, experts: int = 8, k: int = 2, seed: int = 3):
    tr = random_trace(rows, layers, experts, k, seed=seed)
    rng = np.random.default_rng(seed)
    g = np.sort(rng.dirichlet([1.0] * k, size=(rows, layers)).astype(np.float32), axis=-1)[..., ::-1].copy()
    return dataclasses.replace(tr, gates=g)


def router(**opts) -> VirtualExperts:
    return VirtualExperts(VirtualExpertsOptions(**opts))


# ---- the routing rule, by hand ---------------------------------------------------------------------------
def test_virtual_set_by_hand():
    ex = np.array([[[0, 1]], [[2, 0]], [[2, 3]], [[3, 1]]], np.int16)
    g = np.array([[[0.6, 0.4]], [[0.7, 0.3]], [[0.5, 0.5]], [[0.9, 0.1]]], np.float32)
    r = router(slots=2, update_every=2, decay=0.5)
    out, fid = r.reroute(ex, g)
    # r0: the empty set fills on first use: {0, 1}; scores 0: .6, 1: .4
    # r1: 2 is outside the set (dropped); scores 0: .6, 1: .2, 2: .7
    # r2: update: the top two are {2, 0}; 3 is dropped; scores 0: .3, 1: .1, 2: .85, 3: .5
    # r3: neither 3 nor 1 is in {0, 2}: served by the set's most important expert, 2, its mass lost
    assert out[:, 0].tolist() == [[0, 1], [-1, 0], [2, -1], [2, -1]]
    assert fid == pytest.approx((1.0 + 0.3 + 0.5 + 0.0) / 4)
    assert (r.entries, r.loads, r.substituted) == (3, 3, 1)
    assert [r.members(0, np.array([i])) for i in range(4)] == [{0, 1}, {0, 1}, {0, 2}, {0, 2}]


def test_without_gates_every_slot_weighs_the_same():
    ex = np.array([[[0, 1]], [[2, 0]]], np.int16)
    out, fid = router(slots=2, update_every=100).reroute(ex, None)
    assert out[:, 0].tolist() == [[0, 1], [-1, 0]] and fid == pytest.approx(0.75)


def test_fidelity_grows_with_slots_and_is_one_when_every_expert_fits():
    tr = gated_trace()
    fids = [router(slots=s, update_every=4).reroute(tr.experts, tr.gates)[1] for s in range(1, 9)]
    assert fids[0] < 0.5 and all(a < b for a, b in zip(fids, fids[1:]))
    assert fids[-1] == 1.0
    out, _ = router(slots=8).reroute(tr.experts, tr.gates)
    assert np.array_equal(out, tr.experts)


def test_every_token_is_served_by_a_set_member():
    tr = gated_trace(seed=7)
    r = router(slots=3, update_every=5)
    out, _ = r.reroute(tr.experts, tr.gates)
    for row in range(tr.num_rows):
        for m in range(tr.num_layers):
            kept = [int(e) for e in out[row, m] if e >= 0]
            assert kept and set(kept) <= r.members(m, np.array([row]))
            assert set(kept) <= set(tr.experts[row, m].tolist()) or len(kept) == 1


def reference(experts, gates, slots, update_every, decay):
    """The rule written plainly, row by row and layer by layer (the policy vectorises it)."""
    n, nl, _ = experts.shape
    ne = int(experts.max()) + 1
    slots = min(slots, ne)
    out = np.where(experts >= 0, experts, -1)
    member = [set() for _ in range(nl)]
    score = [[0.0] * ne for _ in range(nl)]
    kept = total = 0.0
    entries = substituted = 0
    for r in range(n):
        if r and r % update_every == 0:
            for m in range(nl):
                ranked = sorted(range(ne), key=lambda e: (-score[m][e], e not in member[m], e))[:slots]
                new = {e for e in ranked if score[m][e] > 0 or e in member[m]}
                entries += len(new - member[m])
                member[m] = new
        for m in range(nl):
            row = [int(e) for e in experts[r, m]]
            w = [(float(gates[r, m, j]) if gates is not None else 1.0) if e >= 0 else 0.0
                 for j, e in enumerate(row)]
            tw = sum(w)
            p = [x / tw if tw > 0 else 0.0 for x in w]
            for e in row:
                if e >= 0 and len(member[m]) < slots and e not in member[m]:
                    member[m].add(e)
                    entries += 1
            keep = [e >= 0 and e in member[m] for e in row]
            kept += sum(pj for pj, kj in zip(p, keep) if kj)
            total += sum(p)
            out[r, m] = [e if kj else -1 for e, kj in zip(row, keep)]
            if any(e >= 0 for e in row) and not any(keep):
                out[r, m, 0] = max(sorted(member[m]), key=lambda e: score[m][e])
                substituted += 1
            score[m] = [x * decay for x in score[m]]
            for j, e in enumerate(row):
                if e >= 0:
                    score[m][e] += p[j]
    return out, kept / total, entries, substituted


@pytest.mark.parametrize("slots,update_every,decay,gated,nulls", [
    (3, 4, 0.9, True, False), (2, 1, 0.5, True, True), (5, 7, 0.0, False, False), (4, 300, 0.99, True, True),
    (1, 3, 0.8, False, True)])
def test_vectorised_rule_equals_the_plain_one(slots, update_every, decay, gated, nulls):
    tr = gated_trace(rows=600, layers=2, experts=8, k=3, seed=slots + update_every)
    ex = tr.experts.copy()
    if nulls:  # adaptive-k-like traces: some slots empty, some tokens with no expert at a layer
        rng = np.random.default_rng(1)
        ex[rng.random(ex.shape) < 0.2] = -1
    gates = np.where(ex >= 0, tr.gates, np.nan) if gated else None
    r = router(slots=slots, update_every=update_every, decay=decay)
    out, fid = r.reroute(ex, gates)
    ref_out, ref_fid, entries, substituted = reference(ex, gates, slots, update_every, decay)
    assert np.array_equal(out, ref_out)
    assert fid == pytest.approx(ref_fid, rel=1e-12)
    assert (r.entries, r.substituted) == (entries, substituted)


# ---- the cache follows the set ---------------------------------------------------------------------------
def planned_misses(tr, pset) -> list[tuple[int, int, int]]:
    """The access planner at batch 1 (what the engine and the executor run): the misses as (row, layer,
    expert) — a step is one row here."""
    planner, records = plan_run(tr, pset)
    steps = planner.sc.steps
    assert all(len(s.rows) == 1 for s in steps)
    return [(int(steps[i].rows[0]), m, op[3]) for i, m, ops, _, _ in records for op in ops if op[0] == LOAD]


def first_uses_since_joining(r: VirtualExperts, experts: np.ndarray) -> set[tuple[int, int, int]]:
    """(row, layer, expert) where the expert is used for the first time since it (re)joined its set."""
    out = set()
    last: dict[tuple[int, int], int] = {}
    for row in range(experts.shape[0]):
        for m in range(experts.shape[1]):
            for e in {int(x) for x in experts[row, m] if x >= 0}:
                prev = last.get((m, e))
                if prev is None or any(e not in r.members(m, np.array([q]))
                                       for q in range(prev + 1, row + 1)):
                    out.add((row, m, e))
                last[(m, e)] = row
    return out


def follow(tr, slots: int, update_every: int):
    """(router, rerouted experts, the virtual-set cache's misses, LRU's misses) at batch 1."""
    r = router(slots=slots, update_every=update_every)
    out, _ = r.reroute(tr.experts, tr.gates)
    routing = {"routing": "virtual-experts", "routing_options": {"slots": slots, "update_every": update_every}}
    vs = planned_misses(tr, PolicySet("virtual-set", {"slots_per_layer": slots}, **routing))
    lru = planned_misses(tr, PolicySet("lru", {"slots_per_layer": slots}, **routing))
    return r, out, vs, lru


def test_misses_happen_only_when_the_set_changes():
    r, out, misses, lru_misses = follow(gated_trace(seed=3), 4, 4)
    allowed = first_uses_since_joining(r, out)
    assert set(misses) <= allowed and len(misses) <= r.loads <= r.entries
    # plain LRU of the same size evicts experts still in the set: misses the set change does not explain
    assert not set(lru_misses) <= allowed and len(lru_misses) > len(misses)


def test_engine_copies_exactly_the_followers_misses():
    tr = gated_trace(seed=3)
    _, _, misses, _ = follow(tr, 4, 4)
    s = replay(tr, HW, PolicySet("swapmoe", {"slots": 4, "update_every": 4, "background": False})).summary
    assert s["misses"] == s["copies"] == len(misses)
    assert "virtual-experts" in s["policy"] and "virtual-set" in s["policy"]
    lru = replay(tr, HW, PolicySet("lru", {"slots_per_layer": 4}, routing="virtual-experts",
                                   routing_options={"slots": 4, "update_every": 4})).summary
    assert lru["routing_fidelity"] == s["routing_fidelity"] < 1.0 and lru["misses"] > s["misses"]


def test_a_set_that_never_changes_costs_only_its_fill():
    tr = gated_trace(seed=5)
    r = router(slots=3, update_every=10**6)
    r.reroute(tr.experts, tr.gates)
    s = replay(tr, HW, PolicySet("swapmoe", {"slots": 3, "update_every": 10**6, "background": False})).summary
    assert r.entries == 3 * tr.num_layers and s["misses"] == s["copies"] == 3 * tr.num_layers


def test_without_the_router_the_cache_is_lru():
    tr = gated_trace(seed=2)
    a = replay(tr, HW, PolicySet("virtual-set", {"slots_per_layer": 3})).summary
    b = replay(tr, HW, PolicySet("lru", {"slots_per_layer": 3})).summary
    assert (a["hits"], a["misses"]) == (b["hits"], b["misses"])


def test_batched_steps_union_the_rows_sets():
    tr = gated_trace(rows=120, seed=9)
    tr = dataclasses.replace(tr, request=np.repeat(np.arange(4, dtype=np.int32), 30))
    s = replay(tr, HW, PolicySet("swapmoe", {"slots": 4, "update_every": 3, "background": False}), batch=4).summary
    assert s["hits"] + s["misses"] == s["accesses"] and s["copies"] == s["misses"] > 0
    bg = replay(tr, HW, PolicySet("swapmoe", {"slots": 4, "update_every": 3}), batch=4).summary
    assert bg["hits"] + bg["misses"] == bg["accesses"] and bg["copies"] == bg["misses"] + bg["prefetches"]


def test_fast_equals_simpy():
    tr = random_trace(60, 3, 8, 2, requests=3, seed=5, prefill=4)
    hw = load_profile("rtx3090")
    ps = PolicySet("swapmoe", {"slots": 3, "update_every": 4})
    out = {e: Replay(tr, hw, ps, ReplayConfig(engine=e, batch=2)).run() for e in ("fast", "simpy")}
    f, s = out["fast"], out["simpy"]
    assert f.steps["end_us"].to_numpy() == pytest.approx(s.steps["end_us"].to_numpy(), rel=1e-9)
    assert (f.summary["hits"], f.summary["misses"]) == (s.summary["hits"], s.summary["misses"])


def test_options_are_checked():
    with pytest.raises(InputError, match="slots"):
        parse_options(SwapMoE.Options, {"slots": 0}, "swapmoe")
    with pytest.raises(InputError, match="valid options of 'swapmoe': background, decay, slots, update_every"):
        parse_options(SwapMoE.Options, {"slot": 4}, "swapmoe")
    with pytest.raises(InputError, match="decay"):
        parse_options(VirtualExperts.Options, {"decay": 1.0}, "virtual-experts")


def test_cycled_requests_are_rerouted_as_served():
    tr = make_trace(np.array([[[0, 1]], [[2, 3]], [[0, 2]]], np.int16), request=[0, 0, 1])
    s = replay(tr, HW, PolicySet("swapmoe", {"slots": 2}), requests=4).summary
    assert s["tokens"] == 6 and s["hits"] + s["misses"] == s["accesses"]


# ---- golden ----------------------------------------------------------------------------------------------
# The bundled DeepSeek-V2-Lite synthetic trace, first 4 requests, one row per step, as test_policies_golden:
# (slots) -> (hits, misses, bytes_h2d, routing fidelity to 4 decimals). Measured by running the engine.
GOLDEN = {
    (4, False): (23115, 2728, 47198502912, 0.1777),
    (16, False): (47651, 6445, 111508193280, 0.4640),
    # background loading (the default): misses only where a layer-0 set changed; more bytes, since every
    # expert that joins is loaded, used or not (3233 / 9858 prefetches, 2808 / 7165 used), and the
    # prefetches queue ahead of demand copies: TPOT 8.05 vs 7.65 ms (4 slots), 15.03 vs 11.76 ms (16)
    (4, True): (25822, 21, 56299094016, 0.1777),
    (16, True): (54050, 46, 171354095616, 0.4640),
}


@pytest.mark.parametrize("slots,background", list(GOLDEN))
def test_golden_bundled(slots, background):
    s = replay(REPO / "traces/deepseek-v2-lite-synth.npz", "rtx3090", "swapmoe",
               {"slots": slots, "background": background}, prefill_chunk=1, max_requests=4).summary
    assert (s["hits"], s["misses"], s["bytes_h2d"], round(s["routing_fidelity"], 4)) == GOLDEN[slots, background]
    assert s["copies"] == s["misses"] + s["prefetches"] and (s["prefetches"] > 0) == background


def test_background_loading_leaves_misses_only_where_the_step_starts():
    # batch 1, cache = set size: the loader copies every joining expert of layers 1.. after layer 0's routing,
    # so only layer 0 (whose set may change at this very row) still misses; the routing is unchanged
    tr = gated_trace(seed=3)
    od = replay(tr, HW, PolicySet("swapmoe", {"slots": 4, "update_every": 4, "background": False}))
    bg = replay(tr, HW, PolicySet("swapmoe", {"slots": 4, "update_every": 4}))
    assert bg.summary["routing_fidelity"] == od.summary["routing_fidelity"]
    assert list(bg.layers["misses"][1:]) == [0] * (tr.num_layers - 1) and bg.layers["misses"][0] > 0
    assert (od.layers["misses"][1:] > 0).all() and bg.summary["misses"] < od.summary["misses"]
    assert bg.summary["prefetch_used"] > 0
