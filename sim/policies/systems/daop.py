"""DAOP (Zhang, Aggarwal & Mitra, DATE 2025): the data-aware cache (per-sequence swaps at prefill) with
Fiddler's placement for the misses that are cheaper on the CPU."""

from __future__ import annotations

from pydantic import Field

from simmoe.policies.base import CacheSize, PolicySet, SystemPolicy, cache_size_options


class DaopOptions(CacheSize):
    profile: str | None = None
    swap_ratio: float = Field(1.05, gt=0.0)
    swaps: int = Field(4, ge=0)


class Daop(SystemPolicy):
    name = "daop"
    summary = "DAOP: data-aware per-sequence expert allocation (prefill swaps) + CPU for misses cheaper there"
    reference = "Zhang, Aggarwal & Mitra, DATE 2025, DAOP (arXiv 2501.10375)"
    Options = DaopOptions

    @classmethod
    def expand(cls, options) -> PolicySet:
        cache_opts = cache_size_options(options, "profile")
        return PolicySet(cache="data-aware",
                         cache_options={**cache_opts, "swap_ratio": options.swap_ratio, "swaps": options.swaps},
                         placement="fiddler")
