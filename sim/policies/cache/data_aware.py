"""DAOP's data-aware expert allocation: a GPU expert set from a popularity profile, adapted to each sequence
by swapping during its prefill, fixed during decode (misses are then computed on the CPU).

Source: Zhang, Aggarwal & Mitra, "DAOP: Data-Aware Offloading and Predictive Pre-Calculation for Efficient
MoE Inference", DATE 2025 (arXiv 2501.10375); rule and constants from its code (github.com/ecolab-nus/DAOP,
`DAOP/daop_moe.py`, `model/modeling_daop.py`, `data/calibration_data.py`):

1. Start-up: the GPU gets the most popular experts of an offline profile, each layer its quota
   (GPU slots // layers; slots left over go to the most popular remaining experts): option `profile`, a
   routing trace (popularity = tokens routed to each expert). Without one the cache starts empty.
2. Prefill, per layer: count the tokens each expert serves. The `swaps` (largest_num = 4) CPU experts with the
   most tokens are paired, in order, with the GPU experts of the layer with the fewest; a pair swaps (the hot
   expert is copied in, the cold one dropped) when hot tokens > `swap_ratio` (swap_in_out = 1.05) x cold
   tokens. The remaining misses run on the CPU when tokens x CPU cost < copy cost, else on the GPU from a
   placeholder buffer that is not kept.
3. Decode: no copies. GPU-resident experts run on the GPU, the others on the CPU.

How the hooks model it (`daop` system = this cache + `fiddler` placement):
- The swap decision is made in `on_routing` (before the layer's look-ups); `admit()` accepts exactly the hot
  experts chosen, `to_evict()` returns their cold partners. Every other miss is refused (`admit` False): it
  runs on the CPU or through a staging buffer, as DAOP's placeholder. The CPU-or-copy choice for those misses
  is `fiddler`'s (CPU when cheaper than copy + GPU compute): DAOP's own cost rule with the profile's costs.
- Hotness is the expert's gate mass over the step (mean gate weight x the step's tokens); the cache hooks do
  not give per-expert token counts. Without gates in the trace, every routed expert counts 1.
- A step is treated as prefill when it serves more than one trace row (`on_step`): exact for batch 1, DAOP's
  setting; with batch > 1, multi-row decode steps would swap too. With prefill_chunk=1 no step swaps.
- The cache `claims_misses`: the engine asks `admit` before the placement, so a chosen swap is copied in
  even when the placement would send that expert to the CPU (few tokens), as DAOP does.
- With free slots (no profile) the hottest missing experts fill them, `swaps` per layer step at most
  (DAOP always starts full).
Not modelled: the predictive pre-calculation (from layer 5 on, the next layer's gate applied to the current
hidden state picks experts whose CPU part is computed one layer early, overlapping the GPU) and the graceful
degradation (when both predicted experts are on the CPU, one is replaced by the best GPU-resident expert:
a routing change). Both need hooks the engine does not have: a prefetch that schedules CPU work ahead, and a
routing policy that sees residency.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from simmoe.errors import InputError
from simmoe.policies.base import (
    CacheOptions,
    CachePolicy,
)
from simmoe.policies.cache.static_popular import profile_counts


class DataAwareOptions(CacheOptions):
    profile: str | None = Field(None, description="routing trace (.npz) whose popularity sets the start-up set")
    swap_ratio: float = Field(1.05, gt=0.0, description="swap when hot tokens > swap_ratio x cold tokens")
    swaps: int = Field(4, ge=0, description="hot/cold pairs considered per layer and prefill step")


class DataAware(CachePolicy):
    name = "data-aware"
    summary = "DAOP: profile-popular experts, swapped per sequence at prefill (hot CPU <-> cold GPU), fixed in decode"
    reference = "Zhang, Aggarwal & Mitra, DATE 2025, DAOP: Data-Aware Offloading and Predictive Pre-Calculation"
    Options = DataAwareOptions

    def __init__(self, ctx, options: DataAwareOptions) -> None:
        super().__init__(ctx, options)
        self._res: dict[int, None] = {}  # resident keys, insertion order
        self._mass: dict[int, float] = {}  # key -> gate mass in its layer's last prefill step (cold order)
        self._tokens = 0  # rows of the current step (0: unknown, no swaps)
        self._swap_in: set[int] = set()  # hot keys chosen for this layer step
        self._victims: list[int] = []  # their cold partners, coldest first
        self._start = self._startup_set() if options.profile is not None else ()

    def _startup_set(self) -> tuple[int, ...]:
        """DAOP's set_expert_loc: each layer its quota of most popular experts, the rest by popularity."""
        ctx, o = self.ctx, self.options
        e = ctx.num_experts
        try:
            counts = profile_counts(o.profile)
        except InputError as err:  # the shared reader names static-popular
            raise InputError(f"policy {self.name}", "profile", err.message) from None
        need = max(ctx.layers) + 1
        if counts.shape[0] < need or counts.shape[1] > e:
            raise InputError(f"policy {self.name}", "profile",
                             f"{o.profile} has {counts.shape[0]} MoE layers and {counts.shape[1]} experts; "
                             f"the replayed model needs {need} layers of {e} experts")
        pop = np.zeros((need, e), dtype=np.int64)
        pop[:, :counts.shape[1]] = counts[:need]
        quota = self.capacity // len(ctx.layers)
        chosen: list[int] = []
        for m in ctx.layers:
            order = np.argsort(-pop[m], kind="stable")[:quota]
            chosen.extend(m * e + int(x) for x in order)
        taken = set(chosen)
        rest = [(-int(pop[m, x]), m * e + x) for m in ctx.layers for x in range(e) if m * e + x not in taken]
        rest.sort()
        chosen.extend(k for _, k in rest[: self.capacity - len(chosen)])
        return tuple(chosen)

    def preload(self) -> tuple[int, ...]:
        return self._start

    # ---- the per-sequence swap ---------------------------------------------------------------------------
    def on_step(self, rows: np.ndarray) -> None:
        self._tokens = len(rows)

    def on_routing(self, layer: int, experts: Sequence[int], scores: Sequence[float] | None) -> None:
        self._swap_in.clear()
        self._victims.clear()
        if self._tokens <= 1:  # decode (or unknown): DAOP keeps the allocation fixed
            return
        e = self.ctx.num_experts
        base = layer * e
        mass = {base + int(x): (float(scores[i]) * self._tokens if scores is not None else 1.0)
                for i, x in enumerate(experts)}
        cold = sorted((k for k in self._res if k // e == layer), key=lambda k: mass.get(k, 0.0))
        for k in cold:
            self._mass[k] = mass.get(k, 0.0)
        hot = sorted((k for k in mass if k not in self._res), key=lambda k: -mass[k])[: self.options.swaps]
        free = self.capacity - len(self._res)
        j = 0
        for h in hot:
            self._mass[h] = mass[h]
            if free > 0:
                free -= 1
                self._swap_in.add(h)
            elif j < len(cold) and mass[h] > self.options.swap_ratio * mass.get(cold[j], 0.0):
                self._swap_in.add(h)
                self._victims.append(cold[j])
                j += 1
            else:
                break  # hot is descending, cold ascending: no later pair swaps either

    claims_misses = True  # a chosen swap is copied in whatever fiddler would say

    def admit(self, key: int, t: int) -> bool:
        return key in self._swap_in

    # ---- cache hooks --------------------------------------------------------------------------------------
    def find(self, key: int, t: int) -> bool:
        return key in self._res

    def insert(self, key: int, t: int) -> None:
        self._res[key] = None
        self._swap_in.discard(key)

    def to_evict(self, t: int) -> int:
        for v in self._victims:
            if v in self._res:
                return v
        # outside a swap (a prefetch, or a driver that admits every miss): the coldest, oldest first
        return min(self._res, key=lambda k: self._mass.get(k, 0.0))

    def evict(self, key: int) -> None:
        del self._res[key]
        if key in self._victims:
            self._victims.remove(key)

    def __contains__(self, key: int) -> bool:
        return key in self._res

    def __len__(self) -> int:
        return len(self._res)

    def keys(self) -> list[int]:
        return list(self._res)
