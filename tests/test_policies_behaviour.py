"""Each cache policy's characteristic decision, on tiny hand-made sequences."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import random_trace

from simmoe.engine.replay import replay
from simmoe.engine.scenario import next_use_of
from simmoe.errors import InputError
from simmoe.policies.base import CacheContext, parse_options
from simmoe.policies.registry import get_policy

A, B, C, D = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class OracleContext(CacheContext):
    access_keys: np.ndarray | None = None


def build(name: str, cap: int, keys=(), num_experts: int = 8, access_keys: bool = False, **opts):
    cls = get_policy(name, "cache")
    ks = np.asarray(keys, dtype=np.int64)
    ctx = OracleContext(cap, num_experts, (0,), next_use_of(ks) if len(ks) else None,
                        ks if access_keys else None)
    return cls(ctx, parse_options(cls.Options, opts, name))


def run(pol, keys) -> tuple[list[bool], list[int]]:
    """Engine-like driver: hit vector and the victims, in order."""
    for k in pol.preload():
        pol.insert(k, -1)
    hits, victims = [], []
    for t, k in enumerate(keys):
        h = pol.find(k, t)
        hits.append(h)
        if not h:
            if len(pol) >= pol.capacity:
                v = pol.to_evict(t)
                victims.append(v)
                pol.evict(v)
            pol.insert(k, t)
    return hits, victims


# ---- lfu ------------------------------------------------------------------------------------------------
def test_lfu_keeps_the_frequent_key_lru_evicts():
    seq = [A, A, B, C, A]
    lru_hits, lru_v = run(build("lru", 2), seq)
    lfu_hits, lfu_v = run(build("lfu", 2), seq)
    assert lru_v == [A, B] and lru_hits[-1] is False
    assert lfu_v == [B] and lfu_hits[-1] is True


def test_lfu_ties_go_to_the_least_recent():
    _, v = run(build("lfu", 3), [A, B, C, B, A, D])  # A and B both used twice; C once -> C
    assert v == [C]
    _, v = run(build("lfu", 2), [A, B, B, A, C])  # A, B both twice; A used last -> B
    assert v == [B]


def test_lfu_frequency_restarts_after_eviction():
    # A is used 3 times, evicted, then comes back with frequency 1: the next miss evicts it again
    # B comes back after its eviction with frequency 1, below A's 2: counted over all history the last
    # miss would evict A (A and B both used twice, A less recently)
    _, v = run(build("lfu", 2), [A, A, B, C, B, C])
    assert v == [B, C, B]


# ---- belady ---------------------------------------------------------------------------------------------
def test_belady_evicts_the_furthest_next_use():
    seq = [A, B, C, A, B, D, A]
    hits, v = run(build("belady", 2, seq), seq)
    # at C: A next at 3, B at 4 -> evict B; at B (4): A next at 6, C never -> evict C; at D: B never -> B
    assert v == [B, C, B]
    assert hits == [False, False, False, True, False, False, True]


def test_belady_prefetch_insert_uses_the_access_sequence():
    seq = [A, B, C, A]
    pol = build("belady", 2, seq, access_keys=True)
    assert not pol.find(A, 0)
    pol.insert(A, 0)
    pol.insert(C, -1)  # a prefetch: next use of C is access 2
    assert not pol.find(B, 1)
    # full: A next at 3, C next at 2 -> A is the victim
    assert pol.to_evict(1) == A


def test_belady_prefetch_without_access_sequence_is_kept():
    seq = [A, B, C, A]
    pol = build("belady", 2, seq)
    pol.find(A, 0)
    pol.insert(A, 0)
    pol.insert(D, -1)  # unknown next use: treated as imminent
    assert pol.to_evict(1) == A


# ---- mrs ------------------------------------------------------------------------------------------------
def test_mrs_scores_follow_the_hybrimoe_rule():
    pol = build("mrs", 2, alpha=0.5)
    pol.on_routing(0, [A, B], [0.9, 0.1])
    pol.on_routing(0, [C], [0.5])
    assert pol.score(A) == pytest.approx(0.5 * 0.5 * 0.9)
    assert pol.score(B) == pytest.approx(0.5 * 0.5 * 0.1)
    assert pol.score(C) == pytest.approx(0.5 * 0.5)
    assert pol.score(D) == 0.0


def test_mrs_keeps_the_high_score_expert_lru_would_evict():
    pol = build("mrs", 2)
    pol.on_routing(0, [A, B], [0.9, 0.1])
    for t, k in enumerate([A, B]):
        assert not pol.find(k, t)
        pol.insert(k, t)
    pol.on_routing(0, [C], [0.5])
    assert not pol.find(C, 2)
    assert pol.to_evict(2) == B  # LRU would pick A


def test_mrs_without_scores_is_a_decayed_frequency():
    pol = build("mrs", 4, alpha=0.5)
    # three steps of layer 0 (accesses of other layers in between make the index jump)
    for t, k in [(0, A), (1, B), (5, A), (9, A), (10, C)]:
        pol.find(k, t)
    # steps {A, B}, {A}, {A, C}
    assert pol.score(A) == pytest.approx(((0.5 * 0.5) + 0.5) * 0.5 + 0.5)
    assert pol.score(B) == pytest.approx(0.5 * 0.5 * 0.5)
    assert pol.score(C) == pytest.approx(0.5)


def test_mrs_long_runs_do_not_underflow():
    pol = build("mrs", 1, alpha=1.0 - 1e-3)
    pol.on_routing(0, [A], [1.0])
    for _ in range(400):
        pol.on_routing(0, [B], [1.0])
    assert pol.score(B) == pytest.approx(1.0)
    assert pol.score(A) == 0.0 or pol.score(A) < 1e-300


# ---- static-popular -------------------------------------------------------------------------------------
@pytest.fixture
def profile(tmp_path):
    from conftest import make_trace

    from simmoe.trace.format import write_trace

    # one MoE layer of mixtral (8 experts), top-2: expert 0 in every row, 1 in most, 2..4 rarely
    rows = [[[0, 1]]] * 6 + [[[0, 2]]] * 2 + [[[0, 3]]] + [[[4, 0]]]
    p = tmp_path / "profile.npz"
    write_trace(make_trace(rows), p)
    return str(p)


def test_static_popular_hot_set_is_preloaded_and_pinned(profile):
    pol = build("static-popular", 3, profile=profile)  # 2 hot slots + 1 LRU slot
    assert tuple(pol.preload()) == (0, 1)
    hits, victims = run(pol, [5, 6, 0, 7, 1, 5, 6, 0, 1])
    assert hits[2] and hits[4] and hits[7] and hits[8]  # hot keys always hit
    assert set(victims) <= {5, 6, 7}
    assert set(pol.keys()) >= {0, 1}


def test_static_popular_lru_slots_zero_refuses_misses(profile):
    pol = build("static-popular", 2, profile=profile, lru_slots=0)
    run(pol, [0, 1])
    assert not pol.admit(5, 2) and pol.admit(0, 2)
    assert not pol.find(5, 2)
    with pytest.raises(InputError, match="lru_slots"):
        pol.to_evict(2)


def test_static_popular_options_need_exactly_one_profile(profile):
    with pytest.raises(InputError, match="exactly one"):
        build("static-popular", 2)
    with pytest.raises(InputError, match="exactly one"):
        build("static-popular", 2, profile=profile, profile_prefix=0.1)


def test_static_popular_profile_must_fit_the_model(profile):
    with pytest.raises(InputError, match="profile"):
        build("static-popular", 2, profile=profile, num_experts=4)
    with pytest.raises(InputError, match="no such file"):
        build("static-popular", 2, profile=profile + ".missing")


def test_static_popular_prefix_needs_the_access_sequence():
    with pytest.raises(InputError, match="access_keys"):
        build("static-popular", 2, profile_prefix=0.5)
    pol = build("static-popular", 2, [C, C, A, B, B, B], access_keys=True, profile_prefix=0.5)
    assert tuple(pol.preload()) == (C,)  # first half: C twice, A once; 1 hot slot


def test_static_popular_never_copies_its_hot_set(tmp_path):
    """Through the engine: a hot set covering every routed expert means no copy at all."""
    from simmoe.trace.format import write_trace

    tr = random_trace(60, 3, 8, 2, seed=4)
    p = tmp_path / "self.npz"
    write_trace(tr, p)
    s = replay(tr, "a100-80gb-sxm", "static-popular", {"slots_per_layer": 8, "lru_slots": 0, "profile": str(p)},
               prefill_chunk=1).summary
    assert s["misses"] == 0 and s["copies"] == 0 and s["hits"] == s["accesses"] > 0
