"""D2MoE's nested expert bit-widths (Wang, Zhou, Hong, Guo, "D2MoE: Dual Routing and Dynamic Scheduling for
Efficient On-Device MoE-based LLM Serving", MobiCom 2025, arXiv 2504.15299).

Matryoshka weight quantisation (MWQ): an expert is stored once at the top bit-width, bit-nested, so that its
INT2 planes are a prefix of its INT3 planes, which are a prefix of its INT4 planes (`levels`). Each
(token, expert) pair is given a bit-width by its gate weight (the "dual routing": tokens pick experts, and
their gate weights pick each expert's bits); an expert computes a step at the highest bit-width any of its
tokens asked for, on that prefix of its planes. I/O follows the paper's hottest-expert-bit-first (HEBF)
principle. What is modelled, and what is our own reading (the paper's exact allocation rule could not be
checked, only its abstract):

- bits per (token, expert): `bits_by_rank` (default [4, 2]: a token's highest-gate expert at 4 bits, the
  others at 2; the last entry serves every lower rank; without gates, slot order is the rank) or, instead,
  `gate_bits` ([[min_gate, bits], ...] tried in order on the token's gates normalised over its top-k; below
  every threshold: the lowest level).
- the GPU cache holds each expert at some resident bit-width; a hit needs resident bits >= needed bits, else
  only the missing planes are copied: (need - have) * params / 8 bytes, plus the group metadata (`meta_bits`
  per `group_size` weights, scale + zero shared by all nested levels as in matryoshka quantisation) with the
  base planes. An upgrade counts as a miss (it waits for a copy) but evicts nothing. Resident bits only grow
  until the expert is evicted. Experts the engine copies whole (prefetches) are resident at the top level.
- cache slots are sized for the top bit-width (a slot can always take the upgrade in place), so the cache
  holds no more experts than `quantized` at the top bits would; the saving is in bytes moved and in kernels
  that read fewer planes.
- HEBF (`io_order: hebf`): within a layer, experts go hottest first (tokens, then gate mass); hits compute at
  once; the misses' copies go in two rounds, the base planes of every missing expert first (hottest first),
  then the planes above them (each round's copy its own transfer, paying the PCIe latency again), and the
  kernels follow in the order their data arrives. `hottest`: hottest first, one whole copy per miss followed
  by its kernels; `sequential`: the same in routing order.

The `d2moe` system is an LRU cache with this precision.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from simmoe.errors import InputError
from simmoe.policies.base import Options, PrecisionPolicy
from simmoe.validation import tuple_from_list
from simmoe.yamlio import scalar

REFERENCE = ("Wang et al. MobiCom 2025, D2MoE: Dual Routing and Dynamic Scheduling for Efficient On-Device "
             "MoE-based LLM Serving (arXiv 2504.15299)")


def _listish(v):
    """Lists from the command line arrive as text (`--opt bits_by_rank=4,2` or `=[4,2]`): parse them."""
    if isinstance(v, str):
        v = scalar(v)
        if isinstance(v, str):
            v = [scalar(x) for x in v.split(",")]
    return (v,) if isinstance(v, (int, float)) else tuple_from_list(v)


class MatryoshkaOptions(Options):
    levels: tuple[int, ...] = Field((2, 3, 4), description="nested bit-widths, ascending (INT2<INT3<INT4)")
    bits_by_rank: tuple[int, ...] = Field((4, 2), description="bits of a token's 1st, 2nd, ... expert")
    gate_bits: tuple[tuple[float, int], ...] | None = Field(
        None, description="instead of bits_by_rank: [[min_gate, bits], ...] tried in order")
    group_size: int = Field(64, ge=1)
    meta_bits: int = Field(32, ge=0, description="scale + zero per group, copied with the base planes")
    dequant_flops_per_param: float = Field(2.0, ge=0.0)
    io_order: Literal["hebf", "hottest", "sequential"] = "hebf"

    _lists = field_validator("levels", "bits_by_rank", "gate_bits", mode="before")(_listish)

    def model_post_init(self, _ctx) -> None:
        lv = self.levels
        if not lv or list(lv) != sorted(set(lv)) or not all(1 <= b <= 8 for b in lv):
            raise ValueError("levels must be distinct bit-widths in 1..8, ascending")
        if "gate_bits" in self.model_fields_set and "bits_by_rank" in self.model_fields_set:
            raise ValueError("give bits_by_rank or gate_bits, not both")
        used = [b for _, b in self.gate_bits] if self.gate_bits is not None else list(self.bits_by_rank)
        if not used or any(b not in lv for b in used):
            raise ValueError(f"every bit-width must be one of the levels {list(lv)}")


class Matryoshka(PrecisionPolicy):
    name = "matryoshka"
    summary = "nested INT2<INT3<INT4 experts, bits per token by gate; copies only the planes it lacks (D2MoE)"
    reference = REFERENCE
    Options = MatryoshkaOptions

    def apply(self, spec):
        o = self.options
        return dataclasses.replace(spec, expert_bits=o.levels[-1] + o.meta_bits / o.group_size)

    def dequant_flops_per_param(self) -> float:
        return self.options.dequant_flops_per_param

    def levels(self) -> tuple[int, ...]:
        return tuple(self.options.levels)

    def io_order(self) -> Literal["hebf", "hottest", "sequential"]:
        return self.options.io_order

    def copy_bytes(self, spec, have_bits: int, need_bits: int) -> int:
        o = self.options
        p = spec.expert_params
        data = round(p * need_bits / 8) - round(p * have_bits / 8)
        meta = round(p * o.meta_bits / o.group_size / 8) if have_bits == 0 else 0
        return int(data + meta)

    def slot_bits(self, experts: np.ndarray, gates: np.ndarray | None) -> np.ndarray:
        o = self.options
        valid = experts >= 0
        if gates is None:  # slot order is the rank
            g = np.where(valid, -np.arange(experts.shape[-1], dtype=np.float64), -np.inf)
        else:
            g = np.where(valid, np.nan_to_num(gates, nan=0.0).astype(np.float64), -np.inf)
        lowest = o.levels[0]
        if o.gate_bits is not None and gates is not None:
            w = np.where(valid, g, 0.0)
            tot = w.sum(axis=-1, keepdims=True)
            w = np.divide(w, tot, out=np.zeros_like(w), where=tot > 0)
            out = np.full(experts.shape, lowest, dtype=np.int8)
            done = np.zeros(experts.shape, dtype=bool)
            for thr, b in o.gate_bits:
                hit = ~done & (w >= thr)
                out[hit] = b
                done |= hit
            return out
        if o.gate_bits is not None:
            raise InputError(f"policy {self.name}", "gate_bits",
                             "the trace has no gate weights; use bits_by_rank")
        rank = np.argsort(np.argsort(-g, axis=-1, kind="stable"), axis=-1, kind="stable")
        table = np.asarray(o.bits_by_rank, dtype=np.int8)
        return table[np.minimum(rank, len(table) - 1)]
