"""kTransformers / llama.cpp `--cpu-moe`: every routed expert computed on the CPU where it lives, attention and
shared experts on the GPU; only activations cross PCIe."""

from __future__ import annotations

from simmoe.policies.base import SystemPolicy


class CpuExperts(SystemPolicy):
    name = "cpu-experts"
    summary = "routed experts on the CPU, attention and shared experts on the GPU (kTransformers, llama.cpp --cpu-moe)"
    reference = "kTransformers; llama.cpp --cpu-moe"
    composition = {"cache": "ondemand", "placement": "cpu"}
