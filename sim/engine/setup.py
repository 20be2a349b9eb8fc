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
    PrecisionPolicy,
    PrefetchPolicy,
    RoutingPolicy,
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
    precision_cls: type[PrecisionPolicy] | None = None
    precision_opts: Any = None
    routing_cls: type[RoutingPolicy] | None = None
    routing_opts: Any = None
    runtime: str | None = None  # the runtime a named system runs on

    @property
    def reads_future(self) -> bool:
        pairs = ((self.cache_cls, self.cache_opts), (self.prefetch_cls, self.prefetch_opts),
                 (self.placement_cls, self.placement_opts), (self.precision_cls, self.precision_opts),
                 (self.routing_cls, self.routing_opts))
        return any(c is not None and c.reads_future_for(o) for c, o in pairs)


def resolve(pset: PolicySet) -> Resolved:
    """Look policies up by name (expanding named systems) and validate their options."""
    cls = get_policy(pset.cache, "cache", param="policy")
    runtime = None
    if issubclass(cls, SystemPolicy):
        runtime = cls.runtime
        sys_opts = parse_options(cls.Options, pset.cache_options, cls.name)
        inner = cls.expand(sys_opts)
        # explicit --prefetch / --placement on the command line override the system's own choice
        kinds = ("prefetch", "placement", "precision", "routing")
        pset = PolicySet(
            cache=inner.cache, cache_options=inner.cache_options, system=cls.name,
            **{k: getattr(pset, k) or getattr(inner, k) for k in kinds},
            **{f"{k}_options": getattr(pset if getattr(pset, k) else inner, f"{k}_options") for k in kinds},
        )
        cls = get_policy(pset.cache, "cache", source=f"system {cls.name}")
    cache_opts = parse_options(cls.Options, pset.cache_options, cls.name)
    found = {}
    for kind in ("prefetch", "placement", "precision", "routing"):
        name = getattr(pset, kind)
        c = get_policy(name, kind, param=kind) if name else None
        found[kind] = (c, parse_options(c.Options, getattr(pset, f"{kind}_options"), c.name) if c else None)
    return Resolved(pset, cls, cache_opts, *found["prefetch"], *found["placement"], *found["precision"],
                    *found["routing"], runtime=runtime)


def needs_staging(r: Resolved) -> bool:
    """Misses of a zero-size cache are copied into staging buffers, which take GPU memory too."""
    if r.placement_cls is not None and r.placement_cls.bypass_cache:
        return False
    if r.cache_cls.fixed_capacity == "none" or r.cache_cls.admit is not CachePolicy.admit:
        return True  # no cache, or a cache that may decline to keep a miss
    o = r.cache_opts
    return isinstance(o, CacheOptions) and (o.slots_per_layer == 0 or o.cache_gb == 0)


@dataclass(frozen=True)
class CacheSizing:
    """How the expert cache is partitioned and sized: one partition per MoE layer (scope=layer) or one in all
    (scope=global). `capacity[p]` is partition p's slots; `part_of_layer[m]` the partition of MoE layer m."""

    scope: str
    capacity: tuple[int, ...]
    part_of_layer: tuple[int, ...]
    layers_of_part: tuple[tuple[int, ...], ...]
    total_slots: int


def size_cache(r: Resolved, plan: MemoryPlan, num_layers: int, num_experts: int,
               cpu_layers: frozenset[int] = frozenset()) -> CacheSizing:
    """Size the cache partitions in the memory `plan` leaves free. Layers in `cpu_layers` (placement keeps
    their experts on the CPU) get no slots; the GPU room goes to the other layers."""
    cls, opts = r.cache_cls, r.cache_opts
    is_sized = isinstance(opts, CacheOptions)
    scope = opts.scope if is_sized else "layer"
    bypass = r.placement_cls is not None and r.placement_cls.bypass_cache
    src = f"--policy {cls.name}"
    gpu_layers = num_layers - len(cpu_layers)
    if bypass or cls.fixed_capacity == "none" or gpu_layers == 0:
        per = 0
        total = 0
    elif cls.fixed_capacity == "all":
        per = num_experts if scope == "layer" else num_experts * gpu_layers
        total = num_experts * gpu_layers
        check_cache(plan, total, src, "all experts resident")
    elif is_sized and opts.slots_per_layer is not None:
        per = min(opts.slots_per_layer, num_experts)
        total = per * gpu_layers
        check_cache(plan, total, None, "slots_per_layer", param="opts")
        if scope == "global":
            per = total
    elif is_sized and opts.cache_gb is not None:
        total = min(int(opts.cache_gb * 2**30) // plan.expert_bytes, num_experts * gpu_layers)
        check_cache(plan, total, None, "cache_gb", param="opts")
        if scope == "layer":
            per = total // gpu_layers
            total = per * gpu_layers
        else:
            per = total
    else:  # fill the memory left free
        total = min(free_slots(plan), num_experts * gpu_layers)
        if scope == "layer":
            per = total // gpu_layers
            total = per * gpu_layers
        else:
            per = total
    if total == 0 and not bypass and plan.staging == 0 and gpu_layers:
        raise InputError(src, None, "no GPU memory is left for even one expert after dense weights, KV cache "
                         "and activations")
    if scope == "layer":
        caps = tuple(0 if m in cpu_layers else per for m in range(num_layers))
        return CacheSizing(scope, caps, tuple(range(num_layers)), tuple((m,) for m in range(num_layers)), total)
    layers = tuple(m for m in range(num_layers) if m not in cpu_layers)
    return CacheSizing(scope, (per,), (0,) * num_layers, (layers,), total)


def make_partitions(r: Resolved, sizing: CacheSizing, num_experts: int, next_use: np.ndarray | None,
                    access_keys: np.ndarray | None) -> list[CachePolicy]:
    """Fresh cache-policy instances, one per partition (each run starts cold)."""
    return [r.cache_cls(CacheContext(cap, num_experts, layers, next_use, access_keys), r.cache_opts)
            for cap, layers in zip(sizing.capacity, sizing.layers_of_part)]
