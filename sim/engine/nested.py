"""Per-access bit-widths for nested (matryoshka) precision policies such as D2MoE's: the part of the replay
engine that tracks each cached expert's resident bits, copies only the bit planes an access lacks and orders
a layer's copies hottest-expert-bit-first. Replay mixes it in; everything else in the engine sees a plain
boolean (`_slot_bits is None`) and pays nothing for it."""

from __future__ import annotations

import numpy as np

from simmoe.engine.schedule import Step
from simmoe.engine.timeline import H2D
from simmoe.errors import InputError
from simmoe.policies.base import Access, PrecisionPolicy
from simmoe.trace.format import Trace


class NestedPrecision:
    """Methods of Replay (they use its state: trace, cache, timeline, counters)."""

    def _setup_nested(self, prec, tr: Trace) -> None:
        """Per-access bit-widths, for precision policies that override `slot_bits` (nested / matryoshka
        quantisation): the engine then tracks each cached expert's resident bits and copies only the planes an
        access lacks. Cache slots stay sized for the top bit-width (the policy's `apply`)."""
        if type(prec).slot_bits is PrecisionPolicy.slot_bits:
            return
        bits = prec.slot_bits(tr.experts, tr.gates)
        if bits is None:
            return
        pl = self.r.placement_cls
        if pl is not None and pl.layer_wise:
            raise InputError("--placement", None, f"precision {prec.name} (per-access bit-widths) does not "
                             f"combine with the layer-wise placement {pl.name}")
        self._slot_bits = np.asarray(bits)
        self._prec = prec
        self._levels = tuple(prec.levels())
        self._io_order = prec.io_order()
        self._res_bits = {}  # key -> bits resident, for keys a demand copy brought in (others: all planes)
        self._nbytes: dict = {}  # (have, need) -> bytes copied; ("w", bits) -> weight bytes a kernel reads
        self._kernel_us: dict = {}  # (tokens, bits) -> time of each of an expert's kernels
        self._step_lists: tuple = (None, None, None, None)  # step; its rows' experts, bits, gates [B][L][K]

    def _need_bits(self, step: Step, m: int):
        """Per expert of layer m in this step: the bits its tokens need (the max) and its gate mass (hotness;
        tokens when the trace has no gates). Indexable by expert id."""
        rows = step.rows
        g = self.trace.gates
        if len(rows) <= 8:  # decode steps: plain Python on the step's rows (as lists, made once per step)
            if self._step_lists[0] is not step:
                self._step_lists = (step, self.trace.experts[rows].tolist(), self._slot_bits[rows].tolist(),
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
        ex = self.trace.experts[rows, m]
        e = ex.ravel()
        v = e >= 0
        e = e[v].astype(np.int64)
        need_a = np.zeros(self.E, dtype=np.int64)
        np.maximum.at(need_a, e, self._slot_bits[rows, m].ravel()[v])
        w = None if g is None else np.nan_to_num(g[rows, m].ravel()[v].astype(np.float64), nan=0.0)
        return need_a.tolist(), np.bincount(e, weights=w, minlength=self.E).tolist()

    def _nested_layer(self, step: Step, li: int, m: int, part, p: int, cap: int, exps, toks) -> list:
        """A layer's experts under per-access bit-widths. An expert resident with at least the bits its tokens
        need is a hit and computes on that prefix of its planes; otherwise only the planes it lacks are copied
        (a miss; the whole expert at the needed bits when absent; resident bits only grow until eviction).
        io_order "hebf" (hottest-expert-bit-first): experts go hottest first (tokens, then gate mass), hits
        compute at once, the cached misses' copies go in two rounds (the base planes of every missing expert,
        then the planes above them) and their kernels follow in the order their data arrives. "hottest":
        hottest first, one whole copy per miss, each followed by its kernels. "sequential": the same in
        routing order. Returns the experts placed on the CPU."""
        st, tl, costs, prec, spec = self.st, self.tl, self.costs, self._prec, self.spec
        rec = tl.record
        kpe = self.hw.host.kernels_per_expert
        on_compute = self.cfg.copy_stream == "compute"
        blocking = self.cfg.host_memory == "pageable"
        ready, last_use, res, nb, kt = st.ready, st.last_use, self._res_bits, self._nbytes, self._kernel_us
        levels = self._levels
        top = levels[-1]
        split = self._io_order == "hebf"
        need, mass = self._need_bits(step, m)
        order = range(len(exps))
        if self._io_order != "sequential":
            order = sorted(order, key=lambda j: (-toks[j], -mass[exps[j]], j))
        base = m * self.E
        placer, admit_hook = self.placer, self._admit_hook
        cpu_jobs: list = []
        pending: dict = {}  # hebf: key -> item, in hotness order

        def copy(e: int, have: int, b: int, after):
            x = nb.get((have, b))
            if x is None:
                x = nb[(have, b)] = prec.copy_bytes(spec, have, b)
            st.bytes_h2d += x
            return tl.copy(costs.h2d_us(x), H2D, after=after, on_compute=on_compute, blocking=blocking,
                           name=f"L{li} e{e} bits {have}->{b}" if rec else "")

        def kernels(e: int, nt: int, b: int, after):
            each = kt.get((nt, b))
            if each is None:
                w = nb.get(("w", b))
                if w is None:
                    w = nb[("w", b)] = prec.weight_bytes(spec, b)
                each = kt[(nt, b)] = costs.expert_gpu_us_at(nt, w) / kpe
            return tl.kernels(kpe, each, after=after, name=f"L{li} e{e}" if rec else "", cat="expert")

        def finish(item) -> None:  # one whole copy, then the kernels
            key, e, nt, have, b, slot_free, cached = item
            dep = copy(e, have, b, slot_free)
            end = kernels(e, nt, b, dep)
            if cached:
                ready[key] = dep
                last_use[key] = end
            else:  # the staging buffer is free again once this expert's kernels are done
                self._stage[self._stage_i] = end
                self._stage_i = (self._stage_i + 1) % len(self._stage)

        for j in order:
            e, nt = exps[j], toks[j]
            key = base + e
            b = need[e]
            t = st.t
            st.t = t + 1
            hit = part.find(key, t)
            have = res.get(key, top) if hit else 0
            if hit and have >= b:
                st.hits += 1
                if key in st.prefetched:
                    st.prefetched.discard(key)
                    st.prefetch_used += 1
                last_use[key] = kernels(e, nt, b, ready.get(key))
                continue
            st.misses += 1
            if hit:  # resident at fewer bits: the missing planes go into its own slot
                slot_free, cached = None, True
            else:
                if placer is not None and placer.place(Access(m, e, nt, t), costs) == "cpu":
                    cpu_jobs.append((e, nt))
                    continue
                cached = bool(cap) and (not admit_hook or part.admit(key, t))
                if cached:
                    v = None
                    if pending and self._fill[p] >= cap:
                        v = part.to_evict(t)
                        if v in pending:  # its slot is reused within this layer: its copy and kernels first
                            finish(pending.pop(v))
                    slot_free = self._admit(part, cap, p, key, t, v)
                else:
                    slot_free = self._stage[self._stage_i]
            st.copies += 1
            if cached:
                res[key] = b
            item = (key, e, nt, have, b, slot_free, cached)
            if split and cached:
                pending[key] = item
            else:
                finish(item)
        if pending:  # HEBF: the base planes of the missing experts, hottest first, then the other planes
            items = list(pending.values())
            base_bits = self._levels[0]
            first: list = []
            later: list = []
            for it in items:
                key, e, nt, have, b, slot_free, _ = it
                dep = None
                if have < base_bits:
                    dep = copy(e, have, base_bits, slot_free)
                (first if b <= base_bits else later).append(it)
                ready[key] = dep
            for key, e, _nt, have, b, slot_free, _ in later:
                ready[key] = copy(e, max(have, base_bits), b, slot_free if have >= base_bits else None)
            for key, e, nt, _have, b, _, _ in first + later:  # kernels in the order their data arrives
                last_use[key] = kernels(e, nt, b, ready[key])
        return cpu_jobs
