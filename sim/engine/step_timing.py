"""Timing of a step: the dense work of every layer, and the planner's actions turned into copies and kernels
on a stream timeline (the recurrence, or SimPy as the reference), as the runtime profile runs them.

Per step: the runtime's host work (a captured CUDA graph's launch, its bookkeeping), the embedding kernels.
Per transformer layer: the attention kernels; for a MoE layer the router, the shared experts, the
synchronising reads of the routing to the host, the layer's host bookkeeping, the layer's expert actions in
the planner's order (per expert: its syncs and host work, then its copy if it is loaded now, then its
kernels; a fused MoE runtime launches one kernel group for all of them), the CPU experts (activations to the
host, the experts, the result back), the combine, then the prefetch copies the planner proposed. Per step
again: lm_head and sampling, the read-backs of the sampled token.

Each GPU buffer remembers the copy that filled it (`ready`) and the kernels that last read it (`last`): a
kernel waits for its buffer's copy, and a copy that overwrites a buffer waits until the kernels reading the
previous contents are done (and, with a write-back runtime, until the evicted expert is copied back out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from simmoe.engine.planner import FETCH, LOAD, RUN, AccessPlanner
from simmoe.engine.scenario import Scenario
from simmoe.engine.schedule import DECODE, Step
from simmoe.engine.tiers import READ, nvme_read_us
from simmoe.engine.timeline import D2H, H2D, HostCosts


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


def host_costs(sc: Scenario) -> HostCosts:
    """The host's costs for this runtime on this machine (the launch cost of steps outside graphs)."""
    h, rh = sc.hw.host, sc.runtime.host
    launch = h.launch_overhead_us if rh.launch == "eager" else h.native_launch_us
    if rh.launch_scale != 1.0:
        launch *= rh.launch_scale
    return HostCosts(launch_us=launch, copy_issue_us=h.copy_issue_us, sync_us=h.sync_us)


