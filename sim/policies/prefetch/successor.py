"""Online successor-table prefetch, after MoE-Infinity's activation matching: learn, from the routing seen
so far, which experts of layer l+1 follow each expert of layer l, and prefetch the most likely ones.

MoE-Infinity matches a request's whole layer x expert activation matrix against past ones; the table of
co-occurrence counts between consecutive layers is the first-order version of that (REFERENCE-FIGURES: a
successor table recalls 57% / 77% of the next layer's experts on real Mixtral / DeepSeek traces).
Uses only routing already observed (the current step up to this layer and earlier steps).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from simmoe.policies.base import Options, PrefetchPolicy, StepView


class SuccessorOptions(Options):
    width: int | None = Field(None, ge=1)  # experts to prefetch (default: the layer's expert count this step)
    min_count: int = 1  # do not guess from a table row seen fewer times


class SuccessorPrefetch(PrefetchPolicy):
    name = "successor"
    summary = "online successor table (layer l expert -> layer l+1 experts), MoE-Infinity-style matching"
    reference = "Xue et al. 2024, MoE-Infinity: Offloading-Efficient MoE Model Serving"
    Options = SuccessorOptions

    def __init__(self, ctx, options) -> None:
        super().__init__(ctx, options)
        L, E = len(ctx.layers), ctx.num_experts
        self.counts = np.zeros((max(L - 1, 0), E, E), np.int32)

    def propose(self, view: StepView, layer: int):
        ex = view.experts_by_layer
        if layer > 0:  # learn the transition that has just been observed
            prev, cur = np.asarray(ex[layer - 1]), np.asarray(ex[layer])
            self.counts[layer - 1][np.ix_(prev, cur)] += 1
        if layer + 1 >= len(ex):
            return ()
        cur = np.asarray(ex[layer])
        row = self.counts[layer][cur].sum(axis=0)
        if row.max(initial=0) < self.options.min_count:
            return ()
        width = self.options.width or len(cur)
        best = np.argsort(-row, kind="stable")[:width]
        return [(layer + 1, int(e)) for e in best if row[e] > 0]
