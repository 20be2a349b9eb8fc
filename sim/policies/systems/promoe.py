"""ProMoE (Song et al. 2024): an LRU cache with the stride (l+2) predictor's prefetches sent as preemptible
chunks that demand copies overtake."""

from __future__ import annotations

from pydantic import Field

from simmoe.policies.base import CacheOptions, PolicySet, SystemPolicy, cache_size_options
from simmoe.validation import ChunkMiB


class ProMoEOptions(CacheOptions):
    accuracy: float = Field(0.8, ge=0.0, le=1.0, description="the stride predictor's accuracy (no `predicted`)")
    # ProMoE's chunk size is not given in what we could read. 32 MiB: a DeepSeek-V2-Lite expert (16.5 MiB) is
    # one chunk (demand copies overtake queued prefetches only), a Mixtral expert (336 MiB) 11 chunks of
    # ~1.4 ms on PCIe 4, each paying the ~10 us link latency once.
    chunk_mb: ChunkMiB = 32.0


class ProMoE(SystemPolicy):
    name = "promoe"
    summary = "ProMoE: LRU cache + stride (l+2) prefetch in preemptible chunks that demand copies overtake"
    reference = "Song et al. 2024, ProMoE: Fast MoE-based LLM Serving using Proactive Caching"
    Options = ProMoEOptions

    @classmethod
    def expand(cls, options) -> PolicySet:
        return PolicySet(cache="lru", cache_options=cache_size_options(options), prefetch="stride",
                         prefetch_options={"accuracy": options.accuracy, "chunk_mb": options.chunk_mb})
