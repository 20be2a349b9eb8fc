"""Timing of a step: the dense work of every layer, and the planner's actions turned into copies and kernels
on a stream timeline (the recurrence, or SimPy as the reference).

Per transformer layer: the attention kernels; for a MoE layer the router, the shared experts, a synchronising
read of the routing to the host (what eager offloading implementations do), the layer's expert actions in
the planner's order, the CPU experts (activations to the host, the experts, the result back), the combine,
then the prefetch copies the planner proposed. Each GPU buffer remembers the copy that filled it (`ready`)
and the kernels that last read it (`last`): a kernel waits for its buffer's copy, and a copy that overwrites
a buffer waits until the kernels reading the previous contents are done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from simmoe.engine.planner import FETCH, LOAD, RUN, AccessPlanner
from simmoe.engine.scenario import Scenario
from simmoe.engine.schedule import DECODE, Step
from simmoe.engine.timeline import D2H, H2D


@dataclass(frozen=True)
class DenseCosts:
    """A step's kernel counts and the time of each kernel of its dense parts (the same in every layer)."""

    ka: int  # kernels per attention block
    kr: int  # per router
    kd: int  # per dense FFN / shared experts
    ks: int  # per step (embedding, lm_head, sampling)
    attn_each: float
    router_each: float
    shared_each: float
    dense_each: float
    extra_each: float


