"""Turn a PolicySet into policy instances sized for the GPU memory the model leaves free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simmoe.engine.memory import MemoryPlan, check_cache, free_slots
from simmoe.errors import InputError
from simmoe.policies.base import (
    CacheContext,
    CacheOptions,
    CachePolicy,
    PlacementPolicy,
    PolicySet,
    PrefetchPolicy,
    SystemPolicy,
    parse_options,
)
from simmoe.policies.registry import get_policy


@dataclass
class Resolved:
    pset: PolicySet
    cache_cls: type[CachePolicy]
    cache_opts: Any
    prefetch_cls: type[PrefetchPolicy] | None
    prefetch_opts: Any
    placement_cls: type[PlacementPolicy] | None
    placement_opts: Any

    @property
    def reads_future(self) -> bool:
        return any(c is not None and c.reads_future for c in (self.cache_cls, self.prefetch_cls, self.placement_cls))


def resolve(pset: PolicySet) -> Resolved:
    """Look policies up by name (expanding named systems) and validate their options."""
    cls = get_policy(pset.cache, "cache", source="--policy")
    if issubclass(cls, SystemPolicy):
        sys_opts = parse_options(cls.Options, pset.cache_options, cls.name)
        inner = cls.expand(sys_opts)
        # explicit --prefetch / --placement on the command line override the system's own choice
        pset = PolicySet(
            cache=inner.cache, cache_options=inner.cache_options,
            prefetch=pset.prefetch or inner.prefetch,
            prefetch_options=pset.prefetch_options if pset.prefetch else inner.prefetch_options,
            placement=pset.placement or inner.placement,
            placement_options=pset.placement_options if pset.placement else inner.placement_options,
            system=cls.name,
        )
        cls = get_policy(pset.cache, "cache", source=f"system {cls.name}")
    cache_opts = parse_options(cls.Options, pset.cache_options, cls.name)
    pf = get_policy(pset.prefetch, "prefetch", source="--prefetch") if pset.prefetch else None
    pl = get_policy(pset.placement, "placement", source="--placement") if pset.placement else None
    return Resolved(
        pset, cls, cache_opts,
        pf, parse_options(pf.Options, pset.prefetch_options, pf.name) if pf else None,
        pl, parse_options(pl.Options, pset.placement_options, pl.name) if pl else None,
    )


def needs_staging(r: Resolved) -> bool:
    """Misses of a zero-size cache are copied into staging buffers, which take GPU memory too."""
    if r.placement_cls is not None and r.placement_cls.bypass_cache:
        return False
    if r.cache_cls.fixed_capacity == "none":
        return True
    o = r.cache_opts
    return isinstance(o, CacheOptions) and (o.slots_per_layer == 0 or o.cache_gb == 0)


@dataclass
class CacheLayout:
    """Partitions of the expert cache: one per MoE layer (scope=layer) or one in all (scope=global)."""

    parts: list[CachePolicy]
    part_of_layer: list[int]
    capacity: list[int]
    total_slots: int
    scope: str


def build_cache(r: Resolved, plan: MemoryPlan, num_layers: int, num_experts: int,
                next_use: np.ndarray | None) -> CacheLayout:
    cls, opts = r.cache_cls, r.cache_opts
    is_sized = isinstance(opts, CacheOptions)
    scope = opts.scope if is_sized else "layer"
    bypass = r.placement_cls is not None and r.placement_cls.bypass_cache
    src = f"--policy {cls.name}"
    if bypass or cls.fixed_capacity == "none":
        per = 0
        total = 0
    elif cls.fixed_capacity == "all":
        per = num_experts if scope == "layer" else num_experts * num_layers
        total = num_experts * num_layers
        check_cache(plan, total, src, "all experts resident")
    elif is_sized and opts.slots_per_layer is not None:
        per = min(opts.slots_per_layer, num_experts)
        total = per * num_layers
        check_cache(plan, total, "--opt", "slots_per_layer")
        if scope == "global":
            per = total
    elif is_sized and opts.cache_gb is not None:
        total = min(int(opts.cache_gb * 2**30) // plan.expert_bytes, num_experts * num_layers)
        check_cache(plan, total, "--opt", "cache_gb")
        if scope == "layer":
            per = total // num_layers
            total = per * num_layers
        else:
            per = total
    else:  # fill the memory left free
        total = min(free_slots(plan), num_experts * num_layers)
        if scope == "layer":
            per = total // num_layers
            total = per * num_layers
        else:
            per = total
    plan.cache_slots = total
    if scope == "layer":
        parts = [cls(CacheContext(per, num_experts, (m,), next_use), opts) for m in range(num_layers)]
        part_of = list(range(num_layers))
        caps = [per] * num_layers
    else:
        parts = [cls(CacheContext(per, num_experts, tuple(range(num_layers)), next_use), opts)]
        part_of = [0] * num_layers
        caps = [per]
    if total == 0 and not bypass and plan.staging == 0:
        raise InputError(src, None, "no GPU memory is left for even one expert after dense weights, KV cache "
                         "and activations")
    return CacheLayout(parts, part_of, caps, total, scope)
