"""Adaptive top-k (AdaMoE, dynamic top-p routing): a token keeps its highest-gate experts until their gate
mass reaches `top_p` (at least `min_k` of them); the others are dropped (-1 slots). Fewer experts are loaded
and computed; fidelity is the gate mass the kept experts carry (gates renormalised per token and layer)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from simmoe.errors import InputError
from simmoe.policies.base import Options, RoutingPolicy


class AdaptiveKOptions(Options):
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    min_k: int = Field(1, ge=1)


class AdaptiveK(RoutingPolicy):
    name = "adaptive-k"
    summary = "drop a token's low-gate experts beyond gate mass top_p (AdaMoE / top-p routing); reports fidelity"
    reference = "Zeng et al. 2024, AdaMoE; Huang et al. 2024, Harder Tasks Need More Experts: Dynamic Routing"
    Options = AdaptiveKOptions

    def reroute(self, experts: np.ndarray, gates: np.ndarray | None) -> tuple[np.ndarray, float]:
        if gates is None:
            raise InputError(f"policy {self.name}", "gates", "the trace has no gate weights to route by")
        valid = experts >= 0
        g = np.where(valid, np.nan_to_num(gates, nan=0.0), 0.0).astype(np.float64)
        total = g.sum(axis=-1, keepdims=True)
        p = np.divide(g, total, out=np.zeros_like(g), where=total > 0)
        order = np.argsort(-p, axis=-1, kind="stable")
        ps = np.take_along_axis(p, order, axis=-1)
        before = np.cumsum(ps, axis=-1) - ps  # mass of the experts ranked above
        rank = np.arange(experts.shape[-1])
        keep_sorted = (before < self.options.top_p - 1e-9) | (rank < self.options.min_k)
        keep = np.empty_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        keep &= valid
        out = np.where(keep, experts, -1).astype(experts.dtype)
        denom = float(p.sum())
        fidelity = float((p * keep).sum() / denom) if denom else 1.0
        return out, fidelity
