"""simmoe-trace/1 files: write/read round trip, atomic writes, large traces without Python loops."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import make_trace, random_trace

from simmoe.errors import InputError
from simmoe.trace.format import Trace, make_meta, read_trace, validate, write_trace
from simmoe.trace.synth import synth_trace


def _same(a: Trace, b: Trace) -> None:
    for name in ("experts", "request", "phase", "gates", "arrival_s", "predicted"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), name
    assert a.meta == b.meta


def test_round_trip_all_arrays(tmp_path):
    tr = synth_trace("mixtral-8x7b", requests=3, prompt_tokens=[2, 0, 5], decode_tokens=[4, 3, 1], seed=2,
                     arrivals=2.0, predict_accuracy=0.7, slot_shuffle=0.5)
    p = tmp_path / "t.npz"
    write_trace(tr, p)
    back = read_trace(p)
    _same(tr, back)
    assert back.source == str(p)
    write_trace(tr, tmp_path / "u.npz", compress=False)
    _same(tr, read_trace(tmp_path / "u.npz"))


def test_round_trip_null_slots_and_model_spec(tmp_path):
    tr = random_trace(50, 3, 8, 2, requests=3, seed=1, prefill=2)
    ex = tr.experts.copy()
    ex[::7, 1, 1] = -1
    g = np.where(ex >= 0, 0.5, np.nan).astype(np.float32)
    tr2 = Trace(ex, tr.request, tr.phase, tr.meta, gates=g)
    validate(tr2)
    write_trace(tr2, tmp_path / "t.npz")
    _same(tr2, read_trace(tmp_path / "t.npz"))


def test_write_refuses_invalid_and_leaves_nothing(tmp_path):
    tr = make_trace([[[0, 1]], [[2, 3]]])
    bad = Trace(np.array([[[0, 9]], [[2, 3]]], np.int16), tr.request, tr.phase, tr.meta)
    with pytest.raises(InputError, match="experts"):
        write_trace(bad, tmp_path / "bad.npz")
    assert list(tmp_path.iterdir()) == []


def test_large_read_is_vectorised(tmp_path):
    """300,000 rows x 4 layers x top-2 (a 10^7-row trace is the same code on bigger arrays): reading and
    validating must take well under a second per 10^5 rows; a per-row Python loop would not."""
    n, L, K, E = 300_000, 4, 2, 8
    rng = np.random.default_rng(0)
    ex = np.argsort(rng.random((n, L, E), dtype=np.float32), axis=2)[:, :, :K].astype(np.int16)
    req = np.repeat(np.arange(1000, dtype=np.int32), n // 1000)
    ph = np.ones(n, np.int8)
    from simmoe.models.spec import ModelSpec

    spec = ModelSpec(name="toy", num_layers=L, moe_layers=tuple(range(L)), num_experts=E, top_k=K, d_model=64,
                     expert_d_ff=128, num_heads=4, num_kv_heads=4, head_dim=16, vocab_size=100)
    tr = Trace(ex, req, ph, make_meta(model_spec=spec, source="test"))
    p = tmp_path / "big.npz"
    write_trace(tr, p, compress=False)
    t0 = time.perf_counter()
    back = read_trace(p)
    assert back.num_requests == 1000 and back.replay_order.size == n
    assert time.perf_counter() - t0 < 3.0
