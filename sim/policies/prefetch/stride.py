"""ProMoE's stride prefetch: predict the experts of layer l + stride (default 2) from layer l's hidden
state, so the copy has a whole layer more to hide behind. The predictor is modelled by its accuracy (as
`next-layer` without a `predicted` array).

ProMoE also splits prefetch transfers into chunks so that an on-demand load preempts them at a chunk
boundary (Song et al. 2024, arXiv:2410.22134, "chunked prefetching" and "early preemption"). That is a
property of the copy engine, not of the predictor, so it is an engine setting that applies to every
prefetcher's copies: ReplayConfig.prefetch_chunk_mb / `simmoe replay --prefetch-chunk-mb MIB`. ProMoE is
therefore `--prefetch stride --prefetch-chunk-mb MIB`; without the flag the copy engines are FIFO and a
prefetch already queued delays a demand miss behind it."""

from __future__ import annotations

from simmoe.policies.prefetch.next_layer import NextLayerOptions, NextLayerPrefetch


class StrideOptions(NextLayerOptions):
    distance: int = 2


class StridePrefetch(NextLayerPrefetch):
    name = "stride"
    summary = "ProMoE: predict and prefetch the experts of layer l+2 (accuracy option), a layer earlier"
    reference = "Song et al. 2024, ProMoE: Fast MoE-based LLM Serving using Proactive Caching"
    Options = StrideOptions
