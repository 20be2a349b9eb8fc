"""The step timing of the plain recurrence `Timeline`, with its clocks in local variables.

`StepTiming` drives any timeline through its methods (one call per kernel group, copy and sync); for the
plain `Timeline` that is most of a replay's run time. `FastStepTiming` computes the same recurrence — the
same arithmetic, in the same order, so the results are equal bit for bit (tested) — with the host clock,
the queues' free times and the busy/stall counters in local variables, and hands them back to the
timeline at the end of the step. Steps recorded for a timeline (and CPU experts, which are rare) go through
the timeline's methods, and so do runtimes with per-expert host work or syncs, split or written-back copies,
fused MoE kernels or CUDA graphs (`StepTiming.play`).
"""

from __future__ import annotations

from simmoe.engine.planner import FETCH, LOAD, RUN, AccessPlanner
from simmoe.engine.schedule import Step
from simmoe.engine.step_timing import StepTiming
from simmoe.engine.timeline import Timeline


class FastStepTiming(StepTiming):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._expert_k: dict = {}  # tokens (or (tokens, weight bytes)) -> (each, kpe * each, (kpe - 1) * each)
        rh, rx = self.rh, self.rx
        # what this path computes: anything else goes through StepTiming.play
        self.inlined = not (rh.per_expert_us or rh.syncs_per_expert or rh.per_moe_layer_us or rh.per_copy_us
                            or rh.per_layer_us or rx.prefetch_stream != "separate" or self.rk.per_expert_gather
                            or rh.graphs_max_tokens or rx.writeback or rx.copies_per_expert != 1 or self.rk.fused
                            or self.tiered)  # the SSD tier's reads: through the timeline's methods

    def _expert_kernels(self, nt: int, wb: int) -> tuple[float, float, float]:
        kpe = self.rk.per_expert
        each = self._each(nt, wb)
        x = self._expert_k[nt if not wb else (nt, wb)] = (each, kpe * each, (kpe - 1) * each)
        return x

    def play(self, step: Step, i: int, planner: AccessPlanner) -> None:
        tl = self.tl
        if tl.record or tl.__class__ is not Timeline or not self.inlined:
            return super().play(step, i, planner)
        sc = self.sc
        spec, hw = sc.spec, sc.hw
        planner.begin_step(step, i)
        d = self.dense_costs(step)
        ka, kr, kd, ks = d.ka, d.kr, d.kd, d.ks
        host = tl.host
        host.launch_us = self.launch_us
        Lh = host.launch_us
        ci = host.copy_issue_us
        sy = host.sync_us
        kpe = self.rk.per_expert
        moe_syncs, step_syncs = self.rh.syncs_per_moe_layer, max(self.rh.syncs_per_step, 1)
        kmin = hw.gpu.kernel_min_us
        shared_engine = tl.copy_engines < 2
        on_compute, blocking = self.on_compute, self.blocking
        ready, last = self.ready, self.last
        copy_us = self._copy_us
        expert_k = self._expert_k
        L2, kL = 2 * Lh, kpe * Lh  # the same products Timeline.kernels forms
        c = tl.c
        # the timeline's state, as locals (written back before any method call and at the end)
        h, g, h2d, d2h = tl.h, tl.gpu_free, tl.h2d_free, tl.d2h_free
        gbusy, hbusy = c.gpu_busy, c.h2d_busy
        s_copy, s_disp = c.stall_copy, c.stall_dispatch

        def kernels(n: int, each: float, after) -> float:
            """Timeline.kernels without an `after` that waits for the CPU (see `combine` below)."""
            nonlocal h, g, gbusy, s_copy, s_disp
            issue1 = h + Lh
            start = issue1 if issue1 > g else g
            if after is not None and after > start:
                start = after
                if after > g and after > issue1:
                    s_copy += after - (g if g > issue1 else issue1)
            if issue1 > g:
                s_disp += (issue1 if issue1 < start else start) - g
            busy = n * each
            end = start + busy
            if n > 1:
                e2 = h + 2 * Lh + (n - 1) * each
                e3 = h + n * Lh + each
                tail = e2 if e2 > e3 else e3
                if tail > end:
                    s_disp += tail - end
                    end = tail
            gbusy += busy
            g = end
            h = h + n * Lh
            return end

        def copy(us: float, after) -> float:
            """Timeline.copy of an expert (H2D; on the compute stream and/or blocking as configured)."""
            nonlocal h, g, h2d, d2h, hbusy, s_copy
            h += ci
            qfree = h2d
            if shared_engine and d2h > qfree:
                qfree = d2h
            start = h if h > qfree else qfree
            if after is not None and after > start:
                start = after
            prev_gpu = g
            if on_compute and prev_gpu > start:
                start = prev_gpu
            end = start + us
            h2d = end
            if shared_engine:
                d2h = end
            hbusy += us
            if on_compute:
                s_copy += end - prev_gpu
                g = end
            if blocking:
                h = end
            return end

        def sync(t: float) -> None:
            nonlocal h
            if t > h:
                h = t
            h += sy

        if self.rh.per_step_us:  # host_work(per_step_us)
            h += self.rh.per_step_us
        if ks:
            kernels(ks // 2 or 1, d.extra_each, None)
        moe_of = sc.moe_of
        # a layer's dense kernel groups, which wait for nothing but the stream, with the products
        # Timeline.kernels forms: (kernels, each, kernels x each, (kernels - 1) x each, kernels x launch, router)
        def group(n: int, each: float, router: bool = False) -> tuple:
            return (n, each, n * each, (n - 1) * each, n * Lh, router)

        dense_layer = (group(ka, d.attn_each), group(kd, d.dense_each))
        moe_layer = (group(ka, d.attn_each), group(kr, d.router_each, True)) + \
            ((group(kd, d.shared_each),) if d.shared_each else ())
        if not ka:
            dense_layer, moe_layer = dense_layer[1:], moe_layer[1:]
        r_end = 0.0
        for li in range(spec.num_layers):
            m = moe_of[li]
            for n, each, busy, rest, nL, router in (dense_layer if m < 0 else moe_layer):
                # kernels(n, each, None), inlined
                issue1 = h + Lh
                start = issue1 if issue1 > g else g
                if issue1 > g:
                    s_disp += (issue1 if issue1 < start else start) - g
                end = start + busy
                if n > 1:
                    e2 = h + L2 + rest
                    e3 = h + nL + each
                    tail = e2 if e2 > e3 else e3
                    if tail > end:
                        s_disp += tail - end
                        end = tail
                gbusy += busy
                g = end
                h = h + nL
                if router:
                    r_end = end
            if m < 0:
                continue
            for _ in range(moe_syncs):  # sync(r_end): the routing to the host
                if r_end > h:
                    h = r_end
                h += sy
            ops, cpu, pre = planner.plan_layer(m)
            for op in ops:
                kind = op[0]
                if kind == RUN:
                    buf = op[1]
                    dep = ready[buf]
                elif kind == LOAD:
                    buf = op[1]
                    free = last[buf]
                    if free is None:
                        free = ready[buf]
                    us = copy_us.get(op[6])
                    if us is None:
                        us = self.copy_us(op[6])
                    # copy(us, free), inlined
                    h += ci
                    qfree = h2d
                    if shared_engine and d2h > qfree:
                        qfree = d2h
                    start = h if h > qfree else qfree
                    if free is not None and free > start:
                        start = free
                    prev_gpu = g
                    if on_compute and prev_gpu > start:
                        start = prev_gpu
                    dep = start + us
                    h2d = dep
                    if shared_engine:
                        d2h = dep
                    hbusy += us
                    if on_compute:
                        s_copy += dep - prev_gpu
                        g = dep
                    if blocking:
                        h = dep
                    ready[buf] = dep
                elif kind == FETCH:
                    _, buf, _m, _e, nbytes, overwrite, _have, _need = op
                    free = None
                    if overwrite:
                        free = last[buf]
                        if free is None:
                            free = ready[buf]
                        last[buf] = None
                    ready[buf] = copy(self.copy_us(nbytes), free)
                    continue
                else:
                    raise ValueError(f"unknown action {op!r}")
                x = expert_k.get(op[4] if not op[5] else (op[4], op[5]))
                if x is None:
                    x = self._expert_kernels(op[4], op[5])
                each, busy, rest = x
                # kernels(kpe, each, dep), inlined: one expert's kernels are the commonest op of a replay
                issue1 = h + Lh
                start = issue1 if issue1 > g else g
                if dep is not None and dep > start:
                    start = dep
                    if dep > g and dep > issue1:
                        s_copy += dep - (g if g > issue1 else issue1)
                if issue1 > g:
                    s_disp += (issue1 if issue1 < start else start) - g
                end = start + busy
                if kpe > 1:
                    e2 = h + L2 + rest
                    e3 = h + kL + each
                    tail = e2 if e2 > e3 else e3
                    if tail > end:
                        s_disp += tail - end
                        end = tail
                gbusy += busy
                g = end
                h = h + kL
                last[buf] = end
            cpu_done = None
            if cpu:  # rare: through the timeline's methods, with the state handed over and back
                tl.h, tl.gpu_free, tl.h2d_free, tl.d2h_free = h, g, h2d, d2h
                c.gpu_busy, c.h2d_busy, c.stall_copy, c.stall_dispatch = gbusy, hbusy, s_copy, s_disp
                cpu_done = self._cpu_experts(cpu, r_end, li)
                tl.kernels(1, kmin, after=cpu_done, wait="cpu")  # the combine waits for the CPU experts
                h, g, h2d, d2h = tl.h, tl.gpu_free, tl.h2d_free, tl.d2h_free
                gbusy, hbusy, s_copy, s_disp = c.gpu_busy, c.h2d_busy, c.stall_copy, c.stall_dispatch
            else:  # the combine: kernels(1, kmin, None), inlined
                issue1 = h + Lh
                start = issue1 if issue1 > g else g
                if issue1 > g:
                    s_disp += (issue1 if issue1 < start else start) - g
                end = start + kmin
                gbusy += kmin
                g = end
                h = h + Lh
            for _, buf, _layer, _e, nbytes in pre:  # prefetches: plain H2D copies on the copy stream
                free = last[buf]
                if free is None:
                    free = ready[buf]
                last[buf] = None
                us = copy_us.get(nbytes)
                if us is None:
                    us = self.copy_us(nbytes)
                h += ci
                qfree = h2d
                if shared_engine and d2h > qfree:
                    qfree = d2h
                start = h if h > qfree else qfree
                if free is not None and free > start:
                    start = free
                end = start + us
                h2d = end
                if shared_engine:
                    d2h = end
                hbusy += us
                ready[buf] = end
        if ks:
            kernels(ks - (ks // 2 or 1) or 1, d.extra_each, None)
        for _ in range(step_syncs):
            sync(g)
        tl.h, tl.gpu_free, tl.h2d_free, tl.d2h_free = h, g, h2d, d2h
        c.gpu_busy, c.h2d_busy, c.stall_copy, c.stall_dispatch = gbusy, hbusy, s_copy, s_disp
