"""Pre-gated MoE (Hwang et al., ISCA 2024): the gate of block i selects block i+1's experts, which are fetched
into per-layer buffers one layer ahead."""

from __future__ import annotations

from simmoe.policies.base import CacheSize, PolicySet, SystemPolicy, cache_size_options


class PregatedOptions(CacheSize):
    """The paper keeps about one block's experts per layer on the GPU; default: the cache fills free memory."""


class PregatedSystem(SystemPolicy):
    name = "pregated-moe"
    summary = "Pre-gated MoE: per-layer LRU buffers filled by the pre-gate one layer ahead"
    reference = "Hwang et al. ISCA 2024, Pre-gated MoE"
    Options = PregatedOptions

    @classmethod
    def expand(cls, options) -> PolicySet:
        return PolicySet(cache="lru", cache_options=cache_size_options(options), prefetch="pregated")
