"""Experts stored, copied and computed quantised (Mixtral-offloading's HQQ experts; llama.cpp's k-quants):
fewer bytes over PCIe and in the cache, plus the work of dequantising weights inside the kernel.

Bits per weight include the group metadata: `bits` + `meta_bits` (scale + zero) / `group_size`. The
Mixtral-offloading setting (2-bit, group 16, 8-bit scales and zeros) is bits=2 group_size=16 meta_bits=16.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

from pydantic import AfterValidator, Field

from simmoe.policies.base import Options, PrecisionPolicy

BIT_WIDTHS = (1, 2, 3, 4, 5, 6, 8)


def _bit_width(b: int) -> int:
    if b not in BIT_WIDTHS:
        raise ValueError(f"must be one of {', '.join(map(str, BIT_WIDTHS))}, got {b}")
    return b


class QuantizedOptions(Options):
    bits: Annotated[int, AfterValidator(_bit_width)] = 4  # int, not Literal: a Literal takes True for 1
    group_size: int = Field(64, ge=1)
    meta_bits: int = Field(32, ge=0)  # scale + zero per group (fp16 each)
    dequant_flops_per_param: float = Field(2.0, ge=0.0)  # unpack + scale (+ zero) per weight per kernel


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