class StepTiming:
    def __init__(self, sc: Scenario, tl, planner: AccessPlanner, chunk_mb: float | None) -> None:
        self.sc = sc
        self.tl = tl
        n = planner.num_buffers
        self.ready: list = [None] * n  # handle of the copy that filled each buffer
        self.last: list = [None] * n  # handle of the last kernels that read it (None: none since)
        # cache slots holding an expert (a write-back runtime copies it out before the slot is refilled)
        self.held = [False] * n
        for _, buf in planner.preloaded:
            self.held[buf] = True
        self.cache_buffers = planner.staging_first  # buffers below this are cache slots, the rest staging
        self.chunk_mb = chunk_mb
        self._copy_us: dict[int, float] = {}
        self._gpu_each: dict[tuple[int, int], float] = {}
        self._dense: dict[tuple[int, int, int], DenseCosts] = {}  # (tokens, context tokens, sampled rows)
        self.on_compute = sc.copy_stream == "compute"
        self.blocking = sc.host_memory == "pageable"
        rt = sc.runtime
        self.rh, self.rk, self.rx = rt.host, rt.kernels, rt.experts
        self.launch_us = tl.host.launch_us  # outside captured graphs
        # the SSD tier (tiers.py): reads into host memory the next copy into a buffer waits for
        self.tiered = sc.tier is not None and sc.tier.active
        self.read_ready: dict[int, list] = {}
        self._read_us: dict[int, float] = {}

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
            x = self._gpu_each[(nt, wb)] = us / max(self.rk.per_expert, 1)
        return x

    def expert_launches(self, step: Step) -> int:
        """Kernels one expert call launches in this step (gathers and scatters when it has several tokens)."""
        k = self.rk
        return k.per_expert + (k.per_expert_gather if len(step.rows) > 1 else 0)

    def dense_costs(self, step: Step) -> DenseCosts:
        sc = self.sc
        tokens = len(step.rows)
        ctx = sc.ri.position[step.rows] + 1
        # KV tokens the step's attention reads: a padded batch reads the longest sequence's for every one
        ctx_tokens = int(ctx.max()) * tokens if self.rk.attention == "padded" and step.kind == DECODE \
            else int(ctx.sum())
        sampled = len(step.requests) if step.kind == DECODE else 1
        d = self._dense.get((tokens, ctx_tokens, sampled))
        if d is None:
            costs, k = sc.costs, self.rk
            ka, kr, kd, ks = k.per_attention, k.per_router, k.per_dense_ffn, k.per_step
            d = self._dense[(tokens, ctx_tokens, sampled)] = DenseCosts(
                ka, kr, kd, ks,
                attn_each=costs.attention_us(tokens, ctx_tokens) / max(ka, 1),
                router_each=costs.router_us(tokens) / max(kr, 1),
                shared_each=costs.shared_experts_us(tokens) / max(kd, 1),
                dense_each=costs.dense_ffn_us(tokens) / max(kd, 1) if sc.spec.num_dense_layers else 0.0,
                extra_each=costs.step_extra_us(sampled) / max(ks, 1))
        return d

    def graphed(self, step: Step) -> bool:
        """Whether the step replays captured CUDA graphs (no per-kernel launch cost on the host)."""
        return len(step.rows) <= self.rh.graphs_max_tokens

    def begin_dense_step(self, step: Step, tl) -> DenseCosts:
        """The step's dense costs, and its start on the host: the launch mode (a captured graph replays the
        step's kernels without per-kernel launch cost), the runtime's per-step bookkeeping, the embedding."""
        d = self.dense_costs(step)
        graphed = self.graphed(step)
        tl.host.launch_us = 0.0 if graphed else self.launch_us
        if graphed:
            tl.host_work(self.sc.hw.host.graph_launch_us, name="launch the step's CUDA graph")
        if self.rh.per_step_us:
            tl.host_work(self.rh.per_step_us, name="step bookkeeping")
        if d.ks:
            tl.kernels(d.ks // 2 or 1, d.extra_each, name="embed")
        return d

    def layer_before_experts(self, tl, d: DenseCosts, li: int, moe: bool):
        """Layer li's work before its experts: bookkeeping and attention; then a dense layer's FFN (returns
        None), or a MoE layer's router, shared experts, routing read-backs and bookkeeping (returns the
        router's handle, what the experts and CPU experts wait for)."""
        rh, rec = self.rh, tl.record
        if rh.per_layer_us:
            tl.host_work(rh.per_layer_us, name=f"L{li} bookkeeping" if rec else "")
        if d.ka:
            tl.kernels(d.ka, d.attn_each, name=f"L{li} attention" if rec else "")
        if not moe:
            tl.kernels(d.kd, d.dense_each, name=f"L{li} ffn" if rec else "")
            return None
        r_end = tl.kernels(d.kr, d.router_each, name=f"L{li} router" if rec else "")
        if d.shared_each:
            tl.kernels(d.kd, d.shared_each, name=f"L{li} shared experts" if rec else "")
        for _ in range(rh.syncs_per_moe_layer):
            tl.sync(r_end, name=f"L{li} routing to host" if rec else "")
        if rh.per_moe_layer_us:
            tl.host_work(rh.per_moe_layer_us, name=f"L{li} routing bookkeeping" if rec else "")
        return r_end

    def play(self, step: Step, i: int, planner: AccessPlanner) -> None:
        """Issue step i's work on the timeline (the planner decides each layer's expert actions)."""
        sc, tl = self.sc, self.tl
        hw, spec, rh = sc.hw, sc.spec, self.rh
        rec = tl.record
        planner.begin_step(step, i)
        d = self.begin_dense_step(step, tl)
        for li in range(spec.num_layers):
            m = sc.moe_of[li]
            r_end = self.layer_before_experts(tl, d, li, m >= 0)
            if m < 0:
                continue
            ops, cpu, pre = planner.plan_layer(m)
            if self.rk.fused:
                self.issue_fused(ops, li)
            else:
                self.issue(ops, li, self.expert_launches(step))
            cpu_done = self._cpu_experts(cpu, r_end, li) if cpu else None
            tl.kernels(1, hw.gpu.kernel_min_us, after=cpu_done, name=f"L{li} combine" if rec else "", wait="cpu")
            if pre:
                self._prefetch(pre)
        if d.ks:
            tl.kernels(d.ks - (d.ks // 2 or 1) or 1, d.extra_each, name="lm_head+sample")
        for _ in range(max(rh.syncs_per_step, 1)):  # the step ends when its token is on the host
            tl.sync(name="token to host")

    def _before_expert(self, li: int, e: int) -> None:
        """An eager loop's per-expert host work: its synchronising read-backs, then its bookkeeping."""
        tl, rh = self.tl, self.rh
        rec = tl.record
        for _ in range(rh.syncs_per_expert):
            tl.sync(name=f"L{li} e{e} index read-back" if rec else "")
        if rh.per_expert_us:
            tl.host_work(rh.per_expert_us, name=f"L{li} e{e} bookkeeping" if rec else "")

    def _load(self, buf: int, nbytes: int, overwrite: bool, name: str):
        """Copy `nbytes` into `buf` (a write-back first when the runtime copies the evicted expert out); the
        copy unit may split it. Returns the handle of the last copy."""
        tl, rh = self.tl, self.rh
        free = None
        if overwrite:
            free = self.last[buf]
            if free is None:
                free = self.ready[buf]
            self.last[buf] = None
            if self.rx.writeback and self.held[buf] and buf < self.cache_buffers:
                free = tl.copy(self.sc.costs.d2h_us(nbytes), D2H, after=free, on_compute=self.on_compute,
                               blocking=self.blocking, name=f"{name} write back" if tl.record else "")
            self.held[buf] = True
        n = self.rx.copies_per_expert
        us = self.copy_us(nbytes) if n == 1 else self.copy_us(nbytes // n)
        reads = self.read_ready.pop(buf, None) if self.read_ready else None  # the SSD tier's, piece by piece
        for i in range(n):
            dep = free if reads is None else tl.join(free, reads[i])
            done = tl.copy(us, H2D, after=dep, on_compute=self.on_compute, blocking=self.blocking, name=name)
            if rh.per_copy_us:
                tl.host_work(rh.per_copy_us, name=f"{name} copy bookkeeping" if tl.record else "")
        self.ready[buf] = done
        return done

    def issue(self, ops: list[tuple], li: int, kpe: int | None = None) -> None:
        """A layer's expert actions, in order (`kpe` kernels per expert; default the runtime's loop)."""
        tl = self.tl
        rec = tl.record
        ready, last = self.ready, self.last
        loop = self.rk.per_expert
        kpe = kpe or loop
        gpu_each = self._gpu_each
        per_expert = self.rh.syncs_per_expert or self.rh.per_expert_us
        for op in ops:
            kind = op[0]
            if kind == RUN:
                _, buf, _m, e, nt, wb = op
                if per_expert:
                    self._before_expert(li, e)
                dep = ready[buf]
            elif kind == LOAD:
                _, buf, _m, e, nt, wb, nbytes = op
                if per_expert:
                    self._before_expert(li, e)
                dep = self._load(buf, nbytes, True, f"L{li} e{e}" if rec else "")
            elif kind == FETCH:
                _, buf, _m, e, nbytes, overwrite, have, need = op
                name = (f"L{li} e{e} bits {have}->{need}" if need else f"L{li} e{e}") if rec else ""
                self._load(buf, nbytes, overwrite, name)
                continue
            elif kind == READ:
                self._read(op)
                continue
            else:
                raise ValueError(f"unknown action {op!r}")  # prefetches come apart, after the combine
            each = gpu_each.get((nt, wb))
            if each is None:
                each = self._each(nt, wb)
            if kpe != loop:  # then the gather and scatter kernels: each moves the expert's tokens' activations
                last[buf] = tl.kernels(loop, each, after=dep, name=f"L{li} e{e}" if rec else "", cat="expert")
                move = self.sc.costs.gather_each_us(nt, kpe - loop)
                last[buf] = tl.kernels(kpe - loop, move, name=f"L{li} e{e} gather/scatter" if rec else "",
                                       cat="expert")
            else:
                last[buf] = tl.kernels(kpe, each, after=dep, name=f"L{li} e{e}" if rec else "", cat="expert")

    def issue_fused(self, ops: list[tuple], li: int) -> None:
        """A fused MoE kernel (llama.cpp MUL_MAT_ID, vLLM fused_moe): the layer's copies, then one group of
        `kernels.per_moe_layer` launches computing every GPU expert of the layer once its weights are in."""
        tl = self.tl
        rec = tl.record
        deps, bufs, busy = [], [], 0.0
        costs = self.sc.costs
        for op in ops:
            kind = op[0]
            if kind == FETCH:
                _, buf, _m, e, nbytes, overwrite, _have, _need = op
                self._load(buf, nbytes, overwrite, f"L{li} e{e}" if rec else "")
                continue
            if kind == READ:
                self._read(op)
                continue
            buf, e, nt, wb = op[1], op[3], op[4], op[5]
            if kind == LOAD:
                deps.append(self._load(buf, op[6], True, f"L{li} e{e}" if rec else ""))
            elif kind == RUN:
                deps.append(self.ready[buf])
            else:
                raise ValueError(f"unknown action {op!r}")
            bufs.append(buf)
            busy += costs.expert_gpu_us(nt) if not wb else costs.expert_gpu_us_at(nt, wb)
        if not bufs:
            return
        n = self.rk.per_moe_layer
        each = max(busy / n, self.sc.hw.gpu.kernel_min_us)
        end = tl.kernels(n, each, after=tl.join(*deps), name=f"L{li} fused experts" if rec else "", cat="expert")
        for buf in bufs:
            self.last[buf] = end

    def _prefetch(self, pre: list[tuple]) -> None:
        tl = self.tl
        rec = tl.record
        ready, last = self.ready, self.last
        chunk_mb = self.chunk_mb
        for op in pre:
            if op[0] == READ:  # a prefetch on a copy stream of its own reads without the host waiting too
                self._read(op, self.blocking if self.rx.prefetch_stream == "copy" else False)
                continue
            _, buf, layer, e, nbytes = op
            name = f"prefetch L{layer} e{e}" if rec else ""
            if chunk_mb is None and self.rx.prefetch_stream == "copy":  # as a demand copy goes
                self._load(buf, nbytes, True, name)
            elif chunk_mb is None:  # on a copy stream of its own, asynchronously (unit and write-back kept)
                on_compute, blocking = self.on_compute, self.blocking
                self.on_compute = self.blocking = False
                try:
                    self._load(buf, nbytes, True, name)
                finally:
                    self.on_compute, self.blocking = on_compute, blocking
            else:  # ProMoE: chunks a demand copy can overtake; each chunk pays the PCIe latency
                free = last[buf]
                if free is None:
                    free = ready[buf]
                last[buf] = None
                self.held[buf] = True
                n = max(math.ceil(nbytes / (chunk_mb * 2**20)), 1)
                us = n * self.sc.costs.h2d_us(nbytes / n)
                ready[buf] = tl.copy(us, H2D, after=free, name=name, preemptible=True, chunks=n)

    def read_us(self, nbytes: int) -> float:
        x = self._read_us.get(nbytes)
        if x is None:
            x = self._read_us[nbytes] = nvme_read_us(nbytes, self.sc.hw.nvme)
        return x

    def _read(self, op: tuple, blocking: bool | None = None) -> None:
        """The SSD tier's READ: into host memory (the buffer's next copy waits for it; with a copy unit of n
        pieces, n reads that the n copies follow one by one: a pipeline), or, direct (GPUDirect Storage), into
        the GPU buffer itself once the kernels reading its old contents are done (no H2D copy)."""
        _, buf, m, e, nbytes, direct = op
        tl = self.tl
        name = f"read M{m} e{e}" if tl.record else ""
        if direct:  # cuFile's asynchronous read: the host does not wait
            free = self.last[buf]
            if free is None:
                free = self.ready[buf]
            self.last[buf] = None
            self.held[buf] = True
            self.ready[buf] = tl.read(self.read_us(nbytes), after=free, name=name)
            return
        n = self.rx.copies_per_expert
        us = self.read_us(nbytes) if n == 1 else self.read_us(nbytes // n)
        # pageable host memory is the page cache (mmap): the copy faults the pages in on the host thread
        blocking = self.blocking if blocking is None else blocking
        self.read_ready[buf] = [tl.read(us, blocking=blocking, name=name) for _ in range(n)]

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
