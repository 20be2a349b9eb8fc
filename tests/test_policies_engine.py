"""Prefetch, placement, precision and routing policies: the behaviour that characterises each, through the
engine, plus composition from the command line and from a policy YAML file."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_clean_error, make_trace, random_trace

from simmoe.engine.replay import replay
from simmoe.hw.profile import load_profile
from simmoe.policies.base import PolicySet
from simmoe.policies.routing.adaptive_k import AdaptiveK, AdaptiveKOptions

HW = "a100-80gb-sxm"


def fast_pcie(name: str = HW, gbps: float = 1e6):
    hw = load_profile(name)
    pcie = hw.pcie.model_copy(update={"h2d_pinned_gbps": gbps, "latency_us": 0.0})
    return hw.model_copy(update={"pcie": pcie})


def run(tr, pset: PolicySet, hw=HW, **cfg):
    return replay(tr, hw, pset, **cfg).summary


@pytest.fixture(scope="module")
def tr():
    return random_trace(300, 6, 16, 2, requests=3, seed=1)


# ---- prefetch -------------------------------------------------------------------------------------------
def test_oracle_prefetch_turns_misses_into_prefetches(tr):
    base = run(tr, PolicySet("lru", {"slots_per_layer": 16}))
    orc = run(tr, PolicySet("lru", {"slots_per_layer": 16}, prefetch="oracle"))
    # a cache as large as a layer: the only demand misses left are layer 0 of the very first step
    first_step_layer0 = len(np.unique(tr.experts[0, 0]))
    assert orc["misses"] == first_step_layer0
    assert orc["copies"] == base["copies"]  # every expert is still copied exactly once, just earlier


def test_oracle_prefetch_with_enough_bandwidth_hides_transfers(tr):
    # 1 TB/s: a copy takes less than the compute of the layers it is issued ahead of
    hw = fast_pcie(gbps=1000)
    s = run(tr, PolicySet("lru", {"slots_per_layer": 16}, prefetch="oracle", prefetch_options={"lookahead": 2}),
            hw=hw)
    no = run(tr, PolicySet("lru", {"slots_per_layer": 16}), hw=hw)
    # all that is left is the first layer's cold misses, which nothing can hide
    cold_ms = s["misses"] * s["expert_bytes"] / 1000e9 * 1e3
    assert s["misses"] == 2 and s["stall_ms"]["copy"] <= cold_ms
    assert no["stall_ms"]["copy"] > 10 * cold_ms


def test_next_layer_with_perfect_accuracy_matches_oracle_within_a_step(tr):
    o = {"slots_per_layer": 16}
    nl = run(tr, PolicySet("lru", o, prefetch="next-layer", prefetch_options={"accuracy": 1.0}))
    orc = run(tr, PolicySet("lru", o, prefetch="oracle"))
    # next-layer cannot guess the next token's layer 0: those stay demand misses
    assert nl["prefetch_used"] <= orc["prefetch_used"] and nl["misses"] >= orc["misses"]
    assert nl["misses"] - orc["misses"] <= (tr.num_rows - 1) * tr.top_k


def test_wrong_prefetches_into_a_full_cache_make_things_worse(tr):
    o = {"slots_per_layer": 4}
    base = run(tr, PolicySet("lru", o))
    bad = run(tr, PolicySet("lru", o, prefetch="next-layer", prefetch_options={"accuracy": 0.0}))
    assert bad["hits"] < base["hits"] and bad["bytes_h2d"] > base["bytes_h2d"]
    assert bad["tpot_ms"]["mean"] > base["tpot_ms"]["mean"]


def test_next_layer_uses_the_traces_predicted_experts():
    ex = np.array([[[0, 1], [2, 3]], [[0, 1], [4, 5]]], np.int16)
    pred = np.array([[[2, 3], [-1, -1]], [[6, 7], [-1, -1]]], np.int16)  # right for row 0, wrong for row 1
    t = make_trace(ex, model="mixtral-8x7b", predicted=pred)
    t = t.select(requests=[0])
    s = run(t, PolicySet("lru", {"slots_per_layer": 4}, prefetch="next-layer"))
    assert s["prefetches"] == 4 and s["prefetch_used"] == 2


def test_next_layer_without_predictions_needs_an_accuracy(tr, simmoe_cli, tmp_path):
    from simmoe.trace.format import write_trace

    p = tmp_path / "t.npz"
    write_trace(tr, p)
    res = simmoe_cli("replay", p, "--hw", HW, "--prefetch", "next-layer", "--quiet")
    assert_clean_error(res, "accuracy")


def test_successor_learns_a_deterministic_chain():
    # layer 1's expert is always layer 0's expert + 1: a successor table learns it after one sighting each
    rng = np.random.default_rng(0)
    e0 = rng.integers(0, 7, 400)
    ex = np.stack([e0, e0 + 1], axis=1)[:, :, None].astype(np.int16)
    spec_tr = make_trace(np.concatenate([ex, np.full_like(ex, -1)], axis=2), model="mixtral-8x7b")
    s = run(spec_tr.select(requests=[0]), PolicySet("lru", {"slots_per_layer": 1}, prefetch="successor"))
    layer0_misses = 1 + int((e0[1:] != e0[:-1]).sum())  # one slot: a miss whenever the expert changes
    assert s["misses"] - layer0_misses <= 7  # layer 1 misses only the first sighting of each successor


def test_stride_prefetches_two_layers_ahead(tr):
    s = run(tr, PolicySet("lru", {"slots_per_layer": 16}, prefetch="stride", prefetch_options={"accuracy": 1.0}))
    # layers 0 and 1 of each step cannot be reached two layers ahead within the step
    assert 0 < s["prefetch_used"] and s["misses"] > run(tr, PolicySet(
        "lru", {"slots_per_layer": 16}, prefetch="next-layer", prefetch_options={"accuracy": 1.0}))["misses"]


def test_pregated_fetches_exactly_the_next_layers_experts(tr):
    s = run(tr, PolicySet("pregated-moe", {"slots_per_layer": 4}))
    assert s["policy"].startswith("pregated-moe:") and "prefetch=pregated" in s["policy"]
    assert s["prefetches"] > 0 and s["prefetch_used"] == s["prefetches"]  # every fetched expert is used


# ---- placement ------------------------------------------------------------------------------------------
def test_fiddler_follows_the_cost_model(tr):
    o = {"slots_per_layer": 4}
    lru = run(tr, PolicySet("lru", o))
    hw = load_profile(HW)
    slow_cpu = hw.model_copy(update={"cpu": hw.cpu.model_copy(update={"peak_gflops": 1e-3, "memory_gbps": 1e-3})})
    s = run(tr, PolicySet("lru", o, placement="fiddler"), hw=slow_cpu)
    assert (s["hits"], s["misses"], s["cpu_experts"]) == (lru["hits"], lru["misses"], 0)
    slow_pcie = fast_pcie(gbps=1e-3)
    s = run(tr, PolicySet("lru", o, placement="fiddler"), hw=slow_pcie)
    assert s["copies"] == 0 and s["cpu_experts"] == s["misses"] == s["accesses"]


def test_n_cpu_moe_keeps_the_first_layers_on_the_cpu(tr):
    s = replay(tr, HW, PolicySet("lru", {}, placement="n-cpu-moe", placement_options={"n": 2}))
    steps = s.steps
    per_layer = int(tr.experts[:, :2][tr.experts[:, :2] >= 0].size)
    assert s.summary["cpu_experts"] == per_layer  # batch 1, one row per step: every access of layers 0-1
    lru = run(tr, PolicySet("lru", {}))
    assert lru["cache_slots"] == 6 * 16 and s.summary["cache_slots"] == 4 * 16  # the other layers: all resident
    assert len(steps) == tr.num_rows


def test_hybrid_split_balances_cpu_and_gpu():
    tr = random_trace(40, 4, 64, 6, seed=2, prefill=40)  # one 40-token prefill step: many misses per layer
    s = run(tr, PolicySet("lru", {"slots_per_layer": 8}, placement="hybrid-split"), hw="rtx3090")
    assert s["cpu_experts"] > 0 and s["copies"] > 0
    only_gpu = run(tr, PolicySet("lru", {"slots_per_layer": 8}), hw="rtx3090")
    assert s["makespan_s"] < only_gpu["makespan_s"]


# ---- precision ------------------------------------------------------------------------------------------
def test_quantized_moves_fewer_bytes_with_the_same_hits(tr):
    o = {"slots_per_layer": 4}
    full = run(tr, PolicySet("lru", o))
    q = run(tr, PolicySet("lru", o, precision="quantized", precision_options={"bits": 4, "group_size": 64}))
    assert (q["hits"], q["misses"]) == (full["hits"], full["misses"])
    assert q["expert_bytes"] / full["expert_bytes"] == pytest.approx(4.5 / 16, rel=1e-6)
    assert q["bytes_h2d"] < full["bytes_h2d"] * 0.3
    assert q["tpot_ms"]["mean"] < full["tpot_ms"]["mean"]


# ---- routing --------------------------------------------------------------------------------------------
def test_adaptive_k_keeps_the_gate_mass_it_reports():
    ex = np.array([[[0, 1, 2]], [[3, 4, -1]]], np.int16)
    g = np.array([[[0.7, 0.2, 0.1]], [[0.5, 0.5, np.nan]]], np.float32)
    out, fid = AdaptiveK(AdaptiveKOptions(top_p=0.75)).reroute(ex, g)
    assert out.tolist() == [[[0, 1, -1]], [[3, 4, -1]]]
    assert fid == pytest.approx((0.9 + 1.0) / 2)
    out, fid = AdaptiveK(AdaptiveKOptions(top_p=1.0)).reroute(ex, g)
    assert out.tolist() == ex.tolist() and fid == 1.0


def test_adaptive_k_through_the_engine():
    rng = np.random.default_rng(0)
    tr = random_trace(100, 3, 8, 2, seed=4)
    g = np.sort(rng.dirichlet([1, 1], size=(100, 3)).astype(np.float32), axis=-1)[..., ::-1].copy()
    tr = make_trace(tr.experts, model="mixtral-8x7b", gates=g)
    s = run(tr, PolicySet("lru", {"slots_per_layer": 4}, routing="adaptive-k", routing_options={"top_p": 0.6}))
    assert 0.6 <= s["routing_fidelity"] < 1.0
    assert s["activations"] < 100 * 3 * 2


# ---- composition ----------------------------------------------------------------------------------------
def test_composition_from_flags_and_yaml(simmoe_cli, tmp_path):
    trace = "traces/deepseek-v2-lite-synth.npz"
    from conftest import REPO

    flags = simmoe_cli("replay", REPO / trace, "--hw", "rtx3090", "--policy", "lru", "--opt", "slots_per_layer=8",
                       "--prefetch", "next-layer", "--prefetch-opt", "accuracy=0.7", "--placement", "fiddler",
                       "--max-requests", "1", "--json", tmp_path / "a.json", "--quiet")
    assert flags.returncode == 0, flags.stderr
    y = tmp_path / "p.yaml"
    y.write_text("cache: lru\ncache_options: {slots_per_layer: 8}\nprefetch: next-layer\n"
                 "prefetch_options: {accuracy: 0.7}\nplacement: fiddler\n")
    res = simmoe_cli("replay", REPO / trace, "--hw", "rtx3090", "--policy", y, "--max-requests", "1",
                     "--json", tmp_path / "b.json", "--quiet")
    assert res.returncode == 0, res.stderr
    import json

    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    for k in ("hits", "misses", "cpu_experts", "prefetches", "bytes_h2d", "policy"):
        assert a[k] == b[k], k


def test_policy_yaml_typo_is_a_clean_error(simmoe_cli, tmp_path):
    from conftest import REPO

    y = tmp_path / "p.yaml"
    y.write_text("cache: lru\nprefech: oracle\n")
    res = simmoe_cli("replay", REPO / "traces/mixtral-8x7b-synth.npz", "--hw", HW, "--policy", y)
    assert_clean_error(res, str(y), "prefech", "valid keys")
    res = simmoe_cli("replay", REPO / "traces/mixtral-8x7b-synth.npz", "--hw", HW, "--prefetch", "lru")
    assert_clean_error(res, "--prefetch", "not a prefetch policy")
    res = simmoe_cli("replay", REPO / "traces/mixtral-8x7b-synth.npz", "--hw", HW, "--precision", "quantized",
                     "--precision-opt", "bits=7")
    assert_clean_error(res, "quantized", "bits")


def test_monde_pins_the_hot_set_and_computes_the_rest_near_memory(tmp_path):
    from simmoe.trace.format import write_trace

    prof = random_trace(200, 4, 16, 2, seed=11)
    write_trace(prof, tmp_path / "profile.npz")
    tr = random_trace(100, 4, 16, 2, seed=12)
    s = run(tr, PolicySet("monde", {"profile": str(tmp_path / "profile.npz"), "slots_per_layer": 4}))
    assert s["copies"] == 0 and s["cpu_experts"] == s["misses"] > 0 and s["hits"] > 0
    assert s["cache_slots"] == 16  # the hot set, preloaded: 4 per layer
