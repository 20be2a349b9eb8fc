"""Oracle prefetch: copy the experts the next `lookahead` MoE layers will really use. The bound for any
prefetcher: with enough copy bandwidth and cache room it hides every transfer."""

from __future__ import annotations

from pydantic import Field

from simmoe.policies.base import Options, PrefetchPolicy, StepView


class OracleOptions(Options):
    lookahead: int = Field(1, ge=1)  # MoE layers ahead (crosses into the next step after the last layer)


def layers_ahead(view: StepView, layer: int, distance: int):
    """Experts of MoE layer `layer + distance`, from the next step's routing past the last layer
    (oracle only: `view.future_steps` is set for policies that read the future)."""
    L = len(view.experts_by_layer)
    target = layer + distance
    if target < L:
        return target, view.experts_by_layer[target]
    if view.future_steps is None:
        return None
    nxt = view.future_steps(target // L)
    if nxt is None:
        return None
    return target % L, nxt.experts_by_layer[target % L]


class OraclePrefetch(PrefetchPolicy):
    name = "oracle"
    summary = "prefetch the true experts of the next `lookahead` layers (reads the future: the upper bound)"
    reference = "bound used by MoE-Infinity, ProMoE, HybriMoE evaluations"
    reads_future = True
    Options = OracleOptions

    def propose(self, view: StepView, layer: int):
        out = []
        for d in range(1, self.options.lookahead + 1):
            got = layers_ahead(view, layer, d)
            if got is not None:
                tgt, experts = got
                out.extend((tgt, int(e)) for e in experts)
        return out
