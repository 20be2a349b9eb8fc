"""Replay a routing trace on a hardware profile under a policy set.

The SimPy environment owns time: a driver process runs one step after another. Each step's work is planned
here (dense kernels, routing, cache look-ups through the policies, copies, expert kernels, CPU experts,
prefetches) and timed by a stream timeline: the fast recurrence (one event per step) or, with
engine="simpy", one SimPy event per kernel. Both give the same times (tested).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import simpy

from simmoe.engine.config import ReplayConfig
from simmoe.engine.costs import CostModel
from simmoe.engine.memory import fixed_plan
from simmoe.engine.nested import NestedPrecision
from simmoe.engine.results import Result, StepLog
from simmoe.engine.schedule import (
    DECODE,
    PREFILL,
    Idle,
    RowIndex,
    Step,
    online_schedule,
    static_schedule,
    step_experts,
)
from simmoe.engine.serving import arrival_times_s, cycle_trace
from simmoe.engine.setup import Resolved, build_cache, needs_staging, resolve
from simmoe.engine.simpy_timeline import SimpyTimeline
from simmoe.engine.timeline import D2H, H2D, ChunkedTimeline, Timeline
from simmoe.errors import InputError
from simmoe.hw.profile import HwProfile, load_profile
from simmoe.policies.base import Access, CacheContext, CachePolicy, PolicySet, PrefetchPolicy, StepView
from simmoe.trace.format import Trace, read_trace

NEVER = np.iinfo(np.int64).max


def hits_first(where: list[str], exps, toks) -> list[tuple[int, tuple[int, int]]]:
    """A layer-wise placement looked the whole layer up: run its hits before its misses (as HybriMoE runs
    cached experts first), so that a miss evicting one of this layer's hits waits for that hit's kernels
    instead of overwriting weights not yet used. Items as enumerate(zip(exps, toks)) gives them."""
    order = [j for j, w in enumerate(where) if w == "hit"] + [j for j, w in enumerate(where) if w != "hit"]
    return [(j, (exps[j], toks[j])) for j in order]


def next_use_of(keys: np.ndarray) -> np.ndarray:
    """For each access t, the index of the next access to the same key (NEVER if none). Vectorised."""
    n = len(keys)
    order = np.lexsort((np.arange(n), keys))
    nxt = np.full(n, NEVER, dtype=np.int64)
    same = keys[order[1:]] == keys[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


@dataclass
class _State:
    hits: int = 0
    misses: int = 0
    cpu_experts: int = 0
    copies: int = 0
    prefetches: int = 0
    prefetch_used: int = 0
    bytes_h2d: int = 0
    bytes_d2h: int = 0
    occupancy: int = 0
    peak_occupancy: int = 0
    t: int = 0  # access counter
    last_use: dict = field(default_factory=dict)  # key -> handle of the last kernel that read it
    ready: dict = field(default_factory=dict)  # key -> handle of the copy that brought it in
    prefetched: set = field(default_factory=set)  # keys copied ahead and not used yet


class Replay(NestedPrecision):
    def __init__(self, trace: Trace, hw: HwProfile, policies: PolicySet | None = None,
                 config: ReplayConfig | None = None, hw_name: str | None = None) -> None:
        self.trace = trace
        self.hw = hw
        self.hw_name = hw_name or hw.name
        self.cfg = config or ReplayConfig()
        self.pset = policies or PolicySet()
        self.spec = trace.spec
        self.r: Resolved = resolve(self.pset)

    # ---- set-up ------------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        tr, cfg, spec = self.trace, self.cfg, self.spec
        if cfg.max_requests is not None:
            tr = tr.select(requests=tr.request_ids[: cfg.max_requests])
            self.trace = tr
        if cfg.requests is not None:  # before rerouting: stateful routing (virtual experts) sees served rows
            tr = self.trace = cycle_trace(tr, cfg.requests)
        self.routing_fidelity = 1.0
        router = None
        if self.r.routing_cls is not None:  # a different model output: served experts change, report fidelity
            router = self.r.routing_cls(self.r.routing_opts)
            experts, self.routing_fidelity = router.reroute(tr.experts, tr.gates)
            tr = self.trace = dataclasses.replace(tr, experts=experts, predicted=None)
        dequant = 0.0
        self._slot_bits = self._res_bits = None  # per-access bit-widths and resident bits (nested precision)
        if self.r.precision_cls is not None:
            prec = self.r.precision_cls(self.r.precision_opts)
            self.spec = spec = prec.apply(spec)
            dequant = prec.dequant_flops_per_param()
            self._setup_nested(prec, tr)
        self.ri = RowIndex(tr.request, tr.phase)
        self.online = cfg.arrivals != "closed"
        self.arrival_us = arrival_times_s(cfg.arrivals, self.ri.ids, tr, cfg.rate, cfg.cv, cfg.seed) * 1e6
        if self.online:
            if self.r.reads_future:
                raise InputError("--arrivals", None, "oracle policies (they read the future) need a closed-loop "
                                 "replay: with arrivals the step sequence depends on the timing")
            self.steps = []  # made online, as requests arrive
            npre = int(self.ri.prefill_len.max())
            chunk = min(cfg.prefill_chunk or npre, cfg.max_batched_tokens or npre)
            max_step_tokens = max(cfg.batch, chunk, 1)
        else:
            self.steps = list(static_schedule(self.ri, cfg.batch, cfg.prefill_chunk, cfg.max_batched_tokens))
            max_step_tokens = max(len(s.rows) for s in self.steps)
        self.L = tr.num_layers
        self.E = spec.num_experts
        self.has_null = bool((tr.experts < 0).any())
        max_rows = int((self.ri.stops - self.ri.starts).max())
        self.costs = CostModel(spec, self.hw, pinned=cfg.host_memory == "pinned", dequant_flops_per_param=dequant)
        staging = cfg.staging_buffers if needs_staging(self.r) else 0
        self.plan = fixed_plan(spec, self.hw, batch=cfg.batch, max_request_rows=max_rows,
                               max_step_tokens=max_step_tokens, staging_buffers=staging, hw_name=self.hw_name)
        self._step_cache: list | None = None
        next_use = keys = None
        if self.r.reads_future:
            self._step_cache = [step_experts(tr.experts, s.rows, self.E, self.has_null) for s in self.steps]
            keys = np.fromiter((m * self.E + e for ex, _ in self._step_cache for m, lay in enumerate(ex)
                                for e in lay), dtype=np.int64)
            next_use = next_use_of(keys)
        self.next_use = next_use
        self.placer = self.r.placement_cls(self.r.placement_opts) if self.r.placement_cls else None
        cpu_layers = self.placer.cpu_layers(self.L) if self.placer is not None else frozenset()
        self.layer_on_cpu = [m in cpu_layers for m in range(self.L)]
        self.cache = build_cache(self.r, self.plan, self.L, self.E, next_use, cpu_layers, keys)
        ctx = CacheContext(self.cache.total_slots, self.E, tuple(range(self.L)), next_use, keys)
        cls = self.r.cache_cls
        pl = self.r.placement_cls
        if cls.claims_misses and (pl is not None and pl.layer_wise or self._slot_bits is not None):
            other = f"the layer-wise placement {pl.name}" if pl is not None and pl.layer_wise else "nested precision"
            raise InputError("--policy", None, f"cache {cls.name} claims its misses before placement: it does "
                             f"not combine with {other}")
        self._routing_hook = cls.on_routing is not CachePolicy.on_routing
        self._admit_hook = cls.admit is not CachePolicy.admit
        self._step_hook = cls.on_step is not CachePolicy.on_step
        if cls.bind_routing is not CachePolicy.bind_routing:
            for part in self.cache.parts:
                part.bind_routing(router)
        self.prefetcher = self.r.prefetch_cls(ctx, self.r.prefetch_opts) if self.r.prefetch_cls else None
        if self.prefetcher is not None and type(self.prefetcher).bind_routing is not PrefetchPolicy.bind_routing:
            self.prefetcher.bind_routing(router)
        self.moe_of = [-1] * spec.num_layers
        for m, li in enumerate(spec.moe_layers):
            self.moe_of[li] = m
        self.st = _State()
        # per MoE layer: hits, misses, computed on the CPU (int64 arrays, for per-layer hit rates)
        self.layer_hits = [0] * self.L  # lists: item updates on numpy arrays cost more in this hot loop
        self.layer_misses = [0] * self.L
        self.layer_cpu = [0] * self.L
        self._fill = [0] * len(self.cache.parts)  # keys held per partition
        for p, part in enumerate(self.cache.parts):  # preloaded experts (resident, static): no copy counted
            for key in part.preload():
                part.insert(key, -1)
                self._fill[p] += 1
                self.st.occupancy += 1
        self.st.peak_occupancy = self.st.occupancy

    # ---- run ---------------------------------------------------------------------------------------------
    def run(self, progress: bool = False) -> Result:
        wall0 = time.perf_counter()
        self._progress = progress
        self._prepare()
        env = simpy.Environment()
        hw = self.hw
        self.chunk_mb = self.cfg.prefetch_chunk_mb
        if self.chunk_mb is None and self.prefetcher is not None:
            self.chunk_mb = self.prefetcher.chunk_mb()
        chunked = self.chunk_mb is not None  # preemptible prefetches need the chunked engine
        if self.cfg.engine == "simpy":
            self.tl = SimpyTimeline(env, hw.host, hw.pcie.copy_engines, record=self.cfg.timeline_steps is not None,
                                    chunked=chunked)
        else:
            self.tl = (ChunkedTimeline if chunked else Timeline)(hw.host, hw.pcie.copy_engines)
        self.log = StepLog()
        env.process(self._driver(env))
        env.run()
        return Result.build(self, wall_s=time.perf_counter() - wall0)

    def _driver(self, env: simpy.Environment):
        tl, cfg = self.tl, self.cfg
        fast = isinstance(tl, Timeline)
        window = cfg.timeline_steps
        bar = None
        if getattr(self, "_progress", False):
            from tqdm import tqdm

            total = len(self.steps) if not self.online else None
            bar = tqdm(total=total, unit="step", desc="replay", file=sys.stderr, mininterval=0.5)
        for step in self._step_source(env):
            if isinstance(step, Idle):  # nothing has arrived: wait for the next request
                yield env.timeout(step.until_us - env.now)
                continue
            i = step.index
            if bar is not None and i % 256 == 0 and i:
                bar.update(256)
            t0 = env.now
            if fast:
                tl.advance_host(t0)
            tl.record = window is not None and window[0] <= i < window[1]
            tl.c.reset()
            counts0 = (self.st.hits, self.st.misses, self.st.cpu_experts, self.st.copies, self.st.bytes_h2d)
            self._plan_step(step, i)
            if fast:
                yield env.timeout(tl.h - env.now)
            else:
                yield tl.play()
            self.log.add(step, t0, env.now, tl.c, counts0, self.st, self.ri, self.spec)
        if bar is not None:
            bar.update(self._n_steps - bar.n)
            bar.close()

    def _step_source(self, env: simpy.Environment):
        """The steps in order: the precomputed closed-loop schedule, or the online scheduler fed with the
        clock (an Idle item when it must wait; step indices count only steps)."""
        if not self.online:
            self._n_steps = len(self.steps)
            yield from self.steps
            return
        cfg = self.cfg
        gen = online_schedule(self.ri, self.arrival_us, cfg.batch, cfg.prefill_chunk, cfg.max_batched_tokens)
        next(gen)
        n = 0
        while True:
            try:
                item = gen.send(env.now)
            except StopIteration:
                break
            if isinstance(item, Idle):
                yield item
                continue
            self.steps.append(item)
            n += 1
            yield item
        self._n_steps = n

    # ---- one step ----------------------------------------------------------------------------------------
    def _plan_step(self, step: Step, i: int) -> None:
        tl, costs, hw, st = self.tl, self.costs, self.hw, self.st
        host = hw.host
        spec = self.spec
        E = self.E
        self._cur_step = i
        rec = tl.record
        tokens = len(step.rows)
        ctx_tokens = int((self.ri.position[step.rows] + 1).sum())
        if self._step_cache is not None:
            ex_by_layer, tok_by_layer = self._step_cache[i]
        else:
            ex_by_layer, tok_by_layer = step_experts(self.trace.experts, step.rows, E, self.has_null)
        view = self.step_view(step, i, ex_by_layer, tok_by_layer) if self.prefetcher is not None else None

        ka, kr, kpe, kd = (host.kernels_per_attention, host.kernels_per_router, host.kernels_per_expert,
                           host.kernels_per_dense_ffn)
        attn_each = costs.attention_us(tokens, ctx_tokens) / max(ka, 1)
        router_each = costs.router_us(tokens) / max(kr, 1)
        shared_each = costs.shared_experts_us(tokens) / max(kd, 1)
        dense_each = costs.dense_ffn_us(tokens) / max(kd, 1) if spec.num_dense_layers else 0.0
        ks = host.kernels_per_step
        extra_each = costs.step_extra_us(len(step.requests) if step.kind == DECODE else 1) / max(ks, 1)
        expert_bytes = self.plan.expert_bytes
        copy_us = costs.h2d_us(expert_bytes)
        on_compute = self.cfg.copy_stream == "compute"
        blocking = self.cfg.host_memory == "pageable"
        parts, part_of, caps = self.cache.parts, self.cache.part_of_layer, self.cache.capacity
        placer = self.placer
        bypass = placer is not None and placer.bypass_cache
        layer_wise = placer is not None and placer.layer_wise
        routing_hook, admit_hook = self._routing_hook, self._admit_hook
        claims, claimed = self.r.cache_cls.claims_misses, False
        layer_hits, layer_misses, layer_cpu = self.layer_hits, self.layer_misses, self.layer_cpu
        last_use, ready = st.last_use, st.ready
        staging = self.plan.staging // expert_bytes if self.plan.staging else 0
        if staging and not hasattr(self, "_stage"):
            self._stage = [None] * staging
            self._stage_i = 0
        gpu_each = {}
        nested = self._slot_bits is not None
        if self._step_hook:
            for part in parts:
                part.on_step(step.rows)

        if ks:
            tl.kernels(ks // 2 or 1, extra_each, name="embed")
        for li in range(spec.num_layers):
            if ka:
                tl.kernels(ka, attn_each, name=f"L{li} attention" if rec else "")
            m = self.moe_of[li]
            if m < 0:
                tl.kernels(kd, dense_each, name=f"L{li} ffn" if rec else "")
                continue
            r_end = tl.kernels(kr, router_each, name=f"L{li} router" if rec else "")
            if shared_each:
                tl.kernels(kd, shared_each, name=f"L{li} shared experts" if rec else "")
            tl.sync(r_end, name=f"L{li} routing to host" if rec else "")
            exps, toks = ex_by_layer[m], tok_by_layer[m]
            p = part_of[m]
            part, cap = parts[p], caps[p]
            base = m * E
            cpu_jobs = []
            layer_bypass = bypass or self.layer_on_cpu[m]
            h0, m0 = st.hits, st.misses
            if routing_hook and not layer_bypass:
                part.on_routing(m, exps, self._gate_scores(step, m, exps))
            if nested and not layer_bypass:  # per-access bit-widths (nested precision): its own loop
                cpu_jobs = self._nested_layer(step, li, m, part, p, cap, exps, toks)
                exps = ()  # all done: the loop below has nothing left to do
            where = self._place_layer(part, m, exps, toks) if layer_wise and not layer_bypass else None
            for j, (e, nt) in enumerate(zip(exps, toks)) if where is None else hits_first(where, exps, toks):
                key = base + e
                if where is not None:  # looked up already by _place_layer
                    hit = where[j] == "hit"
                else:
                    t = st.t
                    st.t = t + 1
                    hit = not layer_bypass and part.find(key, t)
                if hit:
                    st.hits += 1
                    dep = ready.get(key)
                    if key in st.prefetched:
                        st.prefetched.discard(key)
                        st.prefetch_used += 1
                else:
                    st.misses += 1
                    if where is not None:
                        on_cpu = where[j] == "cpu"
                        t = self._t_of[j]
                    elif claims and not layer_bypass and cap and part.admit(key, t):
                        on_cpu, claimed = False, True
                    else:
                        on_cpu = layer_bypass or (placer is not None and placer.place(Access(m, e, nt, t), costs) == "cpu")
                    if on_cpu:
                        cpu_jobs.append((e, nt))
                        continue
                    cached = claimed or (cap and not claims and (not admit_hook or part.admit(key, t)))
                    claimed = False
                    if cached:
                        slot_free = self._admit(part, cap, p, key, t)
                    else:
                        si = self._stage_i
                        slot_free = self._stage[si]
                    dep = tl.copy(copy_us, H2D, after=slot_free, on_compute=on_compute, blocking=blocking,
                                  name=f"L{li} e{e}" if rec else "")
                    st.copies += 1
                    st.bytes_h2d += expert_bytes
                    if cached:
                        ready[key] = dep
                each = gpu_each.get(nt)
                if each is None:
                    each = gpu_each[nt] = costs.expert_gpu_us(nt) / kpe
                end = tl.kernels(kpe, each, after=dep, name=f"L{li} e{e}" if rec else "", cat="expert")
                if hit or cached:
                    last_use[key] = end
                else:  # the staging buffer is free again once this expert's kernels are done
                    self._stage[self._stage_i] = end
                    self._stage_i = (self._stage_i + 1) % len(self._stage)
            if cpu_jobs:
                layer_cpu[m] += len(cpu_jobs)
            layer_hits[m] += st.hits - h0
            layer_misses[m] += st.misses - m0
            cpu_done = self._cpu_experts(cpu_jobs, r_end, li) if cpu_jobs else None
            tl.kernels(1, hw.gpu.kernel_min_us, after=cpu_done, name=f"L{li} combine" if rec else "", wait="cpu")
            if self.prefetcher is not None:
                self._prefetch(view, m)
        if ks:
            tl.kernels(ks - (ks // 2 or 1) or 1, extra_each, name="lm_head+sample")
        tl.sync(name="token to host")

    def _gate_scores(self, step: Step, m: int, exps) -> np.ndarray | None:
        """Mean gate weight of each of the layer's experts over the step's tokens (None without gates)."""
        g = self.trace.gates
        if g is None:
            return None
        ex = self.trace.experts[step.rows, m].ravel()
        w = np.nan_to_num(g[step.rows, m].ravel(), nan=0.0)
        tot = np.zeros(self.E)
        np.add.at(tot, ex[ex >= 0], w[ex >= 0])
        return tot[np.asarray(exps, dtype=np.int64)] / len(step.rows)

    def _place_layer(self, part, m: int, exps, toks) -> list[str]:
        """Look up all of a layer's experts, then let a layer-wise placement split the misses:
        returns per expert 'hit', 'gpu' or 'cpu' (access indices in self._t_of)."""
        st = self.st
        base = m * self.E
        hits, misses, idx, out = [], [], [], []
        self._t_of = t_of = []
        for e, nt in zip(exps, toks):
            t = st.t
            st.t = t + 1
            t_of.append(t)
            acc = Access(m, int(e), int(nt), t)
            if part.find(base + e, t):
                hits.append(acc)
                out.append("hit")
            else:
                misses.append(acc)
                idx.append(len(out))
                out.append("gpu")
        if misses:
            for j, w in zip(idx, self.placer.place_layer(hits, misses, self.costs)):
                out[j] = w
        return out

    def _admit(self, part, cap: int, p: int, key: int, t: int, victim: int | None = None):
        """Make room in partition p and insert key; returns the handle the copy must wait for. `victim`: the
        caller's own `part.to_evict(t)`, when it asked already."""
        st = self.st
        slot_free = None
        if self._fill[p] >= cap:
            if victim is None:
                victim = part.to_evict(t)
            part.evict(victim)
            slot_free = st.last_use.pop(victim, None)
            if slot_free is None:
                slot_free = st.ready.get(victim)
            st.ready.pop(victim, None)
            st.prefetched.discard(victim)
            if self._res_bits is not None:
                self._res_bits.pop(victim, None)
        else:
            self._fill[p] += 1
            st.occupancy += 1
            if st.occupancy > st.peak_occupancy:
                st.peak_occupancy = st.occupancy
        part.insert(key, t)
        return slot_free

    def _cpu_experts(self, jobs, after, li: int):
        """kTransformers-style: one D2H of the layer's activations, the CPU computes its experts in turn,
        one H2D of the combined result."""
        tl, costs, st = self.tl, self.costs, self.st
        rec = tl.record
        ntok = max(nt for _, nt in jobs)
        act = costs.activation_bytes(ntok)
        x = tl.copy(costs.d2h_us(act), D2H, after=after, name=f"L{li} activations to host" if rec else "")
        st.bytes_d2h += act
        done = x
        for e, nt in jobs:
            done = tl.cpu(costs.expert_cpu_us(nt), after=done, name=f"L{li} e{e} (cpu)" if rec else "")
            st.cpu_experts += 1
        y = tl.copy(costs.h2d_us(act, pinned=True), H2D, after=done, name=f"L{li} cpu result to gpu" if rec else "")
        st.bytes_h2d += act
        return y

    def _prefetch(self, view: StepView, m: int) -> None:
        st, tl = self.st, self.tl
        E = self.E
        nbytes = self.plan.expert_bytes
        copy_us = self.costs.h2d_us(nbytes)
        chunk_mb = self.chunk_mb
        kw = {}
        if chunk_mb is not None:  # ProMoE: chunks a demand copy can overtake; each chunk pays the PCIe latency
            n = max(math.ceil(nbytes / (chunk_mb * 2**20)), 1)
            copy_us = n * self.costs.h2d_us(nbytes / n)
            kw = {"preemptible": True, "chunks": n}
        rec = tl.record
        for layer, e in self.prefetcher.propose(view, m):
            if not (0 <= layer < self.L and 0 <= e < E):
                continue
            p = self.cache.part_of_layer[layer]
            part, cap = self.cache.parts[p], self.cache.capacity[p]
            key = layer * E + e
            if not cap or key in part:
                continue
            slot_free = self._admit(part, cap, p, key, -1)
            st.ready[key] = tl.copy(copy_us, H2D, after=slot_free, name=f"prefetch L{layer} e{e}" if rec else "", **kw)
            st.prefetched.add(key)
            st.prefetches += 1
            st.copies += 1
            st.bytes_h2d += self.plan.expert_bytes

    def step_view(self, step: Step, i: int, ex_by_layer, tok_by_layer) -> StepView:
        """What the prefetcher sees of step i (the executor in calibrate/ builds it here too)."""
        return StepView(i, "prefill" if step.kind == PREFILL else "decode", ex_by_layer, tok_by_layer,
                        predicted_by_layer=self._predicted(step),
                        future_steps=self._future if self.prefetcher.reads_future else None,
                        # the cost model for cost-aware prefetchers (impact); the trace rows the step serves
                        extra={"costs": self.costs, "rows": step.rows})

    def _predicted(self, step: Step):
        pred = self.trace.predicted
        if pred is None:
            return None
        sub = pred[step.rows]  # [B, L, P]
        return [np.unique(sub[:, m][sub[:, m] >= 0]) for m in range(self.L)]

    def _future(self, offset: int) -> StepView | None:
        """Oracle access to a later step's routing (reads_future policies only)."""
        i = self._cur_step + offset
        if not 0 <= i < len(self.steps):
            return None
        s = self.steps[i]
        ex, tk = self._step_cache[i] if self._step_cache is not None else step_experts(
            self.trace.experts, s.rows, self.E, self.has_null)
        return StepView(i, "prefill" if s.kind == PREFILL else "decode", ex, tk)


def replay(trace: Trace | str | Path, hw: HwProfile | str | Path, policy: str | PolicySet = "lru",
           options: dict | None = None, **config) -> Result:
    """Notebook entry point: `replay("traces/x.npz", "rtx3090", "lru", {"slots_per_layer": 4}, batch=1)`."""
    tr = trace if isinstance(trace, Trace) else read_trace(trace)
    hw_name = None
    if not isinstance(hw, HwProfile):
        hw_name = str(hw)
        hw = load_profile(hw)
    pset = policy if isinstance(policy, PolicySet) else PolicySet(cache=policy, cache_options=options or {})
    return Replay(tr, hw, pset, ReplayConfig(**config), hw_name=hw_name).run()
