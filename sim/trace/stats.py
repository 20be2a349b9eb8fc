"""Statistics of a routing trace: popularity skew, temporal reuse, LRU hit-rate curve, next-layer
predictability. The same figures as /work/shared/REFERENCE-FIGURES.md reports for real captures.

Conventions (shared with the simulator): per-layer scope, requests replayed in id order, rows in order,
slots in order, -1 slots skipped, cold start, one cache for the whole run (not reset between requests).

The LRU curve is computed exactly from LRU stack distances (LRU is a stack algorithm: an access hits a
cache of C slots iff fewer than C distinct other experts were used in its layer since its previous use), so
every capacity comes from one pass. `reference_lru_hits` is the plain OrderedDict LRU it is tested against.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from simmoe.trace.format import Trace

DEFAULT_FRACTIONS = (0.125, 0.25, 0.5, 0.75)
_BLOCK_ELEMS = 1 << 23  # elements per temporary, bounds memory on big traces


def capacity_for(fraction: float, num_experts: int) -> int:
    """Cache slots per layer for a fraction of the layer's experts, rounded half up."""
    return int(math.floor(fraction * num_experts + 0.5))


def _replay_experts(trace: Trace) -> np.ndarray:
    order = trace.replay_order
    if order.size and order[0] == 0 and order[-1] == order.size - 1 and order.size == trace.num_rows:
        return trace.experts
    return trace.experts[order]


