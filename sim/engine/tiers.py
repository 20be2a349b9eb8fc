"""The SSD tier: experts on NVMe, host memory as a second cache level (docs/tiers.md).

A machine whose host memory cannot hold every expert (Mixtral-8x7B bf16 is ~87 GiB of experts; a desktop has
32-64 GiB) reads the missing ones from the SSD that holds the model's files (llama.cpp's mmap, SE-MoE's
SSD-CPU-GPU hierarchy, FlexGen, MoE-Infinity). Here:

- Host memory for experts is `--host-memory-gib`, else `cpu.memory_gib` minus an OS reserve (OS_RESERVED_GIB)
  minus the dense weights (the runtime keeps its host copy, as llama.cpp's mapping of the whole file does).
  When every expert of the replayed model fits, the tier is not used: nothing changes, no NVMe traffic.
- The host tier is a cache of experts with a policy from the registry (`--host-policy`, default `lru`: the
  page cache). It sees only the GPU cache's misses (the GPU cache is the first level). A miss in both reads
  the expert from NVMe into host memory (admitted to the host tier) and then copies it to the GPU; with
  `nvme.gpudirect` it is read straight into its GPU buffer (GPUDirect Storage) and host memory is untouched.
- `--host-placement` says which experts are in host memory at t=0: none (cold page cache), first (the first
  experts of the file, layer by layer), popular (the most activated in the trace as served: an oracle, it
  reads the future).

The planner's actions gain a READ before the copy of each expert the host tier misses:

    (READ, buf, layer, expert, nbytes, direct)   read the expert from NVMe (into host memory, or with
                                                 `direct` into GPU buffer `buf`, replacing the H2D copy)

and the step timing plays it on the NVMe queue of the timeline (`Timeline.read`). It knows nothing of time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simmoe.engine.config import ReplayConfig
from simmoe.errors import InputError, param_ref
from simmoe.hw.profile import HwProfile, NvmeSpec
from simmoe.models.spec import ModelSpec
from simmoe.policies.base import CacheContext, CachePolicy, SystemPolicy, parse_options
from simmoe.policies.registry import get_policy

READ = 4  # the planner's action kinds are RUN, LOAD, FETCH, PREFETCH = 0..3 (planner.py)
GIB = 2**30
# Host memory the OS, the desktop and the runtime's own process need besides the model (estimate: a desktop
# Linux session with a browser closed uses 1.5-3 GiB; Python + torch + CUDA context another ~1-2 GiB).
OS_RESERVED_GIB = 4.0
TIER_FLAGS = ("host_memory_gib", "host_policy", "host_placement")


def nvme_read_us(nbytes: float, nvme: NvmeSpec) -> float:
    """Time of one read of `nbytes` from the SSD: split into requests of `request_kib`, `queue_depth` in
    flight. One request takes latency_us + its transfer; the drive delivers at most read_gbps; so the first
    request completes after latency_us + request / read_gbps and the rest stream at
    min(read_gbps, queue_depth * request / (latency_us + request / read_gbps))."""
    if nbytes <= 0:
        return 0.0
    bw = nvme.read_gbps * 1e3  # bytes per microsecond
    req = nvme.request_kib * 1024
    first = min(req, nbytes)
    per_req = nvme.latency_us + req / bw
    rate = min(bw, nvme.queue_depth * req / per_req)
    return nvme.latency_us + first / bw + (nbytes - first) / rate


@dataclass(frozen=True)
class TierPlan:
    """The SSD tier of a scenario, decided before the first step (immutable)."""

    active: bool  # False: every expert fits host memory (the tier is configured but moves nothing)
    host_bytes: int  # host memory for experts
    rule: str  # how host_bytes was decided
    capacity: int  # experts the host tier holds
    total_experts: int  # experts of the replayed model (MoE layers x experts)
    expert_bytes: int
    policy: str
    policy_cls: type[CachePolicy] | None
    policy_opts: Any
    placement: str
    reads_future: bool  # the placement reads the trace's future (popular)
    direct: bool  # nvme.gpudirect: misses read straight into GPU memory
    preload: tuple[int, ...]  # keys (layer * E + expert) in host memory at t=0
    read_us: float  # one whole expert read from NVMe


def plan_tier(trace_experts: np.ndarray, num_layers: int, spec: ModelSpec, hw: HwProfile, hw_name: str,
              cfg: ReplayConfig, expert_bytes: int) -> TierPlan | None:
    """The SSD tier of a run, or None where the profile has none (no nvme: section, or a device whose experts
    are never copied). Raises InputError for a tier setting that cannot have an effect."""
    given = [f for f in TIER_FLAGS if getattr(cfg, f) is not None]
    if hw.nvme is None or hw.gpu.unified_memory or hw.gpu.executes_on_host:
        if given:
            why = "has no nvme: section" if hw.nvme is None else \
                "is a device that reads experts in place (unified memory or the host's own cores)"
            raise InputError(None, None, f"the profile {hw_name} {why}: there is no SSD tier to configure",
                             param=given[0])
        return None
    if cfg.host_memory_gib is not None:
        host_bytes = int(cfg.host_memory_gib * GIB)
        rule = f"--host-memory-gib {cfg.host_memory_gib:g}"
    else:
        host_bytes = int((hw.cpu.memory_gib - OS_RESERVED_GIB) * GIB) - spec.dense_bytes()
        rule = (f"cpu.memory_gib {hw.cpu.memory_gib:g} - OS reserve {OS_RESERVED_GIB:g} GiB - dense weights "
                f"{spec.dense_bytes() / GIB:.2f} GiB")
    host_bytes = max(host_bytes, 0)
    capacity = host_bytes // expert_bytes
    total = num_layers * spec.num_experts
    policy = cfg.host_policy or "lru"
    cls = get_policy(policy, "cache", param="host_policy")
    if issubclass(cls, SystemPolicy) or cls.reads_future or cls.fixed_capacity is not None \
            or cls.claims_misses or any(cls.overrides(h) for h in ("on_routing", "on_step", "bind_routing")):
        raise InputError(None, None, f"{policy!r} is not a plain cache policy (the host tier sees "
                         "only expert keys: no routing, rows, oracle or fixed size); e.g. lru, fifo, lfu",
                         param="host_policy")
    opts = parse_options(cls.Options, {}, cls.name)
    capacity = min(capacity, total)
    placement = cfg.host_placement or "none"
    preload: tuple[int, ...] = ()
    cap = int(capacity)
    if placement == "first":
        preload = tuple(range(cap))
    elif placement == "popular":
        e = trace_experts.reshape(len(trace_experts), num_layers, -1)
        keys = (np.arange(num_layers)[None, :, None] * spec.num_experts + e)[e >= 0]
        counts = np.bincount(keys.astype(np.int64), minlength=total)
        order = np.lexsort((np.arange(total), -counts))  # most activated first, ties by key
        preload = tuple(int(k) for k in order[:cap])
    return TierPlan(active=total > capacity, host_bytes=host_bytes, rule=rule, capacity=cap,
                    total_experts=total, expert_bytes=expert_bytes, policy=cls.name, policy_cls=cls,
                    policy_opts=opts, placement=placement, reads_future=placement == "popular",
                    direct=hw.nvme.gpudirect, preload=preload, read_us=nvme_read_us(expert_bytes, hw.nvme))


def check_combinations(plan: TierPlan, *, placement: str | None, nested: bool, chunk_mb: float | None) -> None:
    """What an active tier does not model (one line each)."""
    if placement is not None:
        raise InputError(None, None, f"the placement policy {placement!r} computes experts on the CPU: "
                         "CPU experts with the SSD tier (experts not all in host memory) are not modelled",
                         param="placement")
    if nested:
        raise InputError(None, None, "per-access bit-widths (nested precision) are not modelled with "
                         "the SSD tier", param="precision")
    if chunk_mb is not None:
        raise InputError(None, None, "preemptible chunked prefetches are not modelled with the "
                         "SSD tier", param="prefetch_chunk_mb")


def check_parallel(trace_experts: np.ndarray, num_layers: int, spec: ModelSpec, hw: HwProfile, hw_name: str,
                   cfg: ReplayConfig, expert_bytes: int) -> None:
    """Several GPUs (parallel.py) share one host memory and one SSD: not modelled. Tier settings, or a model
    whose experts exceed host memory, are input errors there (not a tier silently left out)."""
    given = [f for f in TIER_FLAGS if getattr(cfg, f) is not None]
    if given:
        raise InputError(None, None, f"the SSD tier is not modelled with {param_ref('parallel')} "
                         f"{cfg.parallel} (several GPUs)", param=given[0])
    tier = plan_tier(trace_experts, num_layers, spec, hw, hw_name, cfg, expert_bytes)
    if tier is not None and tier.active:
        raise InputError(None, None, f"the experts ({tier.total_experts}) exceed host memory ({tier.capacity}: "
                         f"{tier.rule}): the SSD tier is not modelled with several GPUs", param="parallel")


class HostTier:
    """The host tier's state during a run: its cache policy, and the READs it adds to the planner's actions."""

    def __init__(self, plan: TierPlan, num_layers: int, num_experts: int, counts) -> None:
        self.plan = plan
        self.E = num_experts
        self.cap = plan.capacity
        self.cache = plan.policy_cls(CacheContext(plan.capacity, num_experts, tuple(range(num_layers))),
                                     plan.policy_opts)
        self._admit = plan.policy_cls.overrides("admit")
        for key in plan.preload:
            self.cache.insert(key, -1)
        self.counts = counts  # the planner's PlanCounts (a direct read is no H2D copy)
        self.t = 0
        self.hits = self.misses = self.evictions = 0
        self.nvme_bytes = 0
        self.peak = len(self.cache)

    def wrap(self, plan_layer):
        """The planner's plan_layer with each layer's and its prefetches' READs added."""
        expand = self.expand

        def planned(m: int):
            ops, cpu, pre = plan_layer(m)
            return expand(ops), cpu, expand(pre) if pre else pre
        return planned

    def access(self, key: int, nbytes: int) -> bool:
        """Look `key` up in host memory; a miss reads it from NVMe (admitted unless read directly)."""
        t = self.t
        self.t = t + 1
        cache = self.cache
        if cache.find(key, t):
            self.hits += 1
            return True
        self.misses += 1
        self.nvme_bytes += nbytes
        if not self.plan.direct and self.cap and (not self._admit or cache.admit(key, t)):
            if len(cache) >= self.cap:
                cache.evict(cache.to_evict(t))
                self.evictions += 1
            cache.insert(key, t)
            if len(cache) > self.peak:
                self.peak = len(cache)
        return False

    def expand(self, ops: list[tuple]) -> list[tuple]:
        from simmoe.engine.planner import FETCH, LOAD, PREFETCH, RUN

        out: list[tuple] = []
        direct = self.plan.direct
        for op in ops:
            kind = op[0]
            if kind == LOAD:
                nbytes = op[6]
            elif kind == FETCH or kind == PREFETCH:
                nbytes = op[4]
            else:
                out.append(op)
                continue
            buf, m, e = op[1], op[2], op[3]
            if self.access(m * self.E + e, nbytes):
                out.append(op)
                continue
            out.append((READ, buf, m, e, nbytes, direct))
            if not direct:
                out.append(op)
                continue
            self.counts.bytes_h2d -= nbytes  # read into the GPU buffer: no H2D copy
            if kind == LOAD:
                out.append((RUN, buf, m, e, op[4], op[5]))
        return out

    def snapshot(self) -> tuple[int, int, int]:
        return self.hits, self.misses, self.nvme_bytes

    def summary(self, nvme_busy: float) -> dict[str, Any]:
        p = self.plan
        n = self.hits + self.misses
        return {**describe(p), "host_hits": self.hits, "host_misses": self.misses,
                "host_hit_rate": self.hits / n if n else 0.0, "host_evictions": self.evictions,
                "nvme_reads": self.misses, "nvme_bytes": self.nvme_bytes, "nvme_busy": nvme_busy,
                "host_occupancy": len(self.cache), "host_peak_occupancy": self.peak}