class StepTiming:
    def __init__(self, sc: Scenario, tl, num_buffers: int, chunk_mb: float | None) -> None:
        self.sc = sc
        self.tl = tl
        self.ready: list = [None] * num_buffers  # handle of the copy that filled each buffer
        self.last: list = [None] * num_buffers  # handle of the last kernels that read it (None: none since)
        self.chunk_mb = chunk_mb
        self._copy_us: dict[int, float] = {}
        self._gpu_each: dict[tuple[int, int], float] = {}
        self._dense: dict[tuple[int, int, int], DenseCosts] = {}  # (tokens, context tokens, sampled rows)
        cfg = sc.cfg
        self.on_compute = cfg.copy_stream == "compute"
        self.blocking = cfg.host_memory == "pageable"

    def copy_us(self, nbytes: int) -> float:
        x = self._copy_us.get(nbytes)
        if x is None:
            x = self._copy_us[nbytes] = self.sc.costs.h2d_us(nbytes)
        return x

    def _each(self, nt: int, wb: int) -> float:
        """Time of each of an expert's kernels at `nt` tokens (reading `wb` bytes of weights; 0: all)."""
        x = self._gpu_each.get((nt, wb))
        if x is None:
            costs = self.sc.costs
            us = costs.expert_gpu_us(nt) if not wb else costs.expert_gpu_us_at(nt, wb)
            x = self._gpu_each[(nt, wb)] = us / self.sc.hw.host.kernels_per_expert
        return x

    def dense_costs(self, step: Step) -> DenseCosts:
        sc = self.sc
        tokens = len(step.rows)
        ctx_tokens = int((sc.ri.position[step.rows] + 1).sum())
        sampled = len(step.requests) if step.kind == DECODE else 1
        d = self._dense.get((tokens, ctx_tokens, sampled))
        if d is None:
            costs, host = sc.costs, sc.hw.host
            ka, kr, kd = host.kernels_per_attention, host.kernels_per_router, host.kernels_per_dense_ffn
            ks = host.kernels_per_step
            d = self._dense[(tokens, ctx_tokens, sampled)] = DenseCosts(
                ka, kr, kd, ks,
                attn_each=costs.attention_us(tokens, ctx_tokens) / max(ka, 1),
                router_each=costs.router_us(tokens) / max(kr, 1),
                shared_each=costs.shared_experts_us(tokens) / max(kd, 1),
                dense_each=costs.dense_ffn_us(tokens) / max(kd, 1) if sc.spec.num_dense_layers else 0.0,
                extra_each=costs.step_extra_us(sampled) / max(ks, 1))
        return d

    def play(self, step: Step, i: int, planner: AccessPlanner) -> None:
        """Issue step i's work on the timeline (the planner decides each layer's expert actions)."""
        sc, tl = self.sc, self.tl
        hw, spec = sc.hw, sc.spec
        rec = tl.record
        planner.begin_step(step, i)
        d = self.dense_costs(step)
        ka, kr, kd, ks = d.ka, d.kr, d.kd, d.ks
        attn_each, router_each, shared_each, dense_each, extra_each = (d.attn_each, d.router_each, d.shared_each,
                                                                       d.dense_each, d.extra_each)
        moe_of = sc.moe_of
        if ks:
            tl.kernels(ks // 2 or 1, extra_each, name="embed")
        for li in range(spec.num_layers):
            if ka:
                tl.kernels(ka, attn_each, name=f"L{li} attention" if rec else "")
            m = moe_of[li]
            if m < 0:
                tl.kernels(kd, dense_each, name=f"L{li} ffn" if rec else "")
                continue
            r_end = tl.kernels(kr, router_each, name=f"L{li} router" if rec else "")
            if shared_each:
                tl.kernels(kd, shared_each, name=f"L{li} shared experts" if rec else "")
            tl.sync(r_end, name=f"L{li} routing to host" if rec else "")
            ops, cpu, pre = planner.plan_layer(m)
            self.issue(ops, li)
            cpu_done = self._cpu_experts(cpu, r_end, li) if cpu else None
            tl.kernels(1, hw.gpu.kernel_min_us, after=cpu_done, name=f"L{li} combine" if rec else "", wait="cpu")
            if pre:
                self._prefetch(pre)
        if ks:
            tl.kernels(ks - (ks // 2 or 1) or 1, extra_each, name="lm_head+sample")
        tl.sync(name="token to host")

    def issue(self, ops: list[tuple], li: int) -> None:
        """A layer's expert actions, in order."""
        tl = self.tl
        rec = tl.record
        ready, last = self.ready, self.last
        kpe = self.sc.hw.host.kernels_per_expert
        gpu_each = self._gpu_each
        on_compute, blocking = self.on_compute, self.blocking
        for op in ops:
            kind = op[0]
            if kind == RUN:
                _, buf, _m, e, nt, wb = op
                each = gpu_each.get((nt, wb))
                if each is None:
                    each = self._each(nt, wb)
                last[buf] = tl.kernels(kpe, each, after=ready[buf], name=f"L{li} e{e}" if rec else "", cat="expert")
            elif kind == LOAD:
                _, buf, _m, e, nt, wb, nbytes = op
                free = last[buf]
                if free is None:
                    free = ready[buf]
                dep = ready[buf] = tl.copy(self.copy_us(nbytes), H2D, after=free, on_compute=on_compute,
                                           blocking=blocking, name=f"L{li} e{e}" if rec else "")
                each = gpu_each.get((nt, wb))
                if each is None:
                    each = self._each(nt, wb)
                last[buf] = tl.kernels(kpe, each, after=dep, name=f"L{li} e{e}" if rec else "", cat="expert")
            elif kind == FETCH:
                _, buf, _m, e, nbytes, overwrite, have, need = op
                free = None
                if overwrite:
                    free = last[buf]
                    if free is None:
                        free = ready[buf]
                    last[buf] = None
                ready[buf] = tl.copy(self.copy_us(nbytes), H2D, after=free, on_compute=on_compute,
                                     blocking=blocking, name=f"L{li} e{e} bits {have}->{need}" if rec else "")
            else:
                raise ValueError(f"unknown action {op!r}")  # prefetches come apart, after the combine

    def _prefetch(self, pre: list[tuple]) -> None:
        tl = self.tl
        rec = tl.record
        ready, last = self.ready, self.last
        chunk_mb = self.chunk_mb
        for op in pre:
            _, buf, layer, e, nbytes = op
            free = last[buf]
            if free is None:
                free = ready[buf]
            last[buf] = None
            name = f"prefetch L{layer} e{e}" if rec else ""
            if chunk_mb is None:
                ready[buf] = tl.copy(self.copy_us(nbytes), H2D, after=free, name=name)
            else:  # ProMoE: chunks a demand copy can overtake; each chunk pays the PCIe latency
                n = max(math.ceil(nbytes / (chunk_mb * 2**20)), 1)
                us = n * self.sc.costs.h2d_us(nbytes / n)
                ready[buf] = tl.copy(us, H2D, after=free, name=name, preemptible=True, chunks=n)

    def _cpu_experts(self, jobs: list[tuple[int, int]], after, li: int):
        """kTransformers-style: one D2H of the layer's activations, the CPU computes its experts in turn,
        one H2D of the combined result."""
        tl, costs = self.tl, self.sc.costs
        rec = tl.record
        act = costs.activation_bytes(max(nt for _, nt in jobs))
        done = tl.copy(costs.d2h_us(act), D2H, after=after, name=f"L{li} activations to host" if rec else "")
        for e, nt in jobs:
            done = tl.cpu(costs.expert_cpu_us(nt), after=done, name=f"L{li} e{e} (cpu)" if rec else "")
        return tl.copy(costs.h2d_us(act, pinned=True), H2D, after=done,
                       name=f"L{li} cpu result to gpu" if rec else "")
