"""ProMoE's stride prefetch: predict the experts of layer l + stride (default 2) from layer l's hidden
state, so the copy has a whole layer more to hide behind. The predictor is modelled by its accuracy (as
`next-layer` without a `predicted` array). ProMoE also chunks transfers so demand copies preempt
prefetches; the engine's copy engines are in-order FIFOs, so that part is not modelled (a prefetch
already queued delays a demand miss behind it)."""

from __future__ import annotations

from simmoe.policies.prefetch.next_layer import NextLayerOptions, NextLayerPrefetch


class StrideOptions(NextLayerOptions):
    distance: int = 2


class StridePrefetch(NextLayerPrefetch):
    name = "stride"
    summary = "ProMoE: predict and prefetch the experts of layer l+2 (accuracy option), a layer earlier"
    reference = "Song et al. 2024, ProMoE: Fast MoE-based LLM Serving using Proactive Caching"
    Options = StrideOptions
