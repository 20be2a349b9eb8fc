"""SE-MoE (Shen et al. 2022): CPU and GPU memory as a ring of whole-layer sections processed round-robin when
the model exceeds GPU memory: a global FIFO cache (it evicts the section the ring frees next) and the `ring`
prefetch."""

from __future__ import annotations

from pydantic import Field

from simmoe.policies.base import CacheSize, PolicySet, SystemPolicy, cache_size_options


class SeMoEOptions(CacheSize):
    sections: int | None = Field(None, ge=1, description="ring depth in layers (default: whole layers that fit)")


class SeMoE(SystemPolicy):
    name = "se-moe"
    summary = "SE-MoE: GPU memory as a ring of whole-layer sections, loaded round-robin (FIFO cache + ring)"
    reference = "Shen et al. 2022, SE-MoE (arXiv 2205.10034)"
    Options = SeMoEOptions

    @classmethod
    def expand(cls, options) -> PolicySet:
        cache_opts = cache_size_options(options)
        ring_opts = {"depth": options.sections} if options.sections is not None else {}
        return PolicySet(cache="fifo", cache_options={"scope": "global", **cache_opts},
                         prefetch="ring", prefetch_options=ring_opts)
