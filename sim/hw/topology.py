"""A machine's GPUs and the links between them (the `topology:` section of a hardware profile).

A profile without the section describes one GPU. With it, the machine has `gpus` GPUs, each the profile's
`gpu:` spec with the profile's `pcie:` link to the host (its own copy engines). GPUs listed together in
`switches` sit behind one PCIe switch and share its upstream link to the CPU: their host copies cross that
uplink in turn (sim/engine/devices.py: FIFO at the link's bandwidth; the uplink is taken to be as wide as a
GPU's own link, as in the bundled servers). `p2p` says whether the driver lets one GPU copy straight into
another's memory (GeForce cards: no, peer copies are staged through host memory); `nvlink` that such copies
go over NVLink instead of PCIe (no PCIe link is used). `p2p_gbps` and `p2p_latency_us` time a direct copy.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from simmoe.validation import STRICT, Figure, FigureOrZero


class TopologySpec(BaseModel):
    model_config = STRICT

    gpus: int = Field(ge=1, le=64)
    # groups of GPU indices behind one PCIe switch (sharing its uplink); GPUs in no group have their own link
    switches: list[list[int]] = []
    p2p: bool = False  # direct GPU-to-GPU copies allowed (else staged through host memory)
    nvlink: bool = False  # direct copies over NVLink (needs p2p)
    p2p_gbps: Figure | None = None  # bandwidth of a direct copy, each direction
    p2p_latency_us: FigureOrZero = 0.0

    @model_validator(mode="after")
    def _check(self) -> TopologySpec:
        seen: set[int] = set()
        for group in self.switches:
            if not group:
                raise ValueError("switches: a switch needs at least one GPU")
            for g in group:
                if not 0 <= g < self.gpus:
                    raise ValueError(f"switches: GPU {g} is not in [0, {self.gpus})")
                if g in seen:
                    raise ValueError(f"switches: GPU {g} is behind two switches")
                seen.add(g)
        if self.nvlink and not self.p2p:
            raise ValueError("nvlink: NVLink copies are peer-to-peer copies: set p2p: true")
        if self.p2p and self.p2p_gbps is None:
            raise ValueError("p2p_gbps: a machine with p2p copies needs their bandwidth")
        if not self.p2p and (self.p2p_gbps is not None or self.p2p_latency_us):
            raise ValueError("p2p_gbps/p2p_latency_us: only used with p2p: true (peer copies are staged "
                             "through host memory otherwise)")
        return self

    def switch_of(self, gpu: int) -> int | None:
        """The switch `gpu` sits behind (None: its own link to the CPU)."""
        for s, group in enumerate(self.switches):
            if gpu in group:
                return s
        return None
