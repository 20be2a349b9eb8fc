"""MoNDE: hot experts are copied to (kept on) the GPU; every other expert is computed near host memory
(on the CPU here: the near-data-processing device is modelled by the profile's CPU), so only activations
move. As a system: a static-popular hot set with no LRU slots, and every miss computed where it lives."""

from __future__ import annotations

from simmoe.policies.base import Access, Options, PlacementPolicy


class NearMemory(PlacementPolicy):
    name = "near-memory"
    summary = "compute every expert the GPU cache misses where it lives (host side); only activations move"
    reference = "Kim et al. 2024, MoNDE: Mixture of Near-Data Experts for Large-Scale Sparse Models"
    Options = Options

    def place(self, acc: Access, costs) -> str:
        return "cpu"
