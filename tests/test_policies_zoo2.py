"""SE-MoE (ring of sections: `fifo` cache + `ring` prefetch, system `se-moe`), DAOP (`data-aware` cache, system
`daop`) and HybriMoE's impact-driven prefetch (`impact`, now part of the `hybrimoe` system): the behaviour
that characterises each, and golden numbers on the bundled DeepSeek-V2-Lite synthetic trace."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import REPO, assert_clean_error, random_trace

from simmoe.engine.costs import CostModel
from simmoe.engine.replay import replay
from simmoe.engine.setup import resolve
from simmoe.errors import InputError
from simmoe.hw.profile import load_profile
from simmoe.models.spec import ModelSpec
from simmoe.policies.base import CacheContext, PolicySet, StepView, parse_options
from simmoe.policies.registry import get_policy
from simmoe.trace.format import Trace, make_meta, read_trace, validate, write_trace

DEEPSEEK = REPO / "traces/deepseek-v2-lite-synth.npz"


def toy_trace(experts, phase, layers: int, num_experts: int = 8, gates: bool = True, predicted=None) -> Trace:
    """One request on a small model (4 MiB-ish experts), so engine runs stay fast."""
    spec = ModelSpec(name=f"toy-{layers}x{num_experts}", num_layers=layers, moe_layers=tuple(range(layers)),
                     num_experts=num_experts, top_k=2, d_model=1024, expert_d_ff=2048, num_heads=8,
                     num_kv_heads=8, head_dim=128, vocab_size=32000)
    ex = np.asarray(experts, dtype=np.int16)
    n = len(ex)
    g = np.where(ex >= 0, 1.0 / ex.shape[2], np.nan).astype(np.float32) if gates else None
    pred = None if predicted is None else np.asarray(predicted, dtype=np.int16)
    tr = Trace(ex, np.zeros(n, np.int32), np.asarray(phase, np.int8), make_meta(model_spec=spec, source="test"),
               gates=g, predicted=pred)
    validate(tr)
    return tr


def build_cache(name: str, cap: int, layers=(0,), num_experts: int = 8, **opts):
    cls = get_policy(name, "cache")
    return cls(CacheContext(cap, num_experts, tuple(layers)), parse_options(cls.Options, opts, name))


# ---- fifo -----------------------------------------------------------------------------------------------
def test_fifo_evicts_the_oldest_insert_and_hits_do_not_reorder():
    pol = build_cache("fifo", 2)
    for t, k in enumerate([0, 1]):
        assert not pol.find(k, t)
        pol.insert(k, t)
    assert pol.find(0, 2)  # a hit on the oldest key...
    assert pol.to_evict(3) == 0  # ...does not save it (LRU would evict 1)
    lru = build_cache("lru", 2)
    for t, k in enumerate([0, 1]):
        lru.find(k, t)
        lru.insert(k, t)
    lru.find(0, 2)
    assert lru.to_evict(3) == 1


# ---- se-moe ---------------------------------------------------------------------------------------------
def test_se_moe_expands_to_a_global_fifo_with_the_ring():
    r = resolve(PolicySet("se-moe", {"slots_per_layer": 4, "sections": 2}))
    assert (r.pset.cache, r.pset.prefetch, r.pset.system) == ("fifo", "ring", "se-moe")
    assert dict(r.pset.cache_options) == {"scope": "global", "slots_per_layer": 4}
    assert r.prefetch_opts.depth == 2


def test_ring_proposes_every_expert_of_the_layer_sections_ahead_wrapping():
    cls = get_policy("ring", "prefetch")
    ring = cls(CacheContext(3 * 8, 8, tuple(range(6))), parse_options(cls.Options, {}, "ring"))
    assert ring.depth == 3  # whole layers the cache holds
    view = StepView(0, "decode", [np.array([0, 1])] * 6, [np.array([1, 1])] * 6)
    assert ring.propose(view, 1) == [(4, e) for e in range(8)]
    assert ring.propose(view, 4) == [(1, e) for e in range(8)]  # layer 7 = the next token's layer 1


@pytest.mark.parametrize("seed", [1, 7])
def test_se_moe_moves_every_layer_once_per_token_whatever_the_routing(seed):
    L, E, k = 4, 8, 2
    tr = random_trace(40, L, E, k, seed=seed)
    for slots, sections in ((2, 1), (3, 1), (4, 2), (6, 3)):  # 8, 12, 16, 24 slots: 1, 1.5, 2, 3 layers
        res = replay(tr, "rtx3090", "se-moe", {"slots_per_layer": slots}, prefill_chunk=1)
        steps, s = res.steps, res.summary
        assert s["cache_slots"] == slots * L and s["cache_slots"] // E == sections
        # warm: each token copies all L x E experts (sections < L: a layer is evicted before its next use)
        assert (steps["copies"].to_numpy()[2:] == L * E).all()
        assert (steps["bytes_h2d"].to_numpy()[2:] == L * E * s["expert_bytes"]).all()
        # the only demand misses are cold ones: the first step's layers before the ring reaches them, and a few
        # in the next step when those demand copies, being the oldest, push part of the ring out
        assert steps["misses"].iloc[0] >= sections * k and (steps["misses"].to_numpy()[2:] == 0).all()
        assert s["hits"] == s["accesses"] - s["misses"]


def test_se_moe_with_every_layer_resident_stops_copying():
    tr = random_trace(40, 6, 8, 2, seed=1)
    res = replay(tr, "rtx3090", "se-moe", {"slots_per_layer": 8}, prefill_chunk=1)
    assert (res.steps["copies"].to_numpy()[1:] == 0).all() and res.summary["misses"] == 12  # top-2 x 6 layers


def test_se_moe_misses_when_the_ring_is_deeper_than_the_sections_that_fit():
    tr = random_trace(40, 6, 8, 2, seed=1)
    fit = replay(tr, "rtx3090", "se-moe", {"slots_per_layer": 4, "sections": 3}, prefill_chunk=1).summary
    deep = replay(tr, "rtx3090", "se-moe", {"slots_per_layer": 4, "sections": 4}, prefill_chunk=1).summary
    assert fit["misses"] == 6  # only cold ones
    assert deep["misses"] == deep["accesses"]  # each layer is evicted by the ring just before it runs


def test_se_moe_options_are_validated():
    with pytest.raises(InputError, match="sections"):
        resolve(PolicySet("se-moe", {"sections": 0}))
    with pytest.raises(InputError, match="valid options of 'se-moe'"):
        resolve(PolicySet("se-moe", {"depth": 2}))


# ---- daop -----------------------------------------------------------------------------------------------
@pytest.fixture
def popular01(tmp_path):
    """Profile: experts 0 and 1 in every layer of every row (4-layer toy model)."""
    p = tmp_path / "profile.npz"
    write_trace(toy_trace(np.tile([0, 1], (20, 4, 1)), [1] * 20, layers=4), p)
    return str(p)


def test_data_aware_startup_set_is_each_layers_most_popular(popular01):
    pol = build_cache("data-aware", 2, profile=popular01)
    assert tuple(pol.preload()) == (0, 1)
    glob = build_cache("data-aware", 5, layers=(0, 1, 2, 3), profile=popular01)
    pre = glob.preload()  # quota 1 per layer (expert 0), then the most popular left: layer 0's expert 1
    assert list(pre) == [0, 8, 16, 24, 1]


def test_data_aware_swaps_hot_for_cold_only_in_multi_token_steps(popular01):
    pol = build_cache("data-aware", 2, profile=popular01)
    for k in pol.preload():
        pol.insert(k, -1)
    pol.on_step(np.arange(10))  # a 10-token prefill step
    pol.on_routing(0, [5, 0, 6], [0.4, 0.2, 0.1])  # masses 4, 2, 1 tokens-worth; expert 1 unrouted (0)
    # hot: 5 (4) then 6 (1); cold: 1 (0) then 0 (2): 5 > 1.05 x 0 swaps, 6 (1) > 1.05 x 2 does not
    assert pol.admit(5, 0) and not pol.admit(6, 1)
    assert pol.to_evict(0) == 1
    pol.evict(1)
    pol.insert(5, 0)
    assert sorted(pol.keys()) == [0, 5]
    pol.on_step(np.arange(1))  # decode: the allocation is fixed
    pol.on_routing(0, [6, 7], [0.5, 0.5])
    assert not pol.admit(6, 2) and not pol.admit(7, 3)


def test_data_aware_swap_ratio_is_strict(popular01):
    pol = build_cache("data-aware", 2, profile=popular01, swap_ratio=2.0)
    for k in pol.preload():
        pol.insert(k, -1)
    pol.on_step(np.arange(4))
    pol.on_routing(0, [0, 1, 5], [0.25, 0.25, 0.5])  # cold 1 token each, hot 2 tokens: 2 > 2 x 1 is false
    assert not pol.admit(5, 0)
    pol.on_routing(0, [0, 1, 5], [0.2, 0.25, 0.55])  # hot 2.2 > 2 x 0.8
    assert pol.admit(5, 0) and pol.to_evict(0) == 0


def test_data_aware_without_profile_fills_free_slots_with_the_hottest():
    pol = build_cache("data-aware", 3, swaps=2)
    pol.on_step(np.arange(8))
    pol.on_routing(0, [1, 2, 3], [0.1, 0.5, 0.4])
    assert [k for k in range(8) if pol.admit(k, 0)] == [2, 3]  # `swaps` caps the hot experts considered


def test_daop_copies_only_at_prefill_and_keeps_the_sequences_hot_experts(popular01):
    # the profile says experts 0, 1; this sequence uses 5, 6 throughout (300-token prompt, 40 decode tokens)
    tr = toy_trace(np.tile([5, 6], (340, 4, 1)), [0] * 300 + [1] * 40, layers=4)
    res = replay(tr, "rtx3090", "daop", {"slots_per_layer": 2, "profile": popular01})
    still = replay(tr, "rtx3090", "daop", {"slots_per_layer": 2, "profile": popular01, "swaps": 0})
    dec, dec0 = (r.steps[r.steps["kind"] == "decode"] for r in (res, still))
    assert res.summary["copies"] == 8 and res.steps["copies"].iloc[0] == 8  # 2 swaps per layer, at prefill
    assert dec["copies"].sum() == 0 and dec["misses"].sum() == 0 and dec["hits"].sum() == 40 * 8
    # without swaps the profile's experts stay: every decode access runs on the CPU, nothing is copied
    assert dec0["hits"].sum() == 0 and dec0["cpu_experts"].sum() == 40 * 8 and dec0["copies"].sum() == 0
    assert res.summary["tpot_ms"]["mean"] < still.summary["tpot_ms"]["mean"]


def test_daop_expansion_and_profile_errors(popular01):
    r = resolve(PolicySet("daop", {"slots_per_layer": 2, "profile": popular01}))
    assert (r.pset.cache, r.pset.placement, r.pset.prefetch) == ("data-aware", "fiddler", None)
    with pytest.raises(InputError, match="profile"):
        build_cache("data-aware", 2, num_experts=4, profile=popular01)
    with pytest.raises(InputError, match="swap_ratio"):
        build_cache("data-aware", 2, swap_ratio=0)


# ---- impact prefetch ------------------------------------------------------------------------------------
def impact(L=4, E=8, **opts):
    cls = get_policy("impact", "prefetch")
    return cls(CacheContext(L * E, E, tuple(range(L))), parse_options(cls.Options, opts, "impact"))


def view_of(experts_by_layer, predicted=None, costs=None):
    ex = [np.asarray(x) for x in experts_by_layer]
    return StepView(0, "decode", ex, [np.ones(len(x), np.int64) for x in ex], predicted_by_layer=predicted,
                    costs=costs)


def test_impact_prefetches_what_is_likely_enough_to_pay_for_a_wasted_copy():
    pol = impact(alpha=0.5, layers=2, budget=1)
    v = view_of([[0], [1], [2], [3]])
    assert pol.propose(v, 0) == []  # nothing seen yet: P = 0 everywhere
    for m in (1, 2, 3):
        pol.propose(v, m)
    # after one step P = 0.5 for the routed experts: 0.5 x saving = 0.5 x copy (HybriMoE constants): no gain
    assert pol.propose(v, 0) == []
    for m in (1, 2, 3):
        pol.propose(v, m)
    # P = 0.75: layers 1 and 2 (two layers ahead), one expert each, nearest first on equal impact
    assert pol.propose(v, 0) == [(1, 1), (2, 2)]
    assert pol.propose(v, 2) == [(3, 3)]  # the step's last layer: the next token is not prefetched
    assert pol.propose(v, 3) == []


def test_impact_uses_the_traces_predictions_and_the_engines_costs():
    pol = impact(layers=1, budget=4)
    v = view_of([[0], [1], [2], [3]], predicted=[np.array([5, 6]), np.array([7]), np.array([]), np.array([])])
    assert sorted(pol.propose(v, 0)) == [(1, 5), (1, 6)]  # predicted: P = 1, whatever the history

    class Costs:  # CPU dearer with more tokens, copy 100 us, GPU 10 us
        expert_bytes = 1

        def activation_bytes(self, n):
            return 0

        def d2h_us(self, b):
            return 0.0

        def h2d_us(self, b, pinned=True):
            return 100.0 if b else 0.0

        def expert_cpu_us(self, n):
            return 30.0 * n

        def expert_gpu_us(self, n):
            return 10.0

    pol = impact(layers=1, budget=4)
    v = view_of([[0], [1], [2], [3]], costs=Costs())
    assert pol.propose(v, 0) == []
    assert pol.saving_us(1) == 20.0 and pol.saving_us(10) == 100.0 and pol.copy_us() == 100.0


def test_impact_reads_only_routing_already_seen():
    a, b = impact(alpha=0.5), impact(alpha=0.5)
    past = [[0], [1], [2], [3]]
    for _ in range(3):
        for m in range(4):
            assert a.propose(view_of(past), m) == b.propose(view_of(past), m)
    # this step's layers after layer 1 differ: the proposals up to layer 1 cannot tell
    for m in (0, 1):
        assert a.propose(view_of([[0], [1], [5], [6]]), m) == b.propose(view_of([[0], [1], [2], [3]]), m) != []


def test_impact_rejects_bad_options():
    for bad in ({"layers": 0}, {"budget": 0}, {"alpha": 0}, {"alpha": 1.5}, {"lookahead": 1}):
        with pytest.raises(InputError):
            impact(**bad)


def test_impact_turns_a_thrashing_cycle_into_hits():
    # the same 2 experts per layer every token, a global cache of 2 layers: LRU over 6 layers misses always
    L = 6
    tr = toy_trace(np.tile([0, 1], (200, L, 1)), [1] * 200, layers=L)
    lru = replay(tr, "rtx3090", PolicySet("lru", {"scope": "global", "slots_per_layer": 1})).summary
    imp = replay(tr, "rtx3090", PolicySet("lru", {"scope": "global", "slots_per_layer": 1}, prefetch="impact",
                                          prefetch_options={"layers": 1, "budget": 2})).summary
    assert lru["hits"] == 0
    # a prefetch pays once P * saving > (1 - P) * copy; P after n tokens is 1 - (1 - alpha)^n (alpha 0.1).
    # From then on every layer but each token's first is prefetched.
    c = CostModel(tr.spec, load_profile("rtx3090"))
    act = c.activation_bytes(1)
    copy = c.h2d_us(c.expert_bytes)
    saving = min(c.expert_cpu_us(1) + c.d2h_us(act) + c.h2d_us(act, pinned=True), copy + c.expert_gpu_us(1)) \
        - c.expert_gpu_us(1)
    n = math.ceil(math.log(1 - copy / (saving + copy)) / math.log(0.9))
    assert imp["misses"] <= n * L * 2 + 200 * 2
    assert imp["prefetch_used"] >= (200 - n - 1) * (L - 1) * 2


def test_bad_zoo_options_are_one_line_errors(simmoe_cli, tmp_path):
    res = simmoe_cli("replay", DEEPSEEK, "--hw", "rtx3090", "--policy", "daop", "--opt",
                     f"profile={tmp_path / 'missing.npz'}", "--quiet")
    assert_clean_error(res, "data-aware", "profile", "no such file")
    res = simmoe_cli("replay", DEEPSEEK, "--hw", "rtx3090", "--policy", "hybrimoe", "--opt", "prefetch_budget=0",
                     "--quiet")
    assert_clean_error(res, "hybrimoe", "prefetch_budget")


def test_hybrimoe_includes_the_impact_prefetch():
    r = resolve(PolicySet("hybrimoe", {"slots_per_layer": 4, "prefetch_layers": 3, "prefetch_budget": 2}))
    assert (r.pset.cache, r.pset.placement, r.pset.prefetch) == ("mrs", "hybrid-split", "impact")
    assert (r.prefetch_opts.layers, r.prefetch_opts.budget, r.prefetch_opts.alpha) == (3, 2, 0.1)
    assert r.cache_opts.alpha == 0.5


# ---- golden numbers on the bundled DeepSeek-V2-Lite trace ----------------------------------------------
# rtx3090, 16 slots per layer; first 4 requests (1 for se-moe: it copies the whole model every token). Measured
# by running the engine; a change needs an explanation.
# - se-moe: 16 x 26 slots = 6 whole layers; 192 steps x 26 layers x 64 experts = 319488 ring copies; the 36
#   misses are the first step's layers 0-5 (top-6 each).
# - daop: profile = requests 8-15, whole prompts per step. The cache claims its misses (admit before
#   placement), so the prefill swaps happen (403 copies) although fiddler would run those experts on the CPU.
#   Before that engine hook: (45551, 40564, 57896960, 0, 40564, 0). The swaps lower decode hits on this
#   synthetic trace (its prefill hotness does not predict a request's decode); on the real tinymoe-stdlib
#   trace they raise them (16 requests, 2 slots/layer: 3058 hits vs 2719 for static-popular + fiddler).
# - hybrimoe (mrs + hybrid-split + impact): before the impact prefetch it was
#   (52767, 67041, 383517167616, 22162, 44879, 0). With HybriMoE's own cost constants the prefetch made 57
#   copies (52 used); with the profile's costs (the engine passes its cost model) a copy (0.72 ms for a 17 MB
#   expert on rtx3090) is rarely worth its risk: 6 prefetches, all 6 used.
# - promoe (lru + stride accuracy 0.8 in 32 MiB preemptible chunks): the same counts as FIFO stride; mean
#   TPOT 84.86 ms vs 85.22 ms FIFO (demand copies overtake queued prefetches).
# (policy, options, replay config) -> (hits, misses, bytes_h2d, copies, cpu_experts, prefetches)
GOLDEN = {
    ("fifo", (), (("prefill_chunk", 1), ("max_requests", 4))):
        (49174, 70634, 1222074433536, 70634, 0, 0),
    ("se-moe", (), (("prefill_chunk", 1), ("max_requests", 1))):
        (29916, 36, 5528245764096, 319524, 0, 319488),
    ("daop", (("profile", "PROFILE"),), (("max_requests", 4),)):
        (42239, 43876, 7030628352, 403, 43473, 0),
    ("promoe", (), (("max_requests", 4),)):
        (66386, 19729, 1227628216320, 70955, 0, 51226),
    ("hybrimoe", (), (("prefill_chunk", 1), ("max_requests", 4))):
        (52773, 67035, 383603662848, 22167, 44874, 6),
}


@pytest.fixture(scope="module")
def ds():
    return read_trace(DEEPSEEK)


@pytest.fixture(scope="module")
def ds_profile(ds, tmp_path_factory):
    p = tmp_path_factory.mktemp("profile") / "requests-8-15.npz"
    write_trace(ds.select(requests=ds.request_ids[8:]), p)
    return str(p)


@pytest.mark.parametrize("policy,opts,cfg", list(GOLDEN), ids=[p for p, _, _ in GOLDEN])
def test_golden_bundled(ds, ds_profile, policy, opts, cfg):
    o = {"slots_per_layer": 16, **{k: ds_profile if v == "PROFILE" else v for k, v in opts}}
    s = replay(ds, "rtx3090", policy, o, **dict(cfg)).summary
    got = tuple(s[k] for k in ("hits", "misses", "bytes_h2d", "copies", "cpu_experts", "prefetches"))
    assert got == GOLDEN[(policy, opts, cfg)]
