"""Experts stored, copied and computed quantised (Mixtral-offloading's HQQ experts; llama.cpp's k-quants):
fewer bytes over PCIe and in the cache, plus the work of dequantising weights inside the kernel.

Bits per weight include the group metadata: `bits` + `meta_bits` (scale + zero) / `group_size`. The
Mixtral-offloading setting (2-bit, group 16, 8-bit scales and zeros) is bits=2 group_size=16 meta_bits=16.
"""

from __future__ import annotations

import dataclasses

from simmoe.policies.base import Options, PrecisionPolicy


class QuantizedOptions(Options):
    bits: int = 4
    group_size: int = 64
    meta_bits: int = 32  # scale + zero per group (fp16 each)
    dequant_flops_per_param: float = 2.0  # unpack + scale (+ zero) per weight per kernel

    def model_post_init(self, _ctx) -> None:
        if self.bits not in (1, 2, 3, 4, 5, 6, 8):
            raise ValueError("bits must be one of 1, 2, 3, 4, 5, 6, 8")
        if self.group_size < 1 or self.meta_bits < 0 or self.dequant_flops_per_param < 0:
            raise ValueError("group_size must be >= 1, meta_bits and dequant_flops_per_param >= 0")


class Quantized(PrecisionPolicy):
    name = "quantized"
    summary = "experts at `bits` per weight (+ group scales): fewer bytes moved, dequantisation cost per kernel"
    reference = "Eliseev & Mazur 2023 (HQQ 2-bit experts); Badri & Shaji 2023, HQQ"
    Options = QuantizedOptions

    def bits_per_weight(self) -> float:
        o = self.options
        return o.bits + o.meta_bits / o.group_size

    def apply(self, spec):
        return dataclasses.replace(spec, expert_bits=self.bits_per_weight())

    def dequant_flops_per_param(self) -> float:
        return self.options.dequant_flops_per_param
