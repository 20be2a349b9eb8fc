"""The access planner: the one place that decides what happens to each expert a step needs.

Like libCacheSim's cache_get_base, it owns the look-up / admit / evict sequence every policy plugs into: the
cache partitions, the map from cached experts to GPU buffers, fill counts, the staging buffers of experts
that are not kept, the access index, prefetching, placement on the CPU, nested bit-widths and the counters.
It knows nothing of time. Per MoE layer of a step it emits a small plan of buffer-indexed actions, in the
order they are issued:

    (RUN, buf, layer, expert, tokens, weight_bytes)        the expert's kernels on the weights in `buf`
    (LOAD, buf, layer, expert, tokens, weight_bytes, nbytes)  copy the expert into `buf`, then RUN it
    (FETCH, buf, layer, expert, nbytes, overwrite, have, need)  copy the bit planes `have` -> `need` into `buf`
    (PREFETCH, buf, layer, expert, nbytes)                 copy an expert of a later layer ahead of use

plus the experts computed on the CPU and the prefetches proposed after the layer. Buffers are numbered:
each partition's slots, then the staging buffers. A copy that `overwrite`s a buffer must wait until the
kernels that read its previous contents are done; a FETCH that adds bit planes to a resident expert does not.
`weight_bytes` is 0 for the model's own precision (nested precision: the bytes of the planes read).

The timing (sim/engine/step_timing.py) turns the actions into copies and kernels on the timeline; the real
executor (calibrate/executor.py) into real copies and kernels. Both see the same decisions.

Access order within a layer (a runtime's loop; DESIGN.md): experts in order of first appearance over the
step's (row, slot), or in expert-index order (HF transformers' loop); looked up one by one at use, or the
whole layer first with its hits run before its misses (`lookup="layer"`: Mixtral-offloading's loader,
HybriMoE; layer-wise placements need it). Nested precision orders a layer its own way (hottest first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from simmoe.engine.scenario import Scenario
from simmoe.engine.schedule import PREFILL, Step
from simmoe.engine.setup import make_partitions
from simmoe.engine.tiers import HostTier, check_combinations
from simmoe.errors import InputError
from simmoe.policies.base import Access, CacheContext, StepView

RUN, LOAD, FETCH, PREFETCH = 0, 1, 2, 3
_NOTHING: tuple = ()  # no prefetches (shared: made once)

Order = Literal["appearance", "index"]
Lookup = Literal["at-use", "layer"]


@dataclass
class PlanCounts:
    """What the planner decided so far (totals; per MoE layer in the lists)."""

    accesses: int = 0  # the access index t: one per (step, layer, expert) looked up
    hits: int = 0
    misses: int = 0
    cpu_experts: int = 0
    copies: int = 0  # expert copies: demand misses copied to the GPU and prefetches
    prefetches: int = 0
    prefetch_used: int = 0
    bytes_h2d: int = 0  # experts and CPU experts' results
    bytes_d2h: int = 0  # activations sent to CPU experts
    occupancy: int = 0  # experts cached now
    peak_occupancy: int = 0
    layer_hits: list[int] = field(default_factory=list)
    layer_misses: list[int] = field(default_factory=list)
    layer_cpu: list[int] = field(default_factory=list)


class AccessPlanner:
    def __init__(self, sc: Scenario, *, order: Order | None = None, lookup: Lookup | None = None) -> None:
        """`order` and `lookup` default to the runtime's (`experts.order`, `experts.lookup`)."""
        self.sc = sc
        r = sc.policies
        L, E = sc.num_layers, sc.num_experts
        self.L, self.E = L, E
        rx = sc.runtime.experts
        order = order or rx.order
        lookup = lookup or rx.lookup
        if order not in ("appearance", "index") or lookup not in ("at-use", "layer"):
            raise ValueError(f"unknown access order {order!r} / lookup {lookup!r}")
        self.placer = r.placement_cls(r.placement_opts) if r.placement_cls else None
        self.layer_wise = self.placer is not None and self.placer.layer_wise
        if sc.nested is not None and (order != "appearance" or lookup != "at-use"):
            raise InputError(None, None, f"{sc.nested.precision.name} orders a layer's experts itself "
                             "(hottest first): it does not combine with another access order", param="precision")
        self.order = order
        self.lookup = "layer" if self.layer_wise else lookup
        self.issue_ahead = rx.issue_ahead if self.lookup == "layer" else 0
        self.fetch_layer = rx.fetch == "layer"
        self.parts = make_partitions(r, sc.cache, E, sc.next_use, sc.access_keys)
        self.caps = sc.cache.capacity
        self.part_of = sc.cache.part_of_layer
        ctx = CacheContext(sc.cache.total_slots, E, tuple(range(L)), sc.next_use, sc.access_keys)
        self.prefetcher = r.prefetch_cls(ctx, r.prefetch_opts) if r.prefetch_cls else None
        cls = r.cache_cls
        self._on_routing = cls.overrides("on_routing")
        self._admit_hook = cls.overrides("admit")
        self._on_step = cls.overrides("on_step")
        self._claims = cls.claims_misses
        if cls.overrides("bind_routing"):
            for part in self.parts:
                part.bind_routing(sc.router)
        if self.prefetcher is not None and type(self.prefetcher).overrides("bind_routing"):
            self.prefetcher.bind_routing(sc.router)
        self.bypass = self.placer is not None and self.placer.bypass_cache
        self.layer_bypass = [self.bypass or m in sc.cpu_layers for m in range(L)]
        # buffers: each partition's slots, then the staging buffers of misses that are not kept
        self.expert_bytes = sc.memory.expert_bytes
        first = np.cumsum((0,) + self.caps).tolist()
        self.part_buffers = [range(first[p], first[p + 1]) for p in range(len(self.caps))]
        self.num_staging = sc.memory.staging // self.expert_bytes if sc.memory.staging else 0
        self.staging_first = first[-1]
        self.num_buffers = first[-1] + self.num_staging
        self._free = [list(b)[::-1] for b in self.part_buffers]  # pop() takes the lowest free buffer
        self._stage_i = 0
        self.buffer_of: dict[int, int] = {}  # cached key -> its buffer
        self._fill = [0] * len(self.parts)
        self._prefetched: set[int] = set()  # keys copied ahead and not used yet
        self.c = PlanCounts(layer_hits=[0] * L, layer_misses=[0] * L, layer_cpu=[0] * L)
        self.nested = sc.nested
        self.plain_order = order == "appearance" and self.lookup == "at-use"
        # per MoE layer: its partition, the policy's hooks (bound once), the key base and the free buffers
        self._layer_ctx = []
        for m in range(L):
            p = self.part_of[m]
            part = self.parts[p]
            self._layer_ctx.append((p, part, self.caps[p], m * E, part.find, part.to_evict, part.evict,
                                    part.insert, self._free[p]))
        # nested precision: bits resident per key brought in by a demand copy (others hold every plane)
        self._res_bits: dict[int, int] | None = {} if sc.nested is not None else None
        self._nbytes: dict = {}  # (have, need) -> bytes copied; ("w", bits) -> weight bytes a kernel reads
        self.preloaded: list[tuple[int, int]] = []  # (key, buffer) resident before the first step, no copy
        for p, part in enumerate(self.parts):
            for key in part.preload():
                part.insert(key, -1)
                self._fill[p] += 1
                self.c.occupancy += 1
                buf = self._free[p].pop()
                self.buffer_of[key] = buf
                self.preloaded.append((key, buf))
        self.c.peak_occupancy = self.c.occupancy
        self._step: Step | None = None
        self._i = -1
        self._ex: list = []
        self._tk: list = []
        self._view: StepView | None = None
        self._step_lists: tuple = (None, None, None, None)
        # the SSD tier (tiers.py): a READ from NVMe before the copy of each expert missing from host memory
        self.tier: HostTier | None = None
        if sc.tier is not None and sc.tier.active:
            check_combinations(sc.tier, placement=None, nested=False, chunk_mb=self.chunk_mb())
            self.tier = HostTier(sc.tier, L, E, self.c)
            self.plan_layer = self.tier.wrap(self.plan_layer)  # type: ignore[method-assign]

    # ---- steps ---------------------------------------------------------------------------------------------
    def chunk_mb(self) -> float | None:
        """Granularity of prefetch copies (ProMoE's preemptible chunks) or None: the replay setting, else the
        prefetcher's own."""
        if self.sc.cfg.prefetch_chunk_mb is not None:
            return self.sc.cfg.prefetch_chunk_mb
        return self.prefetcher.chunk_mb() if self.prefetcher is not None else None

    def begin_step(self, step: Step, i: int) -> tuple[list[list[int]], list[list[int]]]:
        """Start step `i`; returns its experts and token counts per MoE layer (first-appearance order)."""
        self._step, self._i = step, i
        self._ex, self._tk = ex, tk = self.sc.experts_of(i, step)
        if self._on_step:
            for part in self.parts:
                part.on_step(step.rows)
        if self.prefetcher is not None:
            self._view = StepView(i, "prefill" if step.kind == PREFILL else "decode", ex, tk,
                                  predicted_by_layer=self._predicted(step),
                                  future_steps=self._future if self.prefetcher.reads_future else None,
                                  rows=step.rows, costs=self.sc.costs)
        return ex, tk

    # ---- one MoE layer -------------------------------------------------------------------------------------
    def plan_layer(self, m: int) -> tuple[list[tuple], list[tuple[int, int]], list[tuple]]:
        """The actions of MoE layer m of the current step: (expert actions in issue order, experts computed on
        the CPU as (expert, tokens), prefetch copies to issue after the layer). Look-up, placement and
        admission of every configuration go through this one loop."""
        exps, toks = self._ex[m], self._tk[m]
        c = self.c
        ops: list[tuple] = []
        cpu: list[tuple[int, int]] = []
        t = c.accesses
        if self.layer_bypass[m]:  # every routed expert runs on the CPU: nothing is looked up
            c.accesses = t + len(exps)
            c.misses += len(exps)
            c.layer_misses[m] += len(exps)
            cpu = list(zip(exps, toks))
            self._cpu_batch(m, cpu)
            return ops, cpu, self._plan_prefetch(m) if self.prefetcher is not None else _NOTHING
        if self.fetch_layer:
            ops = self._fetch_layer(m, exps, toks)
            return ops, cpu, self._plan_prefetch(m) if self.prefetcher is not None else _NOTHING
        p, part, cap, base, find, to_evict, evict, insert, free = self._layer_ctx[m]
        if self._on_routing:
            part.on_routing(m, exps, self._gate_scores(m, exps))
        nested = self.nested
        res = None
        # The layer's accesses in order. At use, each expert is looked up when its turn comes; a whole-layer
        # look-up (`looked`: key -> (hit, t, where)) comes first and puts the hits before the misses.
        looked = where = None
        if nested is not None:
            n = len(exps)
            need, mass = self._need_bits(m)
            pairs = zip(exps, toks) if nested.io_order == "sequential" else \
                [(exps[j], toks[j]) for j in sorted(range(n), key=lambda j: (-toks[j], -mass[exps[j]], j))]
            res, top = self._res_bits, nested.levels[-1]
            split = nested.io_order == "hebf"
            pending: dict[int, tuple] = {}  # hebf: cached misses whose copies go in two rounds
        elif self.plain_order:
            pairs = zip(exps, toks)
        else:
            n = len(exps)
            pairs = zip(exps, toks) if self.order == "appearance" else sorted(zip(exps, toks))
            if self.lookup == "layer":
                pairs = list(pairs)
                found = [find(base + e, t + k) for k, (e, _) in enumerate(pairs)]
                place = self._place_layer(m, pairs, found, t) if self.layer_wise else [None] * n
                looked = {base + e: (f, t + k, w) for k, ((e, _), f, w) in enumerate(zip(pairs, found, place))}
                pairs = [x for x, f in zip(pairs, found) if f] + [x for x, f in zip(pairs, found) if not f]
                t += n
        append = ops.append
        buffer_of, prefetched = self.buffer_of, self._prefetched
        placer = self.placer
        claims = self._claims
        admit_hook = self._admit_hook
        fill = self._fill
        nbytes = self.expert_bytes
        hits = misses = copies = used = 0  # counters as locals in this loop (written back below)
        for e, nt in pairs:
            key = base + e
            if looked is None:
                tj = t
                t += 1
                hit = find(key, tj)
            else:
                hit, tj, where = looked[key]
            wb = 0
            if nested is not None:
                b = need[e]
                have = res.get(key, top) if hit else 0
                wb = self._weight_bytes(b)
                if hit and have < b:  # resident at fewer bits: a miss that copies the planes it lacks
                    misses += 1
                    copies += 1
                    res[key] = b
                    item = (key, e, nt, have, b, buffer_of[key], False)
                    if split:
                        pending[key] = item
                    else:
                        self._finish(ops, m, item)
                    continue
            if hit:
                hits += 1
                append((RUN, buffer_of[key], m, e, nt, wb))
                if key in prefetched:
                    prefetched.discard(key)
                    used += 1
                continue
            misses += 1
            claimed = False
            if where is not None:
                on_cpu = where == "cpu"
            elif claims and cap and part.admit(key, tj):
                on_cpu, claimed = False, True  # the cache keeps it, whatever the placement says
            else:
                on_cpu = placer is not None and placer.place(Access(m, e, nt, tj), self.sc.costs) == "cpu"
            if on_cpu:
                cpu.append((e, nt))
                continue
            copies += 1
            if claimed or (cap and not claims and (not admit_hook or part.admit(key, tj))):
                cached = True
                victim = None
                if nested is not None and pending and fill[p] >= cap:
                    victim = to_evict(tj)
                    if victim in pending:  # its buffer is reused within this layer: its copy and kernels first
                        self._finish(ops, m, pending.pop(victim))
                # _admit, inlined: this is the hottest path of a replay
                if fill[p] >= cap:
                    if victim is None:
                        victim = to_evict(tj)
                    evict(victim)
                    buf = buffer_of.pop(victim)
                    prefetched.discard(victim)
                    if res is not None:
                        res.pop(victim, None)
                else:
                    fill[p] += 1
                    self._grow()
                    buf = free.pop()
                insert(key, tj)
                buffer_of[key] = buf
            else:
                cached = False
                buf = self.staging_first + self._stage_i
                self._stage_i = (self._stage_i + 1) % self.num_staging
            if nested is None:
                append((LOAD, buf, m, e, nt, 0, nbytes))
                continue
            item = (key, e, nt, 0, b, buf, True)
            if cached:
                res[key] = b
            if split and cached:
                pending[key] = item
            else:
                self._finish(ops, m, item)
        c.accesses = t
        c.hits += hits
        c.misses += misses
        c.copies += copies
        c.prefetch_used += used
        c.layer_hits[m] += hits
        c.layer_misses[m] += misses
        if nested is None:
            c.bytes_h2d += copies * nbytes
        elif pending:
            self._hebf_rounds(ops, m, list(pending.values()))
        if self.issue_ahead and copies:
            ops = self._hoist_loads(ops)
        if cpu:
            self._cpu_batch(m, cpu)
        return ops, cpu, self._plan_prefetch(m) if self.prefetcher is not None else _NOTHING

    def _fetch_layer(self, m: int, exps, toks) -> list[tuple]:
        """Every expert of the layer copied into its staging buffer before the layer's experts run, each time
        the layer runs (a module's parameters gathered before its forward: ZeRO-3, accelerate offload)."""
        c = self.c
        E, first, nbytes = self.E, self.staging_first, self.expert_bytes
        ops: list[tuple] = [(FETCH, first + e, m, e, nbytes, True, 0, 0) for e in range(E)]
        ops += [(RUN, first + e, m, e, nt, 0) for e, nt in zip(exps, toks)]
        c.accesses += len(exps)
        c.misses += len(exps)
        c.layer_misses[m] += len(exps)
        c.copies += E
        c.bytes_h2d += E * nbytes
        return ops

    def _hoist_loads(self, ops: list[tuple]) -> list[tuple]:
        """A loader that issues the copies of up to `issue_ahead` misses before the layer's first expert runs
        (Mixtral-offloading's window): those LOADs become a FETCH at the front and a RUN in place. A miss whose
        buffer an earlier kernel of this layer still reads keeps its place (the copy would overwrite it)."""
        read = set()
        ahead: list[tuple] = []
        out: list[tuple] = []
        for op in ops:
            if op[0] == LOAD and len(ahead) < self.issue_ahead and op[1] not in read:
                _, buf, m, e, nt, wb, nbytes = op
                ahead.append((FETCH, buf, m, e, nbytes, True, 0, 0))
                out.append((RUN, buf, m, e, nt, wb))
            else:
                out.append(op)
            if op[0] in (RUN, LOAD):
                read.add(op[1])
        return ahead + out

    def _cpu_batch(self, m: int, cpu: list[tuple[int, int]]) -> None:
        """Count a layer's CPU experts: the layer's activations go to the host and the result comes back."""
        c = self.c
        c.layer_cpu[m] += len(cpu)
        c.cpu_experts += len(cpu)
        act = self.sc.costs.activation_bytes(max(nt for _, nt in cpu))
        c.bytes_d2h += act
        c.bytes_h2d += act

    def _place_layer(self, m: int, pairs, found, t: int) -> list[str]:
        """A layer-wise placement splits the layer's misses knowing its hits: 'hit', 'gpu' or 'cpu' per access
        (in look-up order)."""
        hits, misses, idx = [], [], []
        out = ["hit"] * len(pairs)
        for k, ((e, nt), f) in enumerate(zip(pairs, found)):
            acc = Access(m, int(e), int(nt), t + k)
            if f:
                hits.append(acc)
            else:
                misses.append(acc)
                idx.append(k)
                out[k] = "gpu"
        if misses:
            for k, w in zip(idx, self.placer.place_layer(hits, misses, self.sc.costs)):
                out[k] = w
        return out

    def _admit(self, p: int, key: int, t: int, victim: int | None = None) -> int:
        """Make room in partition p and insert key; returns its buffer (the victim's, or a free one).
        `victim`: the caller's own `to_evict(t)`, when it asked already."""
        part = self.parts[p]
        if self._fill[p] >= self.caps[p]:
            if victim is None:
                victim = part.to_evict(t)
            part.evict(victim)
            buf = self.buffer_of.pop(victim)
            self._prefetched.discard(victim)
            if self._res_bits is not None:
                self._res_bits.pop(victim, None)
        else:
            self._fill[p] += 1
            self._grow()
            buf = self._free[p].pop()
        part.insert(key, t)
        self.buffer_of[key] = buf
        return buf

    def _grow(self) -> None:
        c = self.c
        c.occupancy += 1
        if c.occupancy > c.peak_occupancy:
            c.peak_occupancy = c.occupancy

    # ---- prefetch ------------------------------------------------------------------------------------------
    def _plan_prefetch(self, m: int) -> list[tuple]:
        out = []
        c = self.c
        L, E, nbytes = self.L, self.E, self.expert_bytes
        for layer, e in self.prefetcher.propose(self._view, m):
            if not (0 <= layer < L and 0 <= e < E):
                continue
            p = self.part_of[layer]
            part = self.parts[p]
            key = layer * E + e
            if not self.caps[p] or key in part:
                continue
            buf = self._admit(p, key, -1)
            self._prefetched.add(key)
            c.prefetches += 1
            c.copies += 1
            c.bytes_h2d += nbytes
            out.append((PREFETCH, buf, layer, e, nbytes))
        return out

    def _predicted(self, step: Step):
        pred = self.sc.trace.predicted
        if pred is None:
            return None
        sub = pred[step.rows]  # [B, L, P]
        return [np.unique(sub[:, m][sub[:, m] >= 0]) for m in range(self.L)]

    def _future(self, offset: int) -> StepView | None:
        """Oracle access to a later step's routing (reads_future policies only)."""
        i = self._i + offset
        steps = self.sc.steps
        if not 0 <= i < len(steps):
            return None
        s = steps[i]
        ex, tk = self.sc.experts_of(i, s)
        return StepView(i, "prefill" if s.kind == PREFILL else "decode", ex, tk)

    def _gate_scores(self, m: int, exps) -> np.ndarray | None:
        """Mean gate weight of each of the layer's experts over the step's tokens (None without gates)."""
        tr = self.sc.trace
        g = tr.gates
        if g is None:
            return None
        rows = self._step.rows
        ex = tr.experts[rows, m].ravel()
        w = np.nan_to_num(g[rows, m].ravel(), nan=0.0)
        tot = np.zeros(self.E)
        np.add.at(tot, ex[ex >= 0], w[ex >= 0])
        return tot[np.asarray(exps, dtype=np.int64)] / len(rows)

    # ---- nested precision (per-access bit-widths) ------------------------------------------------------------
    def _copy_bytes(self, have: int, need: int) -> int:
        x = self._nbytes.get((have, need))
        if x is None:
            x = self._nbytes[(have, need)] = self.sc.nested.precision.copy_bytes(self.sc.spec, have, need)
        return x

    def _weight_bytes(self, bits: int) -> int:
        x = self._nbytes.get(("w", bits))
        if x is None:
            x = self._nbytes[("w", bits)] = self.sc.nested.precision.weight_bytes(self.sc.spec, bits)
        return x

    def _fetch(self, ops: list, m: int, e: int, buf: int, have: int, need: int, overwrite: bool) -> None:
        x = self._copy_bytes(have, need)
        self.c.bytes_h2d += x
        ops.append((FETCH, buf, m, e, x, overwrite, have, need))

    def _finish(self, ops: list, m: int, item: tuple) -> None:
        """One whole copy of the planes an access lacks, then its kernels."""
        _key, e, nt, have, b, buf, overwrite = item
        self._fetch(ops, m, e, buf, have, b, overwrite)
        ops.append((RUN, buf, m, e, nt, self._weight_bytes(b)))

    def _hebf_rounds(self, ops: list, m: int, items: list[tuple]) -> None:
        """Hottest-expert-bit-first: the base planes of every missing expert (hottest first), then the planes
        above them; the kernels follow in the order their data arrives."""
        base_bits = self.sc.nested.levels[0]
        first, later = [], []
        for it in items:
            _key, e, _nt, have, b, buf, overwrite = it
            if have < base_bits:
                self._fetch(ops, m, e, buf, have, base_bits, overwrite)
            (first if b <= base_bits else later).append(it)
        for _key, e, _nt, have, b, buf, _ in later:
            self._fetch(ops, m, e, buf, max(have, base_bits), b, False)
        for _key, e, nt, _have, b, buf, _ in first + later:
            ops.append((RUN, buf, m, e, nt, self._weight_bytes(b)))

    def _need_bits(self, m: int):
        """Per expert of layer m in this step: the bits its tokens need (the max) and its gate mass (hotness;
        tokens when the trace has no gates). Indexable by expert id."""
        step = self._step
        rows = step.rows
        tr = self.sc.trace
        g = tr.gates
        bits = self.sc.nested.bits
        if len(rows) <= 8:  # decode steps: plain Python on the step's rows (as lists, made once per step)
            if self._step_lists[0] is not step:
                self._step_lists = (step, tr.experts[rows].tolist(), bits[rows].tolist(),
                                    g[rows].tolist() if g is not None else None)
            _, el, bl, gl = self._step_lists
            need: dict = {}
            mass: dict = {}
            for i in range(len(rows)):
                er, br = el[i][m], bl[i][m]
                gr = gl[i][m] if gl is not None else None
                for j, e in enumerate(er):
                    if e < 0:
                        continue
                    if br[j] > need.get(e, 0):
                        need[e] = br[j]
                    w = gr[j] if gr is not None else 1.0
                    mass[e] = mass.get(e, 0.0) + (w if w == w else 0.0)
            return need, mass
        ex = tr.experts[rows, m]
        e = ex.ravel()
        v = e >= 0
        e = e[v].astype(np.int64)
        need_a = np.zeros(self.E, dtype=np.int64)
        np.maximum.at(need_a, e, bits[rows, m].ravel()[v])
        w = None if g is None else np.nan_to_num(g[rows, m].ravel()[v].astype(np.float64), nan=0.0)
        return need_a.tolist(), np.bincount(e, weights=w, minlength=self.E).tolist()
