"""llama.cpp `--n-cpu-moe N`: the routed experts of the first N MoE layers stay in host memory and are
computed on the CPU; the other layers' experts use the GPU cache (which gets all of the GPU room)."""

from __future__ import annotations

from pydantic import Field

from simmoe.policies.base import Access, Options, PlacementPolicy


class NCpuMoeOptions(Options):
    n: int = Field(0, ge=0)


class NCpuMoe(PlacementPolicy):
    name = "n-cpu-moe"
    summary = "experts of the first n MoE layers computed on the CPU, the rest through the GPU cache"
    reference = "llama.cpp --n-cpu-moe"
    Options = NCpuMoeOptions

    def cpu_layers(self, num_layers: int) -> frozenset[int]:
        return frozenset(range(min(self.options.n, num_layers)))

    def place(self, acc: Access, costs) -> str:
        return "gpu"  # layers listed by cpu_layers never reach here
