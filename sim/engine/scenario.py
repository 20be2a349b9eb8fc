"""The prepared scenario of a run: everything the planner, the timing and the results need that follows from
the inputs alone (trace, hardware profile, policy set, replay configuration), computed once and never
changed afterwards.

`prepare()` is a pure function of its inputs: it selects and cycles requests, applies a routing policy
(which changes the served experts and reports fidelity) and a precision policy (which changes the model's
expert format), builds the schedule of a closed-loop run, sizes the expert cache in the GPU memory the
model leaves free, and precomputes what oracle policies read. Stateful policy instances (cache partitions,
prefetcher, placement) are made from it by each `AccessPlanner`, so a scenario can be played any number of
times with identical results.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from simmoe.engine.checks import warn_suspicious
from simmoe.engine.config import ReplayConfig
from simmoe.engine.costs import CostModel
from simmoe.engine.memory import DeviceShare, MemoryPlan, fixed_plan
from simmoe.engine.schedule import RowIndex, Step, static_schedule, step_experts
from simmoe.engine.serving import arrival_times_s, cycle_trace
from simmoe.engine.setup import CacheSizing, Resolved, needs_staging, resolve, size_cache
from simmoe.engine.tiers import TierPlan, check_combinations, plan_tier
from simmoe.errors import InputError
from simmoe.hw.profile import HwProfile
from simmoe.models.spec import ModelSpec
from simmoe.policies.base import PolicySet, PrecisionPolicy, RoutingPolicy
from simmoe.runtime.profile import RuntimeProfile, load_runtime
from simmoe.trace.format import Trace

NEVER = np.iinfo(np.int64).max


def next_use_of(keys: np.ndarray) -> np.ndarray:
    """For each access t, the index of the next access to the same key (NEVER if none). Vectorised."""
    n = len(keys)
    order = np.lexsort((np.arange(n), keys))
    nxt = np.full(n, NEVER, dtype=np.int64)
    same = keys[order[1:]] == keys[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


@dataclass(frozen=True)
class NestedBits:
    """Per-access bit-widths of a nested (matryoshka) precision policy, e.g. D2MoE's: each (row, layer, slot)
    of the trace needs `bits[row, layer, slot]`; an expert resident at one level holds every lower one."""

    precision: PrecisionPolicy
    bits: np.ndarray  # like trace.experts
    levels: tuple[int, ...]  # ascending
    io_order: str  # "hebf" | "hottest" | "sequential"


@dataclass(frozen=True)
class Scenario:
    trace: Trace  # as served: requests selected / cycled, rerouted by a routing policy
    spec: ModelSpec  # with the precision policy applied
    hw: HwProfile
    hw_name: str
    runtime: RuntimeProfile
    cfg: ReplayConfig
    host_memory: str  # "pinned" | "pageable": the replay setting, else the runtime's
    copy_stream: str  # "separate" | "compute": the replay setting, else the runtime's
    policies: Resolved
    router: RoutingPolicy | None  # the routing policy instance after rerouting (caches may follow it)
    routing_fidelity: float
    nested: NestedBits | None
    ri: RowIndex
    online: bool  # arrivals: steps are made as requests arrive
    arrival_us: np.ndarray  # per request, in ri order
    steps: tuple[Step, ...]  # the closed-loop schedule (empty when online)
    costs: CostModel
    memory: MemoryPlan  # fixed part, with the cache's slots filled in
    cache: CacheSizing
    cpu_layers: frozenset[int]  # MoE layers a placement keeps on the CPU (no cache slots)
    moe_of: tuple[int, ...]  # transformer layer -> MoE layer index, -1 for dense layers
    has_null: bool  # the trace has -1 expert slots
    # oracle policies only: each closed-loop step's experts, and the run's access keys and next uses
    step_experts: tuple | None = None
    access_keys: np.ndarray | None = None
    next_use: np.ndarray | None = None
    # the SSD tier (tiers.py): None where the profile has none; `.active` when the experts exceed host memory
    tier: TierPlan | None = None

    @property
    def num_layers(self) -> int:
        """MoE layers in the trace."""
        return self.trace.num_layers

    @property
    def num_experts(self) -> int:
        return self.spec.num_experts

    def experts_of(self, i: int, step: Step) -> tuple[list[list[int]], list[list[int]]]:
        """Per MoE layer, step `i`'s experts (first-appearance order) and their token counts."""
        if self.step_experts is not None:
            return self.step_experts[i]
        return step_experts(self.trace.experts, step.rows, self.spec.num_experts, self.has_null)


