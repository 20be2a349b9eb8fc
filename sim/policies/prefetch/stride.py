"""ProMoE's stride prefetch: predict the experts of layer l + stride (default 2) from layer l's hidden
state, so the copy has a whole layer more to hide behind. The predictor is modelled by its accuracy (as
`next-layer` without a `predicted` array).

ProMoE also splits prefetch transfers into chunks so that an on-demand load preempts them at a chunk
boundary (Song et al. 2024, arXiv:2410.22134, "chunked prefetching" and "early preemption"). The option
`chunk_mb` asks the engine for that: prefetch copies become preemptible chunks of `chunk_mb` MiB (each chunk
pays the link latency); a demand copy overtakes queued prefetches and the running one at its next chunk
boundary. Without it the copy engines are FIFO and a queued prefetch delays a demand miss behind it. The
replay setting `--prefetch-chunk-mb` does the same for any prefetcher (and overrides this option).
The `promoe` system is LRU + this prefetcher with chunking on.
"""

from __future__ import annotations

from pydantic import Field

from simmoe.policies.prefetch.next_layer import NextLayerOptions, NextLayerPrefetch
from simmoe.validation import ChunkMiB


class StrideOptions(NextLayerOptions):
    distance: int = 2
    chunk_mb: ChunkMiB | None = Field(None,
                                      description="preemptible prefetch chunks of this many MiB (None: FIFO copies)")


class StridePrefetch(NextLayerPrefetch):
    name = "stride"
    summary = "ProMoE: predict and prefetch the experts of layer l+2 (accuracy option), a layer earlier"
    reference = "Song et al. 2024, ProMoE: Fast MoE-based LLM Serving using Proactive Caching"
    Options = StrideOptions

    def chunk_mb(self) -> float | None:
        return self.options.chunk_mb
