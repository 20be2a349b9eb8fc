"""HybriMoE's Minus Recent Score (MRS) cache: every expert of the partition carries a priority score,
updated after each layer's routing as an exponential moving average of its router score,

    S <- alpha * s + (1 - alpha) * S   for the experts routed in this layer step (s = their router score)
    S <- (1 - alpha) * S               for every other expert of that layer,

and the cached expert with the lowest S is evicted (ties: the one inserted first). This is the rule of
`KScoreAwareCache` in the HybriMoE code (alpha = 0.5 there); HybriMoE updates the top-p (p = 12) router
scores of the full softmax, a trace holds only the top-k gates, so here only routed experts gain score.

Router scores reach the policy through `on_routing(layer, experts, scores)`, which the engine calls once per
MoE-layer step before the look-ups (scores: the step's mean gate weight per expert, None without gates).
Without that call (an engine that does not make it) the policy infers layer steps from its look-ups: a step
starts when the access index is not the previous one + 1, the layer changes, or a key repeats; each look-up
then counts as score 1, so S is an exponentially decayed activation frequency.

Decay is lazy: stored values are S / scale and a step multiplies `scale` by (1 - alpha), so a step costs
O(routed experts), not O(all experts).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from simmoe.policies.base import CacheOptions, CachePolicy

_RESCALE_BELOW = 1e-150


class MRSOptions(CacheOptions):
    alpha: float = Field(0.5, gt=0.0, le=1.0, description="weight of the newest router score")


class MRS(CachePolicy):
    name = "mrs"
    summary = "HybriMoE Minus Recent Score: evict the expert with the lowest decayed router-score average"
    reference = "Zhong et al. 2025, HybriMoE: Hybrid CPU-GPU Scheduling and Cache Management for MoE Inference"
    Options = MRSOptions

    def __init__(self, ctx, options) -> None:
        super().__init__(ctx, options)
        self._keep = 1.0 - options.alpha
        self._raw: dict[int, float] = {}  # key -> S / scale (every expert seen, cached or not)
        self._scale: dict[int, float] = {}  # layer -> its scale
        self._cached: dict[int, None] = {}  # insertion order breaks ties
        self._hooked = False  # on_routing has been called: no inference from look-ups
        self._last_t = -2
        self._last_layer = -1
        self._step_keys: set[int] = set()

    # ---- scores -----------------------------------------------------------------------------------------
    def _new_step(self, layer: int) -> None:
        s = self._scale.get(layer, 1.0) * self._keep
        if s < _RESCALE_BELOW:  # fold the scale into the stored values before it underflows
            e = self.ctx.num_experts
            for k in self._raw:
                if k // e == layer:
                    self._raw[k] *= s
            s = 1.0
        self._scale[layer] = s

    def _add(self, key: int, layer: int, score: float) -> None:
        self._raw[key] = self._raw.get(key, 0.0) + (1.0 - self._keep) * score / self._scale.get(layer, 1.0)

    def score(self, key: int) -> float:
        """The current priority S of `key` (0 for an expert never routed)."""
        return self._raw.get(key, 0.0) * self._scale.get(key // self.ctx.num_experts, 1.0)

    def on_routing(self, layer: int, experts: Sequence[int], scores: Sequence[float] | None) -> None:
        """One MoE-layer step of this partition: `experts` routed, `scores` their router scores (or None)."""
        self._hooked = True
        self._new_step(layer)
        base = layer * self.ctx.num_experts
        for i, e in enumerate(experts):
            self._add(base + int(e), layer, 1.0 if scores is None else float(scores[i]))

    # ---- cache hooks ------------------------------------------------------------------------------------
    def find(self, key: int, t: int) -> bool:
        if not self._hooked:
            layer = key // self.ctx.num_experts
            if t != self._last_t + 1 or layer != self._last_layer or key in self._step_keys:
                self._new_step(layer)
                self._step_keys.clear()
            self._step_keys.add(key)
            self._last_t, self._last_layer = t, layer
            self._add(key, layer, 1.0)
        return key in self._cached

    def insert(self, key: int, t: int) -> None:
        self._cached[key] = None

    def to_evict(self, t: int) -> int:
        return min(self._cached, key=self.score)  # min() keeps the first of equal scores

    def evict(self, key: int) -> None:
        del self._cached[key]

    def __contains__(self, key: int) -> bool:
        return key in self._cached

    def __len__(self) -> int:
        return len(self._cached)

    def keys(self) -> list[int]:
        return list(self._cached)
