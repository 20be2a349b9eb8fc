"""MoNDE (Kim et al. 2024): popular experts pinned on the GPU, the others computed near host memory (only
activations move)."""

from __future__ import annotations

from pydantic import Field

from simmoe.policies.base import CacheSize, PolicySet, SystemPolicy


class MoNDEOptions(CacheSize):
    profile: str | None = Field(None, description="routing trace (.npz) whose popularity picks the hot set")
    profile_prefix: float | None = Field(None, gt=0.0, le=1.0, description="or: this fraction of the run (oracle)")


class MoNDE(SystemPolicy):
    name = "monde"
    summary = "MoNDE: popular experts pinned on the GPU, the rest computed near host memory"
    reference = "Kim et al. 2024, MoNDE"
    Options = MoNDEOptions

    @classmethod
    def reads_future_for(cls, options) -> bool:
        return options.profile_prefix is not None

    @classmethod
    def expand(cls, options) -> PolicySet:
        opts = {k: v for k, v in options.model_dump().items() if v is not None}
        return PolicySet(cache="static-popular", cache_options={**opts, "lru_slots": 0}, placement="near-memory")