# The keys of the summary's `host_tier` block, in order (results.summary_keys(tier=True)).
SUMMARY_KEYS = ("active", "host_memory_gib", "host_memory_rule", "host_capacity_experts", "experts", "policy",
                "placement", "placement_reads_future", "gpudirect", "expert_read_ms", "host_hits", "host_misses",
                "host_hit_rate", "host_evictions", "nvme_reads", "nvme_bytes", "nvme_busy", "host_occupancy",
                "host_peak_occupancy")


def tier_summary(plan: TierPlan | None, cfg: ReplayConfig, tier: HostTier | None) -> dict[str, Any] | None:
    """The summary's `host_tier` block (its busy fraction filled in by Result.build): when the tier is used, or
    when a tier setting was given (a sweep over host memory gets the block in every row). Otherwise None, so
    that runs which never touch the SSD have the summary they had before the tier existed."""
    if plan is None or not (plan.active or any(getattr(cfg, f) is not None for f in TIER_FLAGS)):
        return None
    return tier.summary(0.0) if tier is not None else inactive_summary(plan)


def describe(p: TierPlan) -> dict[str, Any]:
    """The tier's configuration, as the summary reports it."""
    return {"active": p.active, "host_memory_gib": p.host_bytes / GIB, "host_memory_rule": p.rule,
            "host_capacity_experts": p.capacity, "experts": p.total_experts, "policy": p.policy,
            "placement": p.placement, "placement_reads_future": p.reads_future, "gpudirect": p.direct,
            "expert_read_ms": p.read_us / 1e3}


def inactive_summary(p: TierPlan) -> dict[str, Any]:
    """A configured tier that every expert fits above: nothing read, nothing missed."""
    return {**describe(p), "host_hits": 0, "host_misses": 0, "host_hit_rate": None, "host_evictions": 0,
            "nvme_reads": 0, "nvme_bytes": 0, "nvme_busy": 0.0, "host_occupancy": p.total_experts,
            "host_peak_occupancy": p.total_experts}


__all__ = ["READ", "HostTier", "TierPlan", "check_combinations", "check_parallel", "nvme_read_us", "plan_tier",
           "tier_summary"]
