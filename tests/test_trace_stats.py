"""Trace statistics against plain references."""

from __future__ import annotations

import numpy as np
from conftest import make_trace, random_trace
from hypothesis import given, settings
from hypothesis import strategies as st

from simmoe.trace import stats
from simmoe.trace.format import Trace, validate


def _with_holes(tr: Trace, seed: int) -> Trace:
    ex = tr.experts.copy()
    ex[np.random.default_rng(seed).random(ex.shape) < 0.1] = -1
    out = Trace(ex, tr.request, tr.phase, tr.meta)
    validate(out)
    return out


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 60), layers=st.integers(1, 3), experts=st.integers(2, 9), seed=st.integers(0, 999),
       requests=st.integers(1, 4), holes=st.booleans())
def test_lru_curve_equals_reference(rows, layers, experts, seed, requests, holes):
    k = min(2, experts)
    tr = random_trace(rows, layers, experts, k, requests=requests, seed=seed)
    if holes:
        tr = _with_holes(tr, seed)
    hist = stats.stack_distance_histogram(tr)
    assert hist.sum() == (tr.experts >= 0).sum()
    for cap in range(0, experts + 1):
        assert np.array_equal(stats.lru_hits(tr, cap), stats.reference_lru_hits(tr, cap)), cap


def test_lru_curve_requests_out_of_id_order():
    # request 1's rows come first in the file; replay goes by id, so request 0 runs first
    ex = [[[0, 1]], [[2, 3]], [[0, 1]], [[0, 4]]]
    tr = make_trace(ex, request=[1, 1, 0, 0])
    assert list(stats.reference_lru_hits(tr, 2)) == list(stats.lru_hits(tr, 2))
    # replayed as [0,1] [0,4] [0,1] [2,3]; 2 slots: expert 0 hits at the 2nd and 3rd rows
    assert stats.lru_hits(tr, 2).tolist() == [2]
    curve = stats.lru_curve(tr, [0.25, 0.5])
    assert [c["capacity"] for c in curve] == [2, 4]
    assert curve[0]["hit_rate"] == 2 / 8


def _reuse_reference(tr: Trace) -> tuple[float, float]:
    hit = tot = same = 0
    for i in range(1, tr.num_rows):
        if tr.request[i] != tr.request[i - 1]:
            continue
        for layer in range(tr.num_layers):
            prev = list(tr.experts[i - 1, layer])
            for s, e in enumerate(tr.experts[i, layer]):
                if e < 0:
                    continue
                tot += 1
                if e in prev:
                    hit += 1
                    same += prev[s] == e
    return hit / tot, same / hit


def test_reuse_against_reference():
    tr = _with_holes(random_trace(200, 3, 6, 3, requests=5, seed=4), 1)
    r = stats.temporal_reuse(tr)
    ref_reuse, ref_same = _reuse_reference(tr)
    assert abs(r["reuse"] - ref_reuse) < 1e-12 and abs(r["reuse_same_slot"] - ref_same) < 1e-12
    assert r["reuse_uniform"] == 3 / 6


def test_popularity_counts_and_skew():
    ex = [[[0, 1]], [[0, 2]], [[0, 3]], [[0, 1]]]
    tr = make_trace(ex)
    counts = stats.expert_counts(tr)
    assert counts[0].tolist() == [4, 2, 1, 1, 0, 0, 0, 0]
    pop = stats.popularity(counts)
    assert pop["top_eighth_experts"] == 1 and pop["top_eighth_share"] == 0.5


def test_successor_recall_deterministic_chain():
    # layer 1's expert is always layer 0's + 1: a successor table recalls all of it
    rng = np.random.default_rng(0)
    a = rng.integers(0, 7, 100)
    ex = np.stack([a, a + 1], axis=1)[:, :, None]
    from simmoe.models.spec import ModelSpec
    from simmoe.trace.format import make_meta

    spec = ModelSpec(name="toy", num_layers=2, moe_layers=(0, 1), num_experts=8, top_k=1, d_model=64,
                     expert_d_ff=128, num_heads=4, num_kv_heads=4, head_dim=16, vocab_size=100)
    tr = Trace(ex.astype(np.int16), np.zeros(100, np.int32), np.ones(100, np.int8),
               make_meta(model_spec=spec, source="test"))
    validate(tr)
    p = stats.next_layer_predictability(tr)
    assert p["successor_recall"] == 1.0 and p["successor_predicted"] == 1.0


def test_trace_stats_and_format():
    tr = random_trace(80, 2, 8, 2, requests=2, seed=5, prefill=3)
    s = stats.trace_stats(tr)
    assert (s["rows"], s["requests"], s["prefill_rows"], s["decode_rows"]) == (80, 2, 6, 74)
    assert [c["fraction"] for c in s["lru"]] == [0.125, 0.25, 0.5, 0.75]
    text = stats.format_stats(s)
    assert "LRU" in text and "reuse" in text and "successor" in text
