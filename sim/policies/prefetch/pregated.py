"""Pre-gated MoE: the gate of block i selects block i+1's experts, so exactly those are fetched while
block i computes. The model is trained that way, so the next layer's routing is known one layer early by
construction: the trace's own next-layer experts are the pre-gate's choice (or its `predicted` array, when a
capture recorded a separate pre-gate)."""

from __future__ import annotations

from simmoe.policies.base import Options, PrefetchPolicy, StepView


class PregatedPrefetch(PrefetchPolicy):
    name = "pregated"
    summary = "fetch exactly the next layer's pre-gated experts while the current layer computes"
    reference = "Hwang et al. ISCA 2024, Pre-gated MoE"
    Options = Options

    def propose(self, view: StepView, layer: int):
        if layer + 1 >= len(view.experts_by_layer):
            return ()
        src = view.predicted_by_layer[layer] if view.predicted_by_layer is not None else \
            view.experts_by_layer[layer + 1]
        return [(layer + 1, int(e)) for e in src]
