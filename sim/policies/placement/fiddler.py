"""Fiddler: a missing expert is computed on the CPU, where its weights live, when that is cheaper than
copying it to the GPU and computing it there (decided from the calibrated costs of this profile)."""

from __future__ import annotations

from simmoe.policies.base import Access, Options, PlacementPolicy


class Fiddler(PlacementPolicy):
    name = "fiddler"
    summary = "compute a missed expert on the CPU when that beats copy + GPU compute (per the profile's costs)"
    reference = "Kamahori et al. 2024, Fiddler: CPU-GPU Orchestration for Fast Inference of MoE Models"
    Options = Options

    def place(self, acc: Access, costs) -> str:
        cpu = costs.expert_cpu_us(acc.tokens) + costs.d2h_us(costs.activation_bytes(acc.tokens)) \
            + costs.h2d_us(costs.activation_bytes(acc.tokens), pinned=True)
        gpu = costs.h2d_us(costs.expert_bytes) + costs.expert_gpu_us(acc.tokens)
        return "cpu" if cpu < gpu else "gpu"
