"""HybriMoE (Zhong et al., DAC 2025): the MRS score cache, the intra-layer CPU/GPU split and the impact-driven
prefetch."""

from __future__ import annotations

from pydantic import Field

from simmoe.policies.base import CacheSize, PolicySet, SystemPolicy, cache_size_options


class HybriMoEOptions(CacheSize):
    alpha: float = Field(0.5, gt=0.0, le=1.0, description="MRS score weight")
    prefetch_layers: int = Field(2, ge=1, description="impact prefetch: next layers considered")
    prefetch_budget: int = Field(4, ge=1, description="impact prefetch: experts per target layer at most")
    prefetch_alpha: float = Field(0.1, gt=0.0, le=1.0, description="impact prefetch: newest step's weight")


class HybriMoE(SystemPolicy):
    name = "hybrimoe"
    summary = "HybriMoE: MRS score cache + intra-layer CPU/GPU split + impact-driven prefetch"
    reference = "Zhong et al. DAC 2025, HybriMoE"
    Options = HybriMoEOptions

    @classmethod
    def expand(cls, options) -> PolicySet:
        cache_opts = cache_size_options(options)
        return PolicySet(cache="mrs", cache_options={**cache_opts, "alpha": options.alpha}, placement="hybrid-split",
                         prefetch="impact", prefetch_options={"layers": options.prefetch_layers,
                                                              "budget": options.prefetch_budget,
                                                              "alpha": options.prefetch_alpha})