def _frozen(a: np.ndarray | None) -> np.ndarray | None:
    if a is not None:
        a.setflags(write=False)
    return a


def prepare(trace: Trace, hw: HwProfile, pset: PolicySet | None = None, cfg: ReplayConfig | None = None,
            hw_name: str | None = None, runtime: RuntimeProfile | None = None,
            share: DeviceShare | None = None, cpu_layers: frozenset[int] | None = None) -> Scenario:
    """Everything a run of `pset` on `trace` and `hw` under `cfg` with `runtime` (default: the system's
    runtime, else `generic`) needs before the first step. Raises InputError for a configuration that cannot
    run (does not fit, incompatible policies). `share`: the part of the model this GPU holds when several
    run it (sim/engine/parallel.py; None: the whole model); `cpu_layers`: the MoE layers a placement keeps on
    the CPU when the caller numbers them (a pipeline stage's share of the model's; None: the placement's)."""
    cfg = cfg or ReplayConfig()
    r = resolve(pset or PolicySet())
    if runtime is None:
        runtime = load_runtime(r.runtime)
    hw_name = hw_name or hw.name
    bypass = r.placement_cls is not None and r.placement_cls.bypass_cache
    if hw.gpu.unified_memory and r.cache_cls.fixed_capacity != "all" and not bypass:
        raise InputError(hw_name, "gpu.unified_memory", "the GPU and the host share one memory: experts are read "
                         "where they are, never copied; use --policy resident (the model must fit that memory) or "
                         "a CPU placement")
    tr = trace
    if cfg.max_requests is not None:
        tr = tr.select(requests=tr.request_ids[: cfg.max_requests])
    if cfg.requests is not None:  # before rerouting: stateful routing (virtual experts) sees served rows
        tr = cycle_trace(tr, cfg.requests)
    fidelity = 1.0
    router = None
    if r.routing_cls is not None:  # a different model output: served experts change, report fidelity
        router = r.routing_cls(r.routing_opts)
        experts, fidelity = router.reroute(tr.experts, tr.gates)
        tr = dataclasses.replace(tr, experts=experts, predicted=None)
    spec = with_weights(tr.spec, runtime)
    dequant = 0.0
    nested = None
    if r.precision_cls is not None:
        if runtime.weights.experts is not None:
            raise InputError(None, None, f"the runtime {runtime.name} stores experts as "
                             f"{runtime.weights.experts}: a precision policy cannot set them too", param="precision")
        prec = r.precision_cls(r.precision_opts)
        spec = prec.apply(spec)
        dequant = prec.dequant_flops_per_param()
        nested = _nested_bits(prec, tr, r)
    _check_combinations(r, nested)
    L, E = tr.num_layers, spec.num_experts
    ri = RowIndex(tr.request, tr.phase)
    online = cfg.arrivals != "closed"
    arrival_us = arrival_times_s(cfg.arrivals, ri.ids, tr, cfg.rate, cfg.cv, cfg.seed) * 1e6
    if online:
        if r.reads_future:
            raise InputError(None, None, "oracle policies (they read the future) need a closed-loop "
                             "replay: with arrivals the step sequence depends on the timing", param="arrivals")
        steps: tuple[Step, ...] = ()
        npre = int(ri.prefill_len.max())
        chunk = min(cfg.prefill_chunk or npre, cfg.max_batched_tokens or npre)
        max_step_tokens = max(cfg.batch, chunk, 1)
    else:
        steps = tuple(static_schedule(ri, cfg.batch, cfg.prefill_chunk, cfg.max_batched_tokens))
        max_step_tokens = max(len(s.rows) for s in steps)
    has_null = bool((tr.experts < 0).any())
    max_rows = int((ri.stops - ri.starts).max())
    host_memory = cfg.host_memory or runtime.experts.host_memory
    copy_stream = cfg.copy_stream or runtime.experts.copy_stream
    costs = CostModel(spec, hw, runtime, pinned=host_memory == "pinned", dequant_flops_per_param=dequant)
    staging = cfg.staging_buffers if needs_staging(r) else 0
    if runtime.experts.fetch == "layer":  # every expert of a layer is copied in each time the layer runs
        if r.cache_cls.fixed_capacity != "none":
            raise InputError(None, None, f"{runtime.name} copies every expert of a layer each time it "
                             f"runs and keeps none (experts.fetch: layer): it needs the cache policy ondemand",
                             param="runtime")
        staging = max(staging, E)
    memory = fixed_plan(spec, hw, batch=cfg.batch, max_request_rows=max_rows, max_step_tokens=max_step_tokens,
                        staging_buffers=staging, hw_name=hw_name, share=share)
    if cpu_layers is None:
        cpu_layers = r.placement_cls(r.placement_opts).cpu_layers(L) if r.placement_cls else frozenset()
    sizing = size_cache(r, memory, L, E, cpu_layers)
    memory = dataclasses.replace(memory, cache_slots=sizing.total_slots)
    step_ex = keys = next_use = None
    if r.reads_future:
        step_ex = tuple(step_experts(tr.experts, s.rows, E, has_null) for s in steps)
        keys = np.fromiter((m * E + e for ex, _ in step_ex for m, lay in enumerate(ex) for e in lay),
                           dtype=np.int64)
        next_use = next_use_of(keys)
    # the SSD tier of the whole model's experts (a GPU of several: parallel.py refuses an active one)
    tier = plan_tier(tr.experts, L, spec, hw, hw_name, cfg, memory.expert_bytes) if share is None else None
    if tier is not None and tier.active:
        check_combinations(tier, placement=r.placement_cls.name if r.placement_cls else None,
                           nested=nested is not None, chunk_mb=cfg.prefetch_chunk_mb)
    moe_of = [-1] * spec.num_layers
    for m, li in enumerate(spec.moe_layers):
        moe_of[li] = m
    sc = Scenario(trace=tr, spec=spec, hw=hw, hw_name=hw_name, runtime=runtime, cfg=cfg,
                    host_memory=host_memory, copy_stream=copy_stream, policies=r, router=router,
                    routing_fidelity=fidelity, nested=nested, ri=ri, online=online,
                    arrival_us=_frozen(arrival_us), steps=steps, costs=costs, memory=memory, cache=sizing,
                    cpu_layers=frozenset(cpu_layers), moe_of=tuple(moe_of), has_null=has_null,
                    step_experts=step_ex, access_keys=_frozen(keys), next_use=_frozen(next_use), tier=tier)
    warn_suspicious(sc)  # valid but probably not what was meant: said once, the run goes on
    return sc


