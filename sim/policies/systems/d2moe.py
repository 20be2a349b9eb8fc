"""D2MoE (Wang et al., MobiCom 2025): an LRU cache of experts stored as nested bit planes (INT2 < INT3 < INT4,
the `matryoshka` precision), bits chosen per token by gate rank, copies ordered hottest-expert-bit-first."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from simmoe.policies.base import CacheSize, PolicySet, SystemPolicy, cache_size_options
from simmoe.policies.precision.matryoshka import REFERENCE, MatryoshkaOptions, _listish


class D2MoEOptions(CacheSize):
    levels: tuple[int, ...] = (2, 3, 4)
    bits_by_rank: tuple[int, ...] = (4, 2)
    io_order: Literal["hebf", "hottest", "sequential"] = "hebf"

    _lists = field_validator("levels", "bits_by_rank", mode="before")(_listish)

    def model_post_init(self, _ctx) -> None:  # the same checks as the precision policy's, under this name
        MatryoshkaOptions(levels=self.levels, bits_by_rank=self.bits_by_rank)


class D2MoE(SystemPolicy):
    name = "d2moe"
    summary = "D2MoE: LRU cache of nested-bit experts (matryoshka precision, hottest-expert-bit-first I/O)"
    reference = REFERENCE
    Options = D2MoEOptions

    @classmethod
    def expand(cls, options) -> PolicySet:
        cache_opts = cache_size_options(options)
        prec = {"levels": list(options.levels), "bits_by_rank": list(options.bits_by_rank),
                "io_order": options.io_order}
        return PolicySet(cache="lru", cache_options=cache_opts, precision="matryoshka",
                         precision_options=prec)
