"""MoNDE: hot experts are copied to (kept on) the GPU; every other expert is computed near host memory
(on the CPU here: the near-data-processing device is modelled by the profile's CPU), so only activations
move. As a system: a static-popular hot set with no LRU slots, and every miss computed where it lives."""

from __future__ import annotations

from pydantic import Field

from simmoe.policies.base import Access, Options, PlacementPolicy, PolicySet, SystemPolicy


class NearMemory(PlacementPolicy):
    name = "near-memory"
    summary = "compute every expert the GPU cache misses where it lives (host side); only activations move"
    reference = "Kim et al. 2024, MoNDE: Mixture of Near-Data Experts for Large-Scale Sparse Models"
    Options = Options

    def place(self, acc: Access, costs) -> str:
        return "cpu"


class MoNDEOptions(Options):
    profile: str | None = Field(None, description="routing trace (.npz) whose popularity picks the hot set")
    profile_prefix: float | None = Field(None, gt=0.0, le=1.0, description="or: this fraction of the run (oracle)")
    slots_per_layer: int | None = None
    cache_gb: float | None = None


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
