"""HybriMoE's impact-driven prefetch: after a layer's routing is known, copy ahead the experts of the next
`layers` layers whose presence on the GPU would save the most time.

Source: Zhong et al., "HybriMoE: Hybrid CPU-GPU Scheduling and Cache Management for Efficient MoE
Inference", DAC 2025 (arXiv 2504.05897): "an impact-driven prefetching mechanism that simulates potential
gains and prioritizes preloading experts from subsequent layers with higher expected benefits". Its code
(github.com/PKU-SEC-Lab/HybriMoE, `ktransformers/operators/experts.py`) prefetches, after each decode layer,
the top `prefetch_size` experts of the next layer by their MRS priority score (a decayed router score).

The paper gives no formula; the rule here is the expected time a prefetch saves, net of what a wrong one
costs, per candidate expert e of a target layer:

    impact(e) = P(e) * saving(n(e)) - (1 - P(e)) * copy,   saving(n) = max(min(cpu(n), copy + gpu(n)) - gpu(n), 0)

- P(e): the chance e is routed when that layer runs. With the trace's `predicted` array (a captured
  speculative gate) the predicted experts of the next layer have P = 1 and the others 0; otherwise an
  exponential moving average of "e was routed" over the layer's past steps (weight `alpha` on the newest),
  learnt online from routing already seen. alpha = 0.1 by default: HybriMoE's MRS weight 0.5 ranks experts
  but overstates P, and the net-gain test needs a calibrated P (bundled DeepSeek trace, first 4 requests,
  row by row: of the experts rated P > 0.5, 27% are routed at the next row with alpha 0.5, 50% with 0.1).
- n(e): the tokens e serves when routed (moving average of its token count / P).
- saving(n): a miss would run where the hybrid schedule puts it, the CPU (cpu(n)) or the GPU after a copy;
  a prefetched expert runs on the GPU (gpu(n)). A prefetch that is not used wastes `copy` of PCIe time
  (demand copies queue behind it). Costs come from the engine's cost model when the engine puts it in
  `view.costs`, else from HybriMoE's own constants (ms: CPU 0.79 + 1.0 x tokens, GPU 0.5, copy
  0.418), under which saving = copy for any n >= 1, so an expert is prefetched when P > 0.5.

Each target layer contributes its top `budget` experts with impact > 0; all proposals are ordered by impact
(nearer layer first on ties). Targets stop at the step's last layer, as in HybriMoE's code (the next
token's layers are not prefetched).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from simmoe.policies.base import Options, PrefetchPolicy, StepView

# HybriMoE's cost constants (its model_cpu_time / model_gpu_time / model_move_time), in microseconds
_CPU_FIXED_US, _CPU_PER_TOKEN_US, _GPU_US, _COPY_US = 790.0, 1000.0, 500.0, 418.0


class ImpactOptions(Options):
    layers: int = Field(2, ge=1, description="next layers considered after each layer")
    budget: int = Field(4, ge=1, description="experts proposed per target layer at most")
    alpha: float = Field(0.1, gt=0.0, le=1.0, description="weight of the newest step in the routing averages")


class ImpactPrefetch(PrefetchPolicy):
    name = "impact"
    summary = "HybriMoE impact-driven prefetch: next layers' experts whose expected time saved beats a wasted copy"
    reference = "Zhong et al. DAC 2025, HybriMoE: Hybrid CPU-GPU Scheduling and Cache Management for MoE"
    Options = ImpactOptions

    def __init__(self, ctx, options) -> None:
        super().__init__(ctx, options)
        shape = (len(ctx.layers), ctx.num_experts)
        self.p = np.zeros(shape)  # moving average of "routed" per (layer, expert)
        self.tok = np.zeros(shape)  # moving average of tokens served (0 when not routed)
        self._saving: dict[int, float] = {}
        self._costs = None

    def _observe(self, layer: int, experts, tokens) -> None:
        a = self.options.alpha
        ex = np.asarray(experts, dtype=np.int64)
        self.p[layer] *= 1.0 - a
        self.tok[layer] *= 1.0 - a
        self.p[layer, ex] += a
        self.tok[layer, ex] += a * np.asarray(tokens, dtype=np.float64)

    def saving_us(self, n: int) -> float:
        """Time a GPU-resident copy of an expert saves over a miss, for n tokens."""
        s = self._saving.get(n)
        if s is None:
            c = self._costs
            if c is None:
                cpu, gpu, copy = _CPU_FIXED_US + _CPU_PER_TOKEN_US * n, _GPU_US, _COPY_US
            else:
                act = c.activation_bytes(n)
                cpu = c.expert_cpu_us(n) + c.d2h_us(act) + c.h2d_us(act, pinned=True)
                gpu, copy = c.expert_gpu_us(n), c.h2d_us(c.expert_bytes)
            s = self._saving[n] = max(min(cpu, copy + gpu) - gpu, 0.0)
        return s

    def copy_us(self) -> float:
        """PCIe time a copy occupies: what a prefetch of an expert that is not routed wastes."""
        c = self._costs
        return _COPY_US if c is None else c.h2d_us(c.expert_bytes)

    def impact(self, target: int, experts: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Expected time saved by having each of `experts` of layer `target` on the GPU."""
        tok = self.tok[target, experts]
        n = np.maximum(np.rint(tok / np.maximum(self.p[target, experts], 1e-12)), 1).astype(np.int64)
        uniq, inv = np.unique(n, return_inverse=True)
        saving = np.array([self.saving_us(int(x)) for x in uniq])[inv]
        return p * saving - (1.0 - p) * self.copy_us()

    def propose(self, view: StepView, layer: int):
        costs = view.costs
        if costs is not self._costs:
            self._costs, self._saving = costs, {}
        self._observe(layer, view.experts_by_layer[layer], view.tokens_by_layer[layer])
        E, L = self.ctx.num_experts, len(view.experts_by_layer)
        every = np.arange(E)
        cand = []
        for d in range(1, self.options.layers + 1):
            target = layer + d
            if target >= L:
                break
            if d == 1 and view.predicted_by_layer is not None:
                p = np.zeros(E)
                p[np.asarray(view.predicted_by_layer[layer], dtype=np.int64)] = 1.0
            else:
                p = self.p[target]
            imp = self.impact(target, every, p)
            top = np.argsort(-imp, kind="stable")[: self.options.budget]
            cand.extend((-float(imp[e]), d, int(e), target) for e in top if imp[e] > 0)
        cand.sort()
        return [(target, e) for _, _, e, target in cand]
