"""D2MoE: nested (matryoshka) bit-widths chosen per token by gate, partial copies of the missing planes,
hottest-expert-bit-first I/O, through the engine; golden numbers on the bundled trace."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO, make_trace, random_trace

from simmoe.engine.config import ReplayConfig
from simmoe.engine.replay import Replay, replay
from simmoe.errors import InputError
from simmoe.hw.profile import load_profile
from simmoe.models.catalog import get_model
from simmoe.policies.base import PolicySet, parse_options
from simmoe.policies.precision.matryoshka import Matryoshka
from simmoe.policies.systems.d2moe import D2MoE

HW = "rtx3090"
P = get_model("mixtral-8x7b").expert_params  # 3 x 4096 x 14336 weights per expert
META = P * 32 // 64 // 8  # fp16 scale + zero per group of 64, copied with the base planes


def bits_of(gates=None, experts=None, **opts):
    pol = Matryoshka(parse_options(Matryoshka.Options, opts, "matryoshka"))
    g = None if gates is None else np.asarray(gates, np.float32)
    return pol.slot_bits(np.asarray(experts, np.int16), g)


# ---- the bit-width rule ----------------------------------------------------------------------------------
def test_bits_by_gate_rank():
    ex = [[[3, 1, 2]], [[4, 5, -1]]]
    g = [[[0.2, 0.5, 0.3]], [[0.6, 0.4, np.nan]]]
    assert bits_of(g, ex).tolist() == [[[2, 4, 2]], [[4, 2, 2]]]  # default [4, 2]; the -1 slot is ignored
    assert bits_of(g, ex, bits_by_rank=[4, 3, 2]).tolist() == [[[2, 4, 3]], [[4, 3, 2]]]
    # no gates: slot order is the rank
    assert bits_of(None, ex, bits_by_rank=[4, 3]).tolist() == [[[4, 3, 3]], [[4, 3, 3]]]


def test_bits_by_gate_threshold():
    ex = [[[3, 1, 2]]]
    g = [[[0.1, 0.6, 0.3]]]
    assert bits_of(g, ex, gate_bits=[[0.5, 4], [0.25, 3]]).tolist() == [[[2, 4, 3]]]
    with pytest.raises(InputError, match="gate_bits"):
        bits_of(None, ex, gate_bits=[[0.5, 4]])


def test_options_are_checked():
    for bad in ({"levels": [4, 2]}, {"bits_by_rank": [8]}, {"bits_by_rank": [4], "gate_bits": [[0.5, 4]]},
                {"io_order": "random"}):
        with pytest.raises(InputError):
            parse_options(Matryoshka.Options, bad, "matryoshka")
    for text in ("4,2", "[4, 2]"):  # lists from the command line (--opt bits_by_rank=4,2) arrive as text
        assert parse_options(Matryoshka.Options, {"bits_by_rank": text}, "matryoshka").bits_by_rank == (4, 2)
    with pytest.raises(InputError, match="levels"):
        parse_options(D2MoE.Options, {"bits_by_rank": "4,3", "levels": "2,4"}, "d2moe")


def test_bytes_of_planes():
    pol = Matryoshka(parse_options(Matryoshka.Options, {}, "matryoshka"))
    spec = get_model("mixtral-8x7b")
    assert pol.copy_bytes(spec, 0, 4) == P // 2 + META
    planes = pol.copy_bytes(spec, 0, 2) + pol.copy_bytes(spec, 2, 3) + pol.copy_bytes(spec, 3, 4)
    assert planes == P // 2 + META
    assert pol.copy_bytes(spec, 2, 4) == P // 4  # an upgrade carries no metadata
    assert pol.apply(spec).expert_bytes() == P // 2 + META  # a cache slot holds the top level


# ---- through the engine ----------------------------------------------------------------------------------
def hand_trace():
    ex = np.array([[[0, 1]], [[1, 0]], [[1, 2]], [[0, 2]]], np.int16)
    g = np.array([[[0.7, 0.3]], [[0.8, 0.2]], [[0.6, 0.4]], [[0.9, 0.1]]], np.float32)
    return make_trace(ex, gates=g)


@pytest.mark.parametrize("io_order", ["hebf", "sequential"])
def test_bytes_per_access_follow_the_bit_rule(io_order):
    res = replay(hand_trace(), HW, PolicySet("d2moe", {"slots_per_layer": 2, "io_order": io_order}))
    s = res.summary
    # r0: e0 top-1 -> 4 bits, e1 -> 2 bits, both absent: whole copies at those bits (+ metadata)
    # r1: e1 now top-1, resident at 2 bits: only planes 3-4 are copied; e0 needs 2, resident at 4: a hit
    # r2: e1 hit at 4; e2 misses at 2 bits and evicts e0 (LRU)
    # r3: e0 misses at 4 bits (evicting e1); e2 needs 2 bits, resident at 2: a hit
    steps = [P // 2 + META + P // 4 + META, P // 4, P // 4 + META, P // 2 + META]
    assert res.steps["bytes_h2d"].tolist() == steps
    assert (s["hits"], s["misses"], s["copies"], s["bytes_h2d"]) == (3, 5, 5, sum(steps))
    assert s["expert_bytes"] == P // 2 + META  # slots are sized for the top level


def test_all_top_bits_sequential_is_quantized():
    """With every access at the top level and whole copies in routing order, the nested path reproduces
    `quantized` exactly: same hits, bytes and times."""
    tr = random_trace(80, 3, 8, 2, requests=2, seed=4, prefill=5)
    o = {"slots_per_layer": 3}
    a = replay(tr, HW, PolicySet("d2moe", {**o, "bits_by_rank": [4], "io_order": "sequential"}), batch=2)
    b = replay(tr, HW, PolicySet("lru", o, precision="quantized", precision_options={"bits": 4}), batch=2)
    for key in ("hits", "misses", "copies", "bytes_h2d", "makespan_s"):
        assert a.summary[key] == b.summary[key], key
    assert a.steps["end_us"].tolist() == b.steps["end_us"].tolist()


def test_hottest_expert_bit_first_order():
    ex = np.array([[[5, 6, 7]], [[5, 6, 7]], [[6, 5, 7]]], np.int16)
    g = np.array([[[0.5, 0.3, 0.2]], [[0.5, 0.3, 0.2]], [[0.5, 0.3, 0.2]]], np.float32)
    tr = make_trace(ex, gates=g, model="olmoe-1b-7b")  # top-8: three experts per token are routing

    def program(io_order):
        res = Replay(tr, load_profile(HW), PolicySet("d2moe", {"slots_per_layer": 4, "io_order": io_order}),
                     ReplayConfig(timeline_steps=(0, 3))).run()
        copies = [(ev.start, ev.name) for ev in res.events if ev.track == "h2d"]
        kernels = [(ev.start, ev.name) for ev in res.events if ev.track == "gpu" and ev.cat == "expert"]
        return [n for _, n in sorted(copies)], [n for _, n in sorted(kernels)]

    copies, kernels = program("hebf")
    # step 0: the base planes of the three missing experts, hottest first, then the top-1 expert's upper
    # planes; the 2-bit experts compute first. Step 2: e6 is now top-1 (an upgrade); the hits e5 and e7
    # compute first
    assert copies == ["L0 e5 bits 0->2", "L0 e6 bits 0->2", "L0 e7 bits 0->2", "L0 e5 bits 2->4",
                      "L0 e6 bits 2->4"]
    assert kernels == ["L0 e6", "L0 e7", "L0 e5"] + ["L0 e5", "L0 e6", "L0 e7"] + ["L0 e5", "L0 e7", "L0 e6"]
    copies, kernels = program("sequential")
    assert copies == ["L0 e5 bits 0->4", "L0 e6 bits 0->2", "L0 e7 bits 0->2", "L0 e6 bits 2->4"]
    assert kernels == ["L0 e5", "L0 e6", "L0 e7"] * 2 + ["L0 e6", "L0 e5", "L0 e7"]


def test_a_victim_with_pending_work_is_computed_before_its_slot_is_reused():
    # one slot, a prefill step needing three experts in one layer: each copy must wait for the previous
    # expert's kernels (the slot is reused three times within the step)
    ex = np.array([[[0, 1]], [[2, 0]]], np.int16)
    g = np.array([[[0.6, 0.4]], [[0.7, 0.3]]], np.float32)
    tr = make_trace(ex, phase=[0, 0], gates=g)
    res = Replay(tr, load_profile(HW), PolicySet("d2moe", {"slots_per_layer": 1}),
                 ReplayConfig(timeline_steps=(0, 1), prefill_chunk=2)).run()
    s = res.summary
    assert (s["hits"], s["misses"]) == (0, 3)
    ev = sorted((e for e in res.events if e.track in ("h2d", "gpu") and " e" in e.name),
                key=lambda e: e.start)
    last_kernel_end = -1.0
    for e in ev:
        if e.track == "h2d":
            assert e.start >= last_kernel_end  # never overwrites a slot whose kernels have not run
        elif e.cat == "expert":
            last_kernel_end = e.end


def test_fast_equals_simpy():
    tr = random_trace(40, 3, 8, 2, requests=2, seed=5, prefill=4)
    out = {}
    for engine in ("fast", "simpy"):
        out[engine] = Replay(tr, load_profile(HW), PolicySet("d2moe", {"slots_per_layer": 3}),
                             ReplayConfig(engine=engine, batch=2)).run()
    f, s = out["fast"], out["simpy"]
    assert f.steps["end_us"].to_numpy() == pytest.approx(s.steps["end_us"].to_numpy(), rel=1e-9)
    assert (f.summary["hits"], f.summary["bytes_h2d"]) == (s.summary["hits"], s.summary["bytes_h2d"])


def test_layer_wise_placement_is_refused():
    tr = random_trace(10, 2, 8, 2, seed=1)
    with pytest.raises(InputError, match="hybrid-split"):
        replay(tr, HW, PolicySet("lru", {"slots_per_layer": 2}, placement="hybrid-split",
                                 precision="matryoshka"))


def test_prefetched_experts_are_resident_at_the_top_level():
    tr = random_trace(30, 3, 8, 2, seed=6)
    o = {"slots_per_layer": 8}
    s = replay(tr, HW, PolicySet("lru", o, prefetch="oracle", precision="matryoshka")).summary
    q = replay(tr, HW, PolicySet("lru", o, prefetch="oracle", precision="quantized")).summary
    # every expert after the first layer of the first step is prefetched whole (top level, as quantized-4) and
    # never needs more planes; of the two cold misses, the 2-bit one (e1) later needs 4 bits: one upgrade
    assert tr.experts[0, 0].tolist() == [7, 1]
    assert (s["misses"], q["misses"]) == (3, 2) and s["prefetches"] == q["prefetches"]
    assert s["bytes_h2d"] == q["bytes_h2d"]  # (2 bits + metadata) + 2 more bits = the 4-bit expert


# ---- golden ----------------------------------------------------------------------------------------------
# The bundled DeepSeek-V2-Lite synthetic trace, first 4 requests, 16 slots per layer, one row per step (as
# test_policies_golden). (hits, misses, bytes_h2d), measured by running the engine. Partial upgrades count as
# misses, so d2moe has fewer hits than LRU (53305) yet moves a third fewer bytes than quantized 4-bit.
GOLDEN = {
    "hebf": (47921, 71887, 214546759680),
}


@pytest.fixture(scope="module")
def quantized4():
    return replay(REPO / "traces/deepseek-v2-lite-synth.npz", HW, PolicySet(
        "lru", {"slots_per_layer": 16}, precision="quantized", precision_options={"bits": 4}),
        prefill_chunk=1, max_requests=4).summary


@pytest.mark.parametrize("io_order", list(GOLDEN))
def test_golden_bundled(io_order, quantized4):
    s = replay(REPO / "traces/deepseek-v2-lite-synth.npz", HW, "d2moe",
               {"slots_per_layer": 16, "io_order": io_order}, prefill_chunk=1, max_requests=4).summary
    assert (s["hits"], s["misses"], s["bytes_h2d"]) == GOLDEN[io_order]
    assert s["hits"] + s["misses"] == s["accesses"] == quantized4["accesses"]
    assert s["bytes_h2d"] < 0.7 * quantized4["bytes_h2d"]
