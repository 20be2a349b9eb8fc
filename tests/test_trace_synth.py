"""Synthetic traces: determinism, knobs move the statistics the right way, presets match the reference
curves, fitting to a trace reproduces its LRU curve, the bundled samples are reproducible."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import REPO

from simmoe.errors import InputError
from simmoe.trace import stats
from simmoe.trace.format import read_trace
from simmoe.trace.synth import PRESETS, fit_stats, fit_synth_params, synth_like, synth_trace

ARRAYS = ("experts", "request", "phase", "gates", "arrival_s", "predicted")
# REFERENCE-FIGURES.md: real-capture per-layer LRU hit rates at 12.5/25/50/75% of each layer's experts
REFERENCE_LRU = {"mixtral-like": [8.3, 31.9, 59.2, 80.8], "deepseek-v2-lite-like": [26.2, 44.4, 69.5, 89.3]}


def _lru(tr) -> np.ndarray:
    return 100 * np.array([c["hit_rate"] for c in stats.lru_curve(tr)])


def test_same_seed_same_arrays_and_seed_matters():
    kw = dict(requests=3, prompt_tokens=4, decode_tokens=20, arrivals=1.5, predict_accuracy=0.6,
              slot_shuffle=0.4, **{k: v for k, v in PRESETS["mixtral-like"].items() if k != "slot_shuffle"})
    a, b = synth_trace("mixtral-8x7b", seed=3, **kw), synth_trace("mixtral-8x7b", seed=3, **kw)
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.tobytes() == y.tobytes(), name
    c = synth_trace("mixtral-8x7b", seed=4, **kw)
    assert not np.array_equal(a.experts, c.experts)
    assert a.meta["synthetic"] is True and "synthetic" in a.meta["source"]


def test_slot_shuffle_only_reorders_slots():
    kw = dict(requests=2, prompt_tokens=3, decode_tokens=30, seed=1)
    base = synth_trace("mixtral-8x7b", **kw)
    sh = synth_trace("mixtral-8x7b", slot_shuffle=1.0, **kw)
    assert np.array_equal(np.sort(base.experts, axis=2), np.sort(sh.experts, axis=2))
    assert not np.array_equal(base.experts, sh.experts)
    assert np.array_equal(base.gates, sh.gates)
    s0 = stats.temporal_reuse(base)["reuse_same_slot"]
    s1 = stats.temporal_reuse(sh)["reuse_same_slot"]
    assert s0 > s1 + 0.2  # kept experts keep their slot unless shuffled


def test_knobs_move_statistics():
    def s(**kw):
        tr = synth_trace("mixtral-8x7b", requests=2, prompt_tokens=0, decode_tokens=200, seed=0, gates=False,
                         **{"reuse": 0.2, "skew": 0.3, "layer_corr": 0.3, **kw})
        return fit_stats(tr)

    lo, hi = s(reuse=0.05), s(reuse=0.5)
    assert hi["reuse"] > lo["reuse"] + 0.2 and hi["lru"][1] > lo["lru"][1] + 0.1
    lo, hi = s(skew=0.0), s(skew=1.5)
    assert hi["top_eighth_share"] > lo["top_eighth_share"] + 0.1 and hi["lru"][2] > lo["lru"][2]
    lo, hi = s(layer_corr=0.0), s(layer_corr=0.9)
    assert hi["successor_recall"] > lo["successor_recall"] + 0.2


def test_bad_parameters():
    with pytest.raises(InputError, match="reuse"):
        synth_trace("mixtral-8x7b", reuse=1.5)
    with pytest.raises(InputError, match="slot_shuffle"):
        synth_trace("mixtral-8x7b", slot_shuffle=-0.1)
    with pytest.raises(InputError, match="unknown model"):
        synth_trace("no-such-model")


def test_mixtral_preset_matches_reference_curve():
    """Reference shape: 4 decode requests, ~146 tokens each; averaged over 4 seeds."""
    curves = [_lru(synth_trace("mixtral-8x7b", requests=4, prompt_tokens=0, decode_tokens=146, seed=s,
                               gates=False, **PRESETS["mixtral-like"])) for s in range(4)]
    err = np.abs(np.mean(curves, axis=0) - REFERENCE_LRU["mixtral-like"])
    assert err.max() <= 3.0, np.mean(curves, axis=0)


def test_deepseek_preset_matches_reference_curve():
    """Reference: one stream (20,000 tokens there; 4,000 here to stay fast, cold misses are < 1%)."""
    tr = synth_trace("deepseek-v2-lite", requests=1, prompt_tokens=0, decode_tokens=4000, seed=0, gates=False,
                     **PRESETS["deepseek-v2-lite-like"])
    curve = _lru(tr)
    assert np.abs(curve - REFERENCE_LRU["deepseek-v2-lite-like"]).max() <= 3.0, curve


@pytest.mark.parametrize("params", [
    {"reuse": 0.18, "skew": 0.6, "layer_corr": 0.3, "slot_shuffle": 0.5},
    {"reuse": 0.5, "skew": 1.0, "layer_corr": 0.8, "slot_shuffle": 0.1},
    {"reuse": 0.0, "skew": 0.0, "layer_corr": 0.0, "slot_shuffle": 1.0},
])
def test_synth_like_reproduces_lru_curve(params):
    original = synth_trace("mixtral-8x7b", requests=4, prompt_tokens=16, decode_tokens=100, seed=11, **params)
    bigger, fit = synth_like(original, requests=12, seed=5)
    assert bigger.num_rows == 3 * original.num_rows and bigger.num_requests == 12
    err = np.abs(_lru(bigger) - _lru(original))
    assert err.max() <= 3.0, (fit["params"], _lru(original), _lru(bigger))
    assert fit["lru_error_points"] <= 3.0
    assert abs(fit["params"]["reuse"] - params["reuse"]) < 0.1
    assert bigger.meta["fitted_to"]["lru_error_points"] == round(fit["lru_error_points"], 3)
    assert np.array_equal(bigger.phase.reshape(12, -1)[:, :16], np.zeros((12, 16), np.int8))


def test_fit_on_toy_spec_and_single_layer():
    from simmoe.models.spec import ModelSpec

    spec = ModelSpec(name="toy-1x16", num_layers=1, moe_layers=(0,), num_experts=16, top_k=2, d_model=64,
                     expert_d_ff=128, num_heads=4, num_kv_heads=4, head_dim=16, vocab_size=100)
    original = synth_trace(spec, requests=2, prompt_tokens=0, decode_tokens=150, reuse=0.4, skew=0.8, seed=2)
    fit = fit_synth_params(original)
    assert fit["params"]["layer_corr"] == 0.0 and fit["lru_error_points"] <= 3.0


def test_make_samples_reproduces_bundled_traces():
    sys.path.insert(0, str(REPO / "traces"))
    try:
        import make_samples
    finally:
        sys.path.pop(0)
    for name in make_samples.SAMPLES:
        bundled = read_trace(REPO / "traces" / name)
        made = make_samples.make(name)
        for arr in ARRAYS:
            x, y = getattr(bundled, arr), getattr(made, arr)
            assert (x is None) == (y is None) and (x is None or x.tobytes() == y.tobytes()), (name, arr)
        assert bundled.meta == made.meta
        assert (REPO / "traces" / name).stat().st_size < 5e6