def with_weights(spec: ModelSpec, runtime: RuntimeProfile) -> ModelSpec:
    """The model as the runtime stores it: its weight formats' bits per weight (None: the model's own)."""
    dense, experts = runtime.format("dense"), runtime.format("experts")
    kw = {}
    if dense is not None:
        kw["dense_bits"] = dense.bits
    if experts is not None:
        kw["expert_bits"] = experts.bits
    return dataclasses.replace(spec, **kw) if kw else spec


def _nested_bits(prec: PrecisionPolicy, tr: Trace, r: Resolved) -> NestedBits | None:
    """Per-access bit-widths, for precision policies that override `slot_bits` (nested / matryoshka
    quantisation). Cache slots stay sized for the top bit-width (the policy's `apply`)."""
    if type(prec).slot_bits is PrecisionPolicy.slot_bits:
        return None
    bits = prec.slot_bits(tr.experts, tr.gates)
    if bits is None:
        return None
    pl = r.placement_cls
    if pl is not None and pl.layer_wise:
        raise InputError(None, None, f"precision {prec.name} (per-access bit-widths) does not "
                         f"combine with the layer-wise placement {pl.name}", param="placement")
    return NestedBits(prec, _frozen(np.asarray(bits)), tuple(prec.levels()), prec.io_order())


def _check_combinations(r: Resolved, nested: NestedBits | None) -> None:
    cls, pl = r.cache_cls, r.placement_cls
    if cls.claims_misses and (pl is not None and pl.layer_wise or nested is not None):
        other = f"the layer-wise placement {pl.name}" if pl is not None and pl.layer_wise else "nested precision"
        raise InputError(None, None, f"cache {cls.name} claims its misses before placement: it does "
                         f"not combine with {other}", param="policy")

