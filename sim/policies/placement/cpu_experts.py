"""Routed experts computed on the CPU where they live; the dense part on the GPU (kTransformers,
llama.cpp `--cpu-moe`). Only activations cross PCIe."""

from __future__ import annotations

from simmoe.policies.base import Options, PlacementPolicy


class AllOnCpu(PlacementPolicy):
    name = "cpu"
    summary = "compute every routed expert on the CPU (no GPU expert cache)"
    reference = "kTransformers; llama.cpp --cpu-moe"
    Options = Options
    bypass_cache = True

    def place(self, acc, costs) -> str:
        return "cpu"
