"""Synthetic routing traces with settable temporal reuse, per-layer popularity skew and layer correlation.

Model (per request, per MoE layer, per token; K = the model's top_k, E = its experts):

* popularity: each layer ranks its experts by a random permutation; rank i has weight (i + 1) ** -skew
  (skew 0 = uniform, larger = a few experts dominate);
* layer correlation: a fresh draw at layer l is, with probability `layer_corr` per slot, forced to the
  successor (a random fixed permutation per layer) of the fresh draw in the same slot at layer l - 1;
* temporal reuse: with probability `reuse` per slot the token keeps the expert the previous token of the
  same request had in that slot at this layer; the other slots are filled, without duplicates, from the
  token's fresh draws (popularity, sampled without replacement, correlated draws first);
* slot order: with probability `slot_shuffle` per (token, layer) the token's K experts are put in a random
  slot order afterwards (otherwise a kept expert keeps its slot). Real routers sort a token's experts by
  gate, and the order changes from token to token; the order matters to an LRU cache smaller than K + 1
  slots per layer (a Mixtral 1-slot cache hits only when a token's first expert was the previous token's
  last one);
* gates: Dirichlet(`gate_alpha`) over the K slots, sorted descending (slot 0 carries the largest gate);
* optional `predict_accuracy`: a `predicted` array whose row l holds layer l+1's experts with each slot
  replaced, with probability 1 - accuracy, by a random other expert (what a speculative next-layer router
  would guess).

Everything is vectorised over requests, layers and slots; the only loop runs over token positions
(reuse makes token t depend on token t - 1), with a handful of small array operations per step.

`fit_synth_params(trace)` fits reuse, skew, layer_corr and slot_shuffle to a trace's measured statistics
(its per-layer LRU curve first); `synth_like(trace, ...)` generates a new trace with the fitted parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simmoe.errors import InputError
from simmoe.models import CATALOG, ModelSpec
from simmoe.models.load import load_model
from simmoe.trace.format import Trace, make_meta, validate
from simmoe.validation import check_memory

SYNTH_SOURCE = "synthetic (simmoe.trace.synth): generated, not captured from a real model"

# Tuned so that the per-layer LRU curve (12.5/25/50/75% of each layer's experts, cold start) lands within
# 3 points of the real captures in REFERENCE-FIGURES.md, measured on traces of the reference's shape
# (Mixtral: 4 requests x 146 decode tokens, seeds 0-3; DeepSeek: one 20,000-token stream); reuse and
# successor recall land within 1 and 3 points. Popularity does not: the generator has only global
# popularity, so matching DeepSeek's steep large-cache curve needs more global skew (top eighth ~36% of
# activations) than the real trace's ~20%. Measured curves: traces/README.md.
PRESETS: dict[str, dict[str, float]] = {
    "deepseek-v2-lite-like": {"reuse": 0.13, "skew": 1.3, "layer_corr": 0.8, "slot_shuffle": 0.5},
    "mixtral-like": {"reuse": 0.18, "skew": 0.6, "layer_corr": 0.3, "slot_shuffle": 0.5},
}

_BIG = np.float32(1e30)


def _resolve_model(model: str | Path | ModelSpec) -> tuple[ModelSpec, dict[str, Any]]:
    """The spec (a catalog name, a config.json or spec .yaml path, a ModelSpec) and how the trace names it: by
    catalog name, or embedded (meta.model_spec) when the catalog does not hold it."""
    spec = load_model(model)
    if CATALOG.get(spec.name) == spec:
        return spec, {"model": spec.name}
    return spec, {"model_spec": spec}


def _per_request(value: int | Sequence[int], requests: int, name: str) -> np.ndarray:
    a = np.asarray(value)
    if a.ndim == 0:
        a = np.full(requests, a)
    if a.shape != (requests,) or a.dtype.kind not in "iu":
        raise InputError("synth", name, f"must be an integer or {requests} integers, got {value!r}")
    if (a < 0).any():
        raise InputError("synth", name, f"must be >= 0, got {value!r}")
    return a.astype(np.int64)


def _check_prob(x: float, name: str) -> float:
    x = float(x)
    if not 0.0 <= x <= 1.0:
        raise InputError("synth", name, f"must be in [0, 1], got {x}")
    return x


def synth_trace(
    model: str | Path | ModelSpec,
    requests: int = 4,
    prompt_tokens: int | Sequence[int] = 32,
    decode_tokens: int | Sequence[int] = 128,
    reuse: float = 0.2,
    skew: float = 0.6,
    layer_corr: float = 0.5,
    seed: int = 0,
    arrivals: float | Sequence[float] | None = None,
    gate_alpha: float = 1.0,
    predict_accuracy: float | None = None,
    gates: bool = True,
    slot_shuffle: float = 0.0,
) -> Trace:
    """A synthetic trace (see the module doc for the model). Same arguments, same arrays, bit for bit.

    prompt_tokens / decode_tokens: per request (int, or one int per request). arrivals: None (no
    arrival_s array), a rate in requests/s (Poisson process, first request at 0 s), or R arrival times."""
    spec, model_fields = _resolve_model(model)
    if int(requests) != requests or requests < 1:
        raise InputError("synth", "requests", f"must be an integer >= 1, got {requests!r}")
    requests = int(requests)
    reuse = _check_prob(reuse, "reuse")
    layer_corr = _check_prob(layer_corr, "layer_corr")
    slot_shuffle = _check_prob(slot_shuffle, "slot_shuffle")
    skew = float(skew)
    if not np.isfinite(skew) or skew < 0:
        raise InputError("synth", "skew", f"must be >= 0, got {skew}")
    if not (np.isfinite(gate_alpha) and gate_alpha > 0):
        raise InputError("synth", "gate_alpha", f"must be > 0, got {gate_alpha}")
    if predict_accuracy is not None:
        predict_accuracy = _check_prob(predict_accuracy, "predict_accuracy")
    prompt = _per_request(prompt_tokens, requests, "prompt_tokens")
    decode = _per_request(decode_tokens, requests, "decode_tokens")
    lens = prompt + decode
    if (lens == 0).any():
        raise InputError("synth", "prompt_tokens", "every request needs at least one token")

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError("synth", "seed", f"must be an integer >= 0, got {seed!r}")

    L, E, K = spec.num_moe_layers, spec.num_experts, spec.top_k
    R, T = requests, int(lens.max())
    # the generator holds [T * R, L, K] int64 draws a few times over and one [T * R, E] score row per layer
    check_memory(T * R * (4 * 8 * L * K + 8 * E), "synth", f"{R:,} requests of up to {T:,} tokens of "
                 f"{spec.name}")
    rng = np.random.default_rng(seed)

    # popularity (log weights) and successor permutations, per layer
    ranks = np.argsort(rng.random((L, E)), axis=1)  # rank of each expert in its layer
    logp = (-skew * np.log1p(ranks)).astype(np.float32)
    succ = np.argsort(rng.random((L, E)), axis=1)

    # fresh draws: K distinct experts per (token position, request, layer), sampled without replacement
    # proportionally to popularity (Gumbel top-k), correlated draws forced to the front
    M = T * R
    cand = np.empty((M, L, K), np.int64)
    rows = np.arange(M)[:, None]
    prio = np.float32(K) - np.arange(K, dtype=np.float32)
    for layer in range(L):
        g = rng.gumbel(size=(M, E)).astype(np.float32) + logp[layer]
        if layer > 0 and layer_corr > 0:
            force = rng.random((M, K)) < layer_corr
            ri, ji = np.nonzero(force)
            g[ri, succ[layer][cand[ri, layer - 1, ji]]] = _BIG + prio[ji]
        top = np.argpartition(-g, K - 1, axis=1)[:, :K] if K < E else np.tile(np.arange(E), (M, 1))
        order = np.argsort(-g[rows, top], axis=1, kind="stable")
        cand[:, layer] = np.take_along_axis(top, order, axis=1)
    cand = cand.reshape(T, R * L, K)

    # temporal reuse: slot by slot, keep the previous token's expert or take the next unused fresh draw
    keep = rng.random((T, R * L, K)) < reuse
    keep[0] = False
    fill_idx = np.cumsum(~keep, axis=2) - 1
    np.maximum(fill_idx, 0, out=fill_idx)
    A = np.empty((T, R * L, K), np.int64)
    A[0] = cand[0]
    for t in range(1, T):
        prev, kp, c = A[t - 1], keep[t], cand[t]
        kept = np.where(kp, prev, -1)
        used = (c[:, :, None] == kept[:, None, :]).any(axis=2)
        filler = np.take_along_axis(c, np.argsort(used, axis=1, kind="stable"), axis=1)
        A[t] = np.where(kp, prev, np.take_along_axis(filler, fill_idx[t], axis=1))

    # request-major rows, each request cut to its length
    A = A.reshape(T, R, L, K).transpose(1, 0, 2, 3)
    valid = np.arange(T)[None, :] < lens[:, None]  # [R, T]
    experts = A[valid].astype(np.int16)
    n = experts.shape[0]
    request = np.repeat(np.arange(R, dtype=np.int32), lens)
    pos = np.arange(n) - np.repeat(np.cumsum(lens) - lens, lens)
    phase = (pos >= np.repeat(prompt, lens)).astype(np.int8)

    if slot_shuffle > 0 and K > 1:
        # own stream, so slot_shuffle = 0 leaves every other draw (and old traces) unchanged
        srng = np.random.default_rng([int(seed), 1])
        do = srng.random((n, L)) < slot_shuffle
        perm = np.argsort(srng.random((n, L, K)), axis=2)
        experts = np.where(do[:, :, None], np.take_along_axis(experts, perm, axis=2), experts)

    gate_arr = None
    if gates:
        gsamp = rng.gamma(gate_alpha, size=(n, L, K))
        gsamp /= gsamp.sum(axis=2, keepdims=True)
        gate_arr = -np.sort(-gsamp, axis=2).astype(np.float32)

    predicted = None
    if predict_accuracy is not None:
        predicted = np.full((n, L, K), -1, np.int16)
        if L > 1:
            nxt = experts[:, 1:].astype(np.int64)
            wrong = rng.random(nxt.shape) >= predict_accuracy
            # a random expert that is not among the layer's actual ones (u-th non-member)
            v = rng.integers(0, E - K, size=nxt.shape) if E > K else np.zeros(nxt.shape, np.int64)
            srt = np.sort(nxt, axis=2)
            for j in range(K):
                v += v >= srt[:, :, j:j + 1]
            guess = np.where(wrong, v, nxt) if E > K else nxt
            dup = np.zeros(guess.shape, bool)
            for j in range(1, K):
                dup[:, :, j] = (guess[:, :, j:j + 1] == guess[:, :, :j]).any(axis=2)
            predicted[:, :-1] = np.where(dup, -1, guess).astype(np.int16)

    arrival_s = None
    if arrivals is not None:
        a = np.asarray(arrivals, dtype=np.float64)
        if a.ndim == 0:
            rate = float(a)
            if not (np.isfinite(rate) and rate > 0):
                raise InputError("synth", "arrivals", f"rate must be > 0 requests/s, got {rate}")
            gaps = rng.exponential(1.0 / rate, size=R)
            a = np.concatenate([[0.0], np.cumsum(gaps[:-1])])
        if a.shape != (R,) or not np.isfinite(a).all() or (a < 0).any():
            raise InputError("synth", "arrivals", f"must be a rate or {R} finite times >= 0")
        arrival_s = a.astype(np.float64)

    params = {"requests": R, "prompt_tokens": _plain(prompt_tokens), "decode_tokens": _plain(decode_tokens),
              "reuse": reuse, "skew": skew, "layer_corr": layer_corr, "slot_shuffle": slot_shuffle,
              "seed": int(seed),
              "arrivals": _plain(arrivals), "gate_alpha": float(gate_alpha),
              "predict_accuracy": predict_accuracy}
    meta = make_meta(source=SYNTH_SOURCE, synthetic=True, generator="simmoe.trace.synth.synth_trace",
                     generator_params=params, **model_fields)
    trace = Trace(experts=experts, request=request, phase=phase, meta=meta, gates=gate_arr,
                  arrival_s=arrival_s, predicted=predicted, source="<synthetic>")
    validate(trace)
    return trace


def _plain(x: Any) -> Any:
    if x is None or isinstance(x, (int, float, str)):
        return x
    return np.asarray(x).tolist()


def preset_params(name: str) -> dict[str, float]:
    """The generator parameters of a preset (a copy)."""
    try:
        return dict(PRESETS[name])
    except KeyError:
        raise InputError("synth", "preset", f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None


# ---- fitting the generator to a trace -----------------------------------------------------------------
FIT_PARAMS = ("reuse", "skew", "layer_corr", "slot_shuffle")
_FIT_BOUNDS = {"reuse": (0.0, 0.95), "skew": (0.0, 3.0), "layer_corr": (0.0, 1.0), "slot_shuffle": (0.0, 1.0)}
# Weights of the fitted statistics: the LRU curve is what the fit must reproduce; reuse, successor recall
# and slot order pin down the parameters that the curve alone leaves loose.
_FIT_WEIGHTS = {"lru": 1.0, "reuse": 1.0, "successor_recall": 0.5, "reuse_same_slot": 0.5}


def _model_of(trace: Trace) -> str | ModelSpec:
    """The catalog name when the trace uses a whole catalog model, else its (possibly truncated) spec."""
    spec = trace.spec
    name = trace.meta.get("model")
    if trace.meta.get("model_spec") is None and isinstance(name, str) and CATALOG.get(name) == spec:
        return name
    return spec


def fit_stats(trace: Trace, fractions: Sequence[float] = (0.125, 0.25, 0.5, 0.75)) -> dict[str, Any]:
    """The statistics `fit_synth_params` matches: LRU hit rates at `fractions`, reuse, same-slot reuse,
    successor recall, and (reported, not fitted) the top-eighth popularity share."""
    from simmoe.trace import stats

    return {"lru": [c["hit_rate"] for c in stats.lru_curve(trace, fractions)],
            **{k: v for k, v in stats.temporal_reuse(trace).items() if k in ("reuse", "reuse_same_slot")},
            "successor_recall": stats.next_layer_predictability(trace)["successor_recall"],
            "top_eighth_share": stats.popularity(stats.expert_counts(trace))["top_eighth_share"]}


def request_shapes(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """(prompt rows, decode rows) per request, in request-id order."""
    starts, stops = trace.request_starts, trace.request_stops
    prefill_before = np.concatenate(([0], np.cumsum(trace.phase == 0)))
    prompt = prefill_before[stops] - prefill_before[starts]
    return prompt.astype(np.int64), (stops - starts - prompt).astype(np.int64)


def _cap_shapes(prompt: np.ndarray, decode: np.ndarray, max_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The first requests' shapes, cut so that they hold at most max_rows rows (at least one request)."""
    lens = prompt + decode
    cum = np.cumsum(lens)
    keep = max(1, int(np.searchsorted(cum, max_rows, side="right")))
    prompt, decode = prompt[:keep].copy(), decode[:keep].copy()
    left = max_rows - int(cum[keep - 2]) if keep >= 2 else max_rows
    if prompt[-1] + decode[-1] > left:
        prompt[-1] = min(prompt[-1], max(left // 4, 0) if decode[-1] else left)
        decode[-1] = max(left - prompt[-1], 0 if prompt[-1] else 1)
    return prompt, decode


def fit_synth_params(trace: Trace, max_rows: int = 2500, seed: int = 0, max_evals: int = 60,
                     fractions: Sequence[float] = (0.125, 0.25, 0.5, 0.75)) -> dict[str, Any]:
    """Fits the generator's reuse, skew, layer_corr and slot_shuffle to `trace`.

    Each evaluation generates a trace of the same model and request shapes (the first requests, at most
    `max_rows` rows, so cold-start effects match) with a fixed seed (common random numbers keep the
    objective smooth enough for finite differences) and measures `fit_stats`; scipy's bounded
    least_squares matches the LRU curve, reuse, successor recall and same-slot reuse.
    Returns {"params", "target", "fitted", "lru_error_points" (max |difference| over the curve, in
    percentage points), "evaluations"}."""
    from scipy.optimize import least_squares

    spec = trace.spec
    K, L, E = trace.top_k, trace.num_layers, spec.num_experts
    target = fit_stats(trace, fractions)
    if not (trace.experts >= 0).any():
        raise InputError(trace.source, "experts", "no expert is routed (every id is -1): nothing to fit")
    prompt, decode = _cap_shapes(*request_shapes(trace), max_rows)
    model = _model_of(trace)

    free = ["reuse", "skew"]
    fixed: dict[str, float] = {"layer_corr": 0.0, "slot_shuffle": 0.0}
    keys = ["reuse"]
    if L > 1:
        free.append("layer_corr")
        keys.append("successor_recall")
    if K > 1:
        free.append("slot_shuffle")
        if not np.isnan(target["reuse_same_slot"]):
            keys.append("reuse_same_slot")
    undefined = [k for k in ("lru", *keys) if np.isnan(np.asarray(target[k], dtype=float)).any()]
    if undefined:  # e.g. a one-row trace has no reuse: least_squares cannot start from NaN
        raise InputError(trace.source, "experts", f"too little routing to fit: its {undefined[0]} statistic is "
                                                  "undefined (it needs requests of two or more rows that route "
                                                  "experts)")
    memo: dict[tuple[float, ...], dict[str, Any]] = {}

    def measure(x: np.ndarray) -> dict[str, Any]:
        key = tuple(np.round(x, 6))
        if key not in memo:
            params = {**fixed, **dict(zip(free, key, strict=True))}
            t = synth_trace(model, requests=prompt.size, prompt_tokens=prompt, decode_tokens=decode,
                            seed=seed, gates=False, **params)
            memo[key] = fit_stats(t, fractions)
        return memo[key]

    def residuals(x: np.ndarray) -> np.ndarray:
        got = measure(x)
        r = [_FIT_WEIGHTS["lru"] * (np.asarray(got["lru"]) - np.asarray(target["lru"]))]
        for k in keys:
            g, t = got[k], target[k]
            r.append([_FIT_WEIGHTS[k] * ((0.0 if np.isnan(g) else g) - t)])
        return np.concatenate(r)

    # start: reuse from the measured reuse above what uniform routing gives, mild skew, mid correlations
    uni = K / E
    r0 = float(np.clip((target["reuse"] - uni) / max(1 - uni, 1e-9), 0.0, 0.9))
    x0 = np.array([{"reuse": r0, "skew": 0.5, "layer_corr": 0.5, "slot_shuffle": 0.5}[p] for p in free])
    lo = np.array([_FIT_BOUNDS[p][0] for p in free])
    hi = np.array([_FIT_BOUNDS[p][1] for p in free])
    least_squares(residuals, x0, bounds=(lo, hi), diff_step=0.05, x_scale=0.3, max_nfev=max_evals,
                  xtol=1e-3, ftol=1e-4)
    # least_squares returns its last accepted point; keep whichever evaluated point was best
    best = min(memo, key=lambda k: float(np.sum(residuals(np.array(k)) ** 2)))
    params = {**fixed, **{p: float(v) for p, v in zip(free, best, strict=True)}}
    fitted = memo[best]
    err = 100 * float(np.max(np.abs(np.asarray(fitted["lru"]) - np.asarray(target["lru"]))))
    return {"params": params, "target": target, "fitted": fitted, "lru_error_points": err,
            "evaluations": len(memo), "sample_rows": int((prompt + decode).sum())}


def synth_like(trace: Trace, requests: int | None = None, prompt_tokens: int | Sequence[int] | None = None,
               decode_tokens: int | Sequence[int] | None = None, seed: int = 0,
               fit: dict[str, Any] | None = None, **fit_kw: Any) -> tuple[Trace, dict[str, Any]]:
    """A synthetic trace with the statistics of `trace`: fits the generator (`fit_synth_params`, or a
    given `fit`) and generates `requests` requests (default: as many as the trace has). Request shapes
    default to the trace's own (cycled when more requests are asked for). Returns (trace, fit)."""
    if fit is None:
        fit = fit_synth_params(trace, **fit_kw)
    prompt0, decode0 = request_shapes(trace)
    R = int(requests) if requests is not None else prompt0.size
    if R < 1:
        raise InputError("synth", "requests", f"must be >= 1, got {requests}")
    idx = np.arange(R) % prompt0.size
    prompt = prompt0[idx] if prompt_tokens is None else prompt_tokens
    decode = decode0[idx] if decode_tokens is None else decode_tokens
    model = _model_of(trace)
    out = synth_trace(model, requests=R, prompt_tokens=prompt, decode_tokens=decode, seed=seed,
                      gates=trace.gates is not None, **fit["params"])
    out.meta["fitted_to"] = {"file": trace.source, "lru_error_points": round(fit["lru_error_points"], 3),
                             "target": fit["target"], "fitted": fit["fitted"]}
    return out, fit