# ---- LRU ----------------------------------------------------------------------------------------------
def stack_distance_histogram(trace: Trace) -> np.ndarray:
    """int64 [L, E + 1]: column d < E counts accesses with LRU stack distance d (d distinct other experts of
    the layer used since this expert's previous use); column E counts first uses (cold misses).
    An LRU cache of C slots per layer hits exactly the accesses with d < C."""
    ex = _replay_experts(trace)
    n, L, K = ex.shape
    E = trace.num_experts
    hist = np.zeros((L, E + 1), np.int64)
    if n == 0:
        return hist
    if n * K >= 2**31 - 1:
        raise ValueError("trace too long for int32 time stamps")
    last = np.full((L, E), -1, np.int32)  # time of each expert's latest use, per layer
    rows_per_block = max(1, _BLOCK_ELEMS // (L * E * K))
    for r0 in range(0, n, rows_per_block):
        blk = ex[r0:r0 + rows_per_block]
        T = blk.shape[0] * K
        X = np.ascontiguousarray(blk.transpose(1, 0, 2)).reshape(L, T)  # time i = row * K + slot
        # M[l, y, i] = time of the latest use of y at layer l before time r0 * K + i (i = 0..T)
        M = np.full((L, E, T + 1), -1, np.int32)
        M[:, :, 0] = last
        li, ii = np.nonzero(X >= 0)
        xi = X[li, ii].astype(np.int64)
        M[li, xi, ii + 1] = (r0 * K + ii).astype(np.int32)
        np.maximum.accumulate(M, axis=2, out=M)
        prev = M[li, xi, ii]
        P = np.full((L, T), np.iinfo(np.int32).max, np.int32)
        P[li, ii] = prev
        D = (M[:, :, :T] > P[:, None, :]).sum(axis=1)  # [L, T]: distinct others since the previous use
        d = D[li, ii]
        d[prev < 0] = E
        hist += np.bincount(li.astype(np.int64) * (E + 1) + d, minlength=hist.size).reshape(hist.shape)
        last = M[:, :, T].copy()
    return hist


def lru_curve(trace: Trace, fractions: Sequence[float] = DEFAULT_FRACTIONS,
              hist: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Per-layer LRU hit rate for caches of round(fraction * E) slots per layer.

    One dict per fraction: fraction, capacity, hits, accesses, hit_rate (over all layers),
    per_layer_hit_rate (list of L floats; NaN for a layer with no accesses)."""
    if hist is None:
        hist = stack_distance_histogram(trace)
    E = hist.shape[1] - 1
    acc_l = hist.sum(axis=1)
    cum = np.concatenate([np.zeros((hist.shape[0], 1), np.int64), np.cumsum(hist[:, :E], axis=1)], axis=1)
    out = []
    for f in fractions:
        if not 0 <= f <= 1:
            raise ValueError(f"cache fraction {f} not in [0, 1]")
        c = capacity_for(f, E)
        hits_l = cum[:, c]
        with np.errstate(invalid="ignore", divide="ignore"):
            per = np.where(acc_l > 0, hits_l / np.maximum(acc_l, 1), np.nan)
        total = int(acc_l.sum())
        out.append({"fraction": float(f), "capacity": c, "hits": int(hits_l.sum()), "accesses": total,
                    "hit_rate": float(hits_l.sum() / total) if total else float("nan"),
                    "per_layer_hit_rate": [float(x) for x in per]})
    return out


def lru_hits(trace: Trace, capacity: int) -> np.ndarray:
    """Hits per layer (int64 [L]) of a per-layer LRU cache with `capacity` slots."""
    hist = stack_distance_histogram(trace)
    E = hist.shape[1] - 1
    return hist[:, :min(max(capacity, 0), E)].sum(axis=1)


def reference_lru_hits(trace: Trace, capacity: int) -> np.ndarray:
    """The plain reference: one OrderedDict LRU per layer, requests in id order, rows in order, slots in
    order, -1 skipped, cold start. Hits per layer (int64 [L]). Slow (Python); for checking."""
    ex = _replay_experts(trace)
    n, L, K = ex.shape
    hits = np.zeros(L, np.int64)
    if capacity <= 0:
        return hits
    caches = [OrderedDict() for _ in range(L)]
    rows = ex.tolist()
    for row in rows:
        for layer, slots in enumerate(row):
            cache = caches[layer]
            for e in slots:
                if e < 0:
                    continue
                if e in cache:
                    cache.move_to_end(e)
                    hits[layer] += 1
                else:
                    cache[e] = None
                    if len(cache) > capacity:
                        cache.popitem(last=False)
    return hits


# ---- popularity, reuse, next layer ----------------------------------------------------------------------
def expert_counts(trace: Trace) -> np.ndarray:
    """int64 [L, E]: activations of each expert per layer."""
    ex = trace.experts
    n, L, K = ex.shape
    E = trace.num_experts
    counts = np.zeros(L * E, np.int64)
    step = max(1, _BLOCK_ELEMS // (L * K))
    offs = (np.arange(L, dtype=np.int64) * E)[None, :, None]
    for s in range(0, n, step):
        b = ex[s:s + step].astype(np.int64)
        idx = (b + offs)[b >= 0]
        counts += np.bincount(idx, minlength=L * E)
    return counts.reshape(L, E)


def popularity(counts: np.ndarray) -> dict[str, Any]:
    """Per-layer skew: share of activations taken by the most popular eighth of the experts, and the
    normalised entropy of the layer's expert distribution (1 = uniform). Means skip empty layers."""
    L, E = counts.shape
    n8 = max(1, capacity_for(1 / 8, E))
    tot = counts.sum(axis=1)
    ok = tot > 0
    srt = -np.sort(-counts, axis=1)
    share = np.where(ok, srt[:, :n8].sum(axis=1) / np.maximum(tot, 1), np.nan)
    p = counts / np.maximum(tot, 1)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    ent = np.where(ok, h / math.log(E) if E > 1 else 1.0, np.nan)
    return {
        "top_eighth_experts": n8,
        "top_eighth_share": float(np.nanmean(share)) if ok.any() else float("nan"),
        "top_eighth_share_uniform": n8 / E,
        "entropy": float(np.nanmean(ent)) if ok.any() else float("nan"),
        "per_layer_top_eighth_share": [float(x) for x in share],
        "per_layer_entropy": [float(x) for x in ent],
    }


def temporal_reuse(trace: Trace) -> dict[str, Any]:
    """Fraction of a token's experts (same layer) that the previous token of the same request also used,
    over all tokens that have a previous token; `uniform` = K / E, what independent uniform routing gives.
    `reuse_same_slot`: of those reused experts, the fraction sitting in the same slot as before."""
    ex, req = trace.experts, trace.request
    n, L, K = ex.shape
    E = trace.num_experts
    same = np.flatnonzero(req[1:] == req[:-1]) + 1  # rows whose previous row is the same request's
    overlap = 0
    total = 0
    per_layer = np.zeros(L, np.int64)
    per_layer_tot = np.zeros(L, np.int64)
    same_slot = 0
    step = max(1, _BLOCK_ELEMS // (L * K * K))
    for s in range(0, same.size, step):
        rows = same[s:s + step]
        cur, prev = ex[rows], ex[rows - 1]
        valid = cur >= 0
        hit = (cur[:, :, :, None] == prev[:, :, None, :]).any(axis=3) & valid
        per_layer += hit.sum(axis=(0, 2))
        per_layer_tot += valid.sum(axis=(0, 2))
        same_slot += int(((cur == prev) & valid).sum())
    overlap, total = int(per_layer.sum()), int(per_layer_tot.sum())
    return {
        "reuse": overlap / total if total else float("nan"),
        # of the reused experts, the fraction in the same slot as in the previous token (slot order churn)
        "reuse_same_slot": same_slot / overlap if overlap else float("nan"),
        "reuse_uniform": K / E,
        "per_layer_reuse": [float(a / b) if b else float("nan") for a, b in zip(per_layer, per_layer_tot, strict=True)],
    }


def successor_table(trace: Trace, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(table, counts): counts int64 [L-1, E, E] = tokens using expert e at layer l and e' at l+1;
    table int16 [L-1, E, k] = the k (default top_k) most frequent successors of e (ties: lower id first),
    -1 where fewer than k successors were ever seen."""
    ex = trace.experts
    n, L, K = ex.shape
    E = trace.num_experts
    k = K if k is None else k
    counts = np.zeros((max(L - 1, 0)) * E * E, np.int64)
    if L >= 2:
        offs = (np.arange(L - 1, dtype=np.int64) * E * E)[None, :, None, None]
        step = max(1, _BLOCK_ELEMS // ((L - 1) * K * K))
        for s in range(0, n, step):
            b = ex[s:s + step].astype(np.int64)
            a, c = b[:, :-1, :, None], b[:, 1:, None, :]
            idx = offs + a * E + c
            idx = idx[(a >= 0) & (c >= 0)]
            counts += np.bincount(idx, minlength=counts.size)
    counts = counts.reshape(max(L - 1, 0), E, E)
    order = np.argsort(-counts, axis=2, kind="stable")[:, :, :k]
    top = np.take_along_axis(counts, order, axis=2)
    table = np.where(top > 0, order, -1).astype(np.int16)
    return table, counts


def next_layer_predictability(trace: Trace, k: int | None = None) -> dict[str, Any]:
    """Successor-table predictability: fit `successor_table` on the trace, then for every token and layer
    l predict layer l+1's experts as the union of the successors of the token's experts at l; recall =
    fraction of layer l+1's actual experts inside that union (fitted and scored on the same data).
    Also the mean union size and the recall a random set of that size would get (size / E)."""
    ex = trace.experts
    n, L, K = ex.shape
    E = trace.num_experts
    if L < 2:
        return {"successor_recall": float("nan"), "successor_predicted": float("nan"),
                "successor_uniform": float("nan")}
    table, _ = successor_table(trace, k)
    # column E is a dummy that absorbs -1 (missing) entries
    tab = np.concatenate([table.astype(np.int64), np.full((L - 1, 1, table.shape[2]), -1)], axis=1)
    tab[tab < 0] = E
    hits = total = predicted = 0
    step = max(1, _BLOCK_ELEMS // (E + 1 + K * table.shape[2]))
    for s in range(0, n, step):
        b = ex[s:s + step].astype(np.int64)
        m = b.shape[0]
        rows = np.arange(m)[:, None]
        for layer in range(L - 1):
            cur = b[:, layer]
            cur = np.where(cur >= 0, cur, E)
            pred = tab[layer][cur].reshape(m, -1)  # [m, K * k]
            mask = np.zeros((m, E + 1), bool)
            mask[rows, pred] = True
            mask[:, E] = False
            nxt = b[:, layer + 1]
            valid = nxt >= 0
            hits += int((mask[rows, np.where(valid, nxt, E)] & valid).sum())
            total += int(valid.sum())
            predicted += int(mask.sum())
    tokens = n * (L - 1)
    mean_pred = predicted / tokens if tokens else float("nan")
    return {"successor_recall": hits / total if total else float("nan"),
            "successor_predicted": mean_pred, "successor_uniform": mean_pred / E}


def predicted_recall(trace: Trace) -> float | None:
    """Recall of the trace's own `predicted` array (row l = prediction for layer l+1), or None."""
    p = trace.predicted
    if p is None:
        return None
    ex = trace.experts
    nxt = ex[:, 1:]
    pr = p[:, :-1]
    valid = nxt >= 0
    hit = (nxt[:, :, :, None] == pr[:, :, None, :]).any(axis=3) & valid
    tot = int(valid.sum())
    return float(hit.sum() / tot) if tot else float("nan")


# ---- summary ------------------------------------------------------------------------------------------
def trace_stats(trace: Trace, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> dict[str, Any]:
    """All statistics as a JSON-friendly dict (see the module doc and REFERENCE-FIGURES.md)."""
    ex = trace.experts
    n, L, K = ex.shape
    spec = trace.spec
    E = spec.num_experts
    valid = int((ex >= 0).sum())
    decode = int((trace.phase == 1).sum())
    counts = expert_counts(trace)
    hist = stack_distance_histogram(trace)
    out: dict[str, Any] = {
        "file": trace.source,
        "format": trace.meta.get("format"),
        "model": spec.name,
        "source": trace.meta.get("source", ""),
        "synthetic": "synthetic" in str(trace.meta.get("source", "")).lower(),
        "requests": trace.num_requests,
        "rows": n,
        "prefill_rows": n - decode,
        "decode_rows": decode,
        "layers": L,
        "model_moe_layers": trace.model_spec.num_moe_layers,  # more than `layers`: a partial capture
        "top_k": spec.top_k,
        "slots": K,  # expert slots per (row, layer); beyond top_k they only pad with -1
        "num_experts": E,
        "activations": valid,
        "null_slots": 1.0 - valid / (n * L * K) if n * L * K else float("nan"),
        "has_gates": trace.gates is not None,
        "has_arrivals": trace.arrival_s is not None,
        "has_predicted": trace.predicted is not None,
    }
    if trace.arrival_s is not None and trace.arrival_s.size:
        out["arrival_span_s"] = float(trace.arrival_s.max() - trace.arrival_s.min())
    out.update(popularity(counts))
    out.update(temporal_reuse(trace))
    out["lru"] = lru_curve(trace, fractions, hist=hist)
    out.update(next_layer_predictability(trace))
    out["predicted_recall"] = predicted_recall(trace)
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def format_stats(stats: dict[str, Any]) -> str:
    """A human summary of `trace_stats` output."""
    s = stats
    lines = [
        f"trace      {s['file']}",
        f"model      {s['model']}  ({s['layers']} MoE layers x {s['num_experts']} experts, top-{s['top_k']})",
        f"source     {s['source'] or '(not recorded)'}" + ("  [SYNTHETIC]" if s.get("synthetic") else ""),
        f"requests   {s['requests']}   rows {s['rows']} (prefill {s['prefill_rows']}, decode {s['decode_rows']})",
        f"slots      {s['activations']} activations, {_pct(s['null_slots'])} empty (-1)"
        + f"   gates: {'yes' if s['has_gates'] else 'no'}   arrivals: {'yes' if s['has_arrivals'] else 'no'}"
        + f"   predicted: {'yes' if s['has_predicted'] else 'no'}",
        f"popularity top {s['top_eighth_experts']}/{s['num_experts']} experts take "
        f"{_pct(s['top_eighth_share'])} of activations per layer (uniform {_pct(s['top_eighth_share_uniform'])});"
        f" normalised entropy {s['entropy']:.3f}",
        f"reuse      {_pct(s['reuse'])} of a token's experts were used by the previous token at that layer "
        f"(uniform {_pct(s['reuse_uniform'])}); {_pct(s.get('reuse_same_slot'))} of them in the same slot",
        "LRU        per-layer cache, cold start: "
        + "  ".join(f"{_pct(c['fraction'])} ({c['capacity']} slots) {_pct(c['hit_rate'])}" for c in s["lru"]),
        f"next layer successor table recalls {_pct(s['successor_recall'])} of the next layer's experts "
        f"(predicts {s['successor_predicted']:.1f} experts; random sets of that size: "
        f"{_pct(s['successor_uniform'])})",
    ]
    if s.get("model_moe_layers", s["layers"]) > s["layers"]:
        lines.append(f"note       the trace covers the first {s['layers']} of the model's {s['model_moe_layers']} MoE "
                     f"layers: replay simulates those layers only (the time and memory of a cut-down model)")
    if s.get("predicted_recall") is not None:
        lines.append(f"predicted  the trace's own next-layer predictions recall {_pct(s['predicted_recall'])}")
    return "\n".join(lines)
