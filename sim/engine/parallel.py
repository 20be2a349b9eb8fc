"""A model split across the GPUs of one machine: pipeline (layers) or expert parallelism.

`--parallel pipeline` (llama.cpp `--split-mode layer`, accelerate `device_map="auto"`): each GPU holds a
contiguous range of transformer layers: their dense weights, their KV cache and their MoE layers' expert
caches. Layers go to GPUs as llama.cpp's `get_layer_buft_list` assigns them (src/llama-model.cpp): layer
`il` to the first GPU whose cumulative split exceeds `il / (n_layer + 1)` (the output layer counts as layer
n_layer, so it lands on the last GPU); with equal GPUs the splits are 1/N, 2/N, ... (llama.cpp's default
split is proportional to each device's free memory). accelerate's `device_map="auto"` also gives each GPU a
contiguous run of modules: `get_balanced_memory` (accelerate/utils/modeling.py) caps each GPU's share so that
the layers balance, and `infer_auto_device_map` fills the GPUs in order; its cut points can differ from
llama.cpp's by a layer. The input embedding stays on the first GPU (accelerate; llama.cpp keeps it on the
CPU), the output head on the last. The hidden state of the step's tokens crosses
to the next GPU at each stage boundary. A decode step runs the stages one after another: no micro-batching
(neither llama.cpp's layer split nor accelerate pipelines a batch), so at any time one GPU computes; the
others may still copy experts for their layers.

`--parallel expert` (DeepSpeed-MoE, deepspeed/moe/layer.py and sharded_moe.py): each MoE layer's experts are
sharded in contiguous blocks, `num_local_experts = num_experts // ep_size` per GPU (the expert count must
divide evenly, as DeepSpeed asserts), each GPU caching its own experts in its own memory from its own host
link. Unlike DeepSpeed (one process per GPU, dense layers replicated and data-parallel), the dense part
(attention, router, shared experts, KV cache, head) runs on GPU 0 and one host thread drives every GPU:
per MoE layer, after the router the hidden states of the tokens routed to another GPU's experts are
dispatched to it (MOELayer's first all-to-all, here one copy per GPU), that GPU runs its experts, the
outputs come back (the second all-to-all) and GPU 0 combines them. At batch 1 a data-parallel replica per
GPU would leave the others' dense part idle anyway. The host issues, per MoE layer, each other GPU's
dispatch, experts and return copy in GPU order, then GPU 0's own experts, then the combine (so the other
GPUs start while GPU 0 computes).

Each GPU's prefetcher proposes only for its own layers and experts (a pipeline stage does not prefetch the
next stage's first layer: that stage's cache is another GPU's memory).

Each GPU has its own `AccessPlanner` over its part of the trace (pipeline: its MoE layers; expert: the
trace with other GPUs' experts masked out), so caches, hits and misses are per GPU and every activation is
served by the GPU that owns it. One GPU (`--gpus 1`) gives the single-GPU engine's results exactly.
A pipeline stage computes its CPU-placed experts as one GPU does (the model's CPU layers, e.g. llama.cpp's
`--n-cpu-moe`, keep their numbering; the host's one CPU worker serves every stage). Not modelled on several
GPUs: CPU placements with expert parallelism, routing policies, chunked preemptible prefetches, a host
thread per GPU, tensor parallelism, micro-batched pipelines.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import simpy

from simmoe.engine.config import ReplayConfig
from simmoe.engine.devices import DeviceCounters, MultiSimpyTimeline, MultiTimeline, link_names
from simmoe.engine.memory import DeviceShare
from simmoe.engine.planner import LOAD, RUN, AccessPlanner, PlanCounts
from simmoe.engine.scenario import Scenario, prepare, with_weights
from simmoe.engine.schedule import Step
from simmoe.engine.serving import cycle_trace
from simmoe.engine.setup import resolve
from simmoe.engine.step_timing import StepTiming, host_costs
from simmoe.engine.tiers import check_parallel
from simmoe.engine.timeline import D2H, H2D
from simmoe.errors import InputError, param_ref
from simmoe.hw.profile import HwProfile
from simmoe.models.spec import BYTES_PER_PARAM, ModelSpec
from simmoe.policies.base import PolicySet
from simmoe.runtime.profile import RuntimeProfile, load_runtime
from simmoe.trace.format import Trace


@dataclass(frozen=True)
class ParallelScenario:
    mode: str  # "pipeline" | "expert"
    n: int  # GPUs used
    hw: HwProfile
    hw_name: str
    cfg: ReplayConfig
    devices: tuple[Scenario, ...]  # per GPU: its part of the trace, its memory plan and cache
    driver: Scenario  # the whole run as the replay driver reads it (schedule, rows, the whole model)
    layer_gpu: tuple[int, ...]  # transformer layer -> GPU running it
    moe_lo: tuple[int, ...]  # pipeline: each GPU's first MoE layer (its planner's layer 0); expert: zeros
    expert_gpu: tuple[int, ...]  # expert -> GPU holding it (expert parallelism; pipeline: all 0)
    shares: tuple[DeviceShare, ...]  # dense weights and KV per token each GPU holds


def pipeline_layers(num_layers: int, n: int) -> tuple[int, ...]:
    """Transformer layer -> GPU as llama.cpp splits layers over n equal GPUs (output layer = layer L)."""
    return tuple(i * n // (num_layers + 1) for i in range(num_layers))


def expert_owners(num_experts: int, n: int) -> tuple[int, ...]:
    """Expert -> GPU in DeepSpeed's contiguous blocks of num_experts // n."""
    local = num_experts // n
    return tuple(e // local for e in range(num_experts))


def _check(hw: HwProfile, hw_name: str, pset: PolicySet, cfg: ReplayConfig) -> int:
    have = hw.num_gpus
    if have == 1:
        raise InputError(None, None, f"the profile {hw_name} has one GPU (no topology: section): there is "
                         "nothing to split the model over", param="parallel")
    n = cfg.gpus if cfg.gpus is not None else have
    if n > have:
        raise InputError(None, None, f"the profile {hw_name} has {have} GPU{'s' if have > 1 else ''}, "
                         f"got {n}", param="gpus")
    if hw.gpu.unified_memory or hw.gpu.executes_on_host:
        raise InputError(None, None, f"{hw_name} has no discrete GPUs to split the model over", param="parallel")
    r = resolve(pset)
    kinds = (("routing", r.routing_cls),) + ((("placement", r.placement_cls),) if cfg.parallel == "expert" else ())
    for kind, cls in kinds:  # a pipeline stage computes its CPU experts as one GPU does
        if cls is not None:
            raise InputError(None, None, f"{cls.name}: {kind} policies are not modelled with "
                             f"{param_ref('parallel')} {cfg.parallel} (several GPUs)", param=kind)
    if cfg.prefetch_chunk_mb is not None:
        raise InputError(None, None, f"chunked preemptible prefetches are not modelled with "
                         f"{param_ref('parallel')} {cfg.parallel}", param="prefetch_chunk_mb")
    return n


def _part(tr: Trace, lo: int, hi: int) -> Trace:
    """The trace's MoE layers [lo, hi) (a pipeline stage's)."""
    cut = lambda a: None if a is None else np.ascontiguousarray(a[:, lo:hi])  # noqa: E731
    pred = tr.predicted
    if pred is not None:  # row l predicts layer l+1: a stage keeps its own layers' rows
        pred = cut(pred)
    return dataclasses.replace(tr, experts=cut(tr.experts), gates=cut(tr.gates), predicted=pred)


def _owned(tr: Trace, owner: np.ndarray, g: int) -> Trace:
    """The trace with other GPUs' experts masked out (-1)."""
    ex = tr.experts
    keep = (ex >= 0) & (owner[np.maximum(ex, 0)] == g)
    experts = np.where(keep, ex, -1).astype(ex.dtype)
    gates = None if tr.gates is None else np.where(keep, tr.gates, np.nan).astype(tr.gates.dtype)
    pred = tr.predicted
    if pred is not None:
        pred = np.where((pred >= 0) & (owner[np.maximum(pred, 0)] == g), pred, -1).astype(pred.dtype)
    return dataclasses.replace(tr, experts=experts, gates=gates, predicted=pred)


def _stage_share(spec: ModelSpec, layers: list[int], first: bool, last: bool) -> DeviceShare:
    dense_params = sum(spec.layer_dense_params(i) for i in layers)
    emb = spec.vocab_size * spec.d_model * (int(first) + int(last))  # input embedding, output head
    bits = spec.dense_bits or 8 * BYTES_PER_PARAM[spec.dtype]  # 0: the model's own precision (ModelSpec.dense_bytes)
    dense = int(round(dense_params * bits / 8 + emb * BYTES_PER_PARAM[spec.dtype]))
    return DeviceShare(dense=dense, kv_per_token=spec.kv_bytes_per_token() * len(layers) // spec.num_layers)


def prepare_parallel(trace: Trace, hw: HwProfile, pset: PolicySet | None = None, cfg: ReplayConfig | None = None,
                     hw_name: str | None = None, runtime: RuntimeProfile | None = None) -> ParallelScenario:
    cfg = cfg or ReplayConfig()
    pset = pset or PolicySet()
    hw_name = hw_name or hw.name
    n = _check(hw, hw_name, pset, cfg)
    if runtime is None:
        runtime = load_runtime(resolve(pset).runtime)
    tr = trace
    if cfg.max_requests is not None:
        tr = tr.select(requests=tr.request_ids[: cfg.max_requests])
    if cfg.requests is not None:
        tr = cycle_trace(tr, cfg.requests)
    sub_cfg = cfg.model_copy(update={"max_requests": None, "requests": None, "parallel": "none", "gpus": None})
    spec = with_weights(tr.spec, runtime)
    L, E = spec.num_layers, spec.num_experts
    moe = list(spec.moe_layers)
    if moe != sorted(moe):
        raise InputError(f"model {spec.name!r}", "moe_layers", "must be in increasing order to split by layers")
    full = DeviceShare(spec.dense_bytes(), spec.kv_bytes_per_token())
    if cfg.parallel == "pipeline":
        layer_gpu = pipeline_layers(L, n)
        moe_gpu = [layer_gpu[li] for li in moe]
        moe_lo = tuple(moe_gpu.index(g) if g in moe_gpu else -1 for g in range(n))
        if -1 in moe_lo:
            g = moe_lo.index(-1)
            raise InputError(None, None, f"{n} GPUs for {L} layers leave GPU {g} without a MoE layer", param="gpus")
        bounds = list(moe_lo) + [len(moe)]
        parts = [tr if n == 1 else _part(tr, bounds[g], bounds[g + 1]) for g in range(n)]
        shares = tuple(full if n == 1 else _stage_share(spec, [i for i in range(L) if layer_gpu[i] == g],
                                                        g == 0, g == n - 1) for g in range(n))
        expert_gpu = (0,) * E
    else:
        if E % n:
            raise InputError(None, None, f"expert parallelism shards {E} experts per layer evenly: {n} GPUs "
                             "do not divide them (DeepSpeed-MoE asserts the same)", param="gpus")
        layer_gpu = (0,) * L
        moe_lo = (0,) * n
        expert_gpu = expert_owners(E, n)
        owner = np.asarray(expert_gpu)
        parts = [tr if n == 1 else _owned(tr, owner, g) for g in range(n)]
        shares = tuple(full if g == 0 else DeviceShare(0, 0) for g in range(n))
    cpu: list[frozenset[int] | None] = [None] * n
    r = resolve(pset)
    if n > 1 and r.placement_cls is not None:  # the model's CPU layers, in each stage's own numbering
        whole = r.placement_cls(r.placement_opts).cpu_layers(len(moe))
        bounds = list(moe_lo) + [len(moe)]
        cpu = [frozenset(m - bounds[g] for m in whole if bounds[g] <= m < bounds[g + 1]) for g in range(n)]
    devices = tuple(prepare(parts[g], hw, pset, sub_cfg, hw_name if n == 1 else f"{hw_name} GPU {g}", runtime,
                            share=None if n == 1 else shares[g], cpu_layers=cpu[g]) for g in range(n))
    d0 = devices[0]
    check_parallel(tr.experts, tr.num_layers, spec, hw, hw_name, cfg, d0.memory.expert_bytes)  # tiers.py
    if n == 1:
        driver = d0
    else:
        whole = dataclasses.replace(d0.spec, name=spec.name, num_layers=spec.num_layers, moe_layers=spec.moe_layers)
        moe_of = [-1] * L
        for m, li in enumerate(spec.moe_layers):
            moe_of[li] = m
        driver = dataclasses.replace(d0, trace=tr, spec=whole, hw_name=hw_name, cfg=cfg, moe_of=tuple(moe_of))
    return ParallelScenario(mode=cfg.parallel, n=n, hw=hw, hw_name=hw_name, cfg=cfg, devices=devices,
                            driver=driver, layer_gpu=tuple(layer_gpu), moe_lo=moe_lo, expert_gpu=tuple(expert_gpu),
                            shares=shares)


# ---- the planners together ---------------------------------------------------------------------------------
class SumCounts:
    """The per-GPU planners' counts, added up (what the replay driver and Result read)."""

    def __init__(self, planners: list[AccessPlanner], pipeline: bool) -> None:
        self._cs = [p.c for p in planners]
        self._pipeline = pipeline

    def __getattr__(self, name: str):
        vals = [getattr(c, name) for c in self._cs]
        if isinstance(vals[0], list):  # per MoE layer: a pipeline's GPUs hold consecutive layers
            if self._pipeline:
                return [x for v in vals for x in v]
            return [sum(xs) for xs in zip(*vals)]
        return sum(vals)


class Planners:
    def __init__(self, planners: list[AccessPlanner], pipeline: bool) -> None:
        self.all = planners
        self.c = SumCounts(planners, pipeline)


# ---- timing ------------------------------------------------------------------------------------------------
class _View:
    """One GPU of a multi-GPU timeline, as `StepTiming` drives a timeline."""

    def __init__(self, tl, g: int) -> None:
        self._tl, self._g = tl, g
        self.host = tl.host

    @property
    def record(self) -> bool:
        return self._tl.record

    def join(self, *handles):
        return self._tl.join(*handles)

    def host_work(self, *a, **k):
        self._tl.set_device(self._g)
        return self._tl.host_work(*a, **k)

    def sync(self, *a, **k):
        self._tl.set_device(self._g)
        return self._tl.sync(*a, **k)

    def kernels(self, *a, **k):
        self._tl.set_device(self._g)
        return self._tl.kernels(*a, **k)

    def copy(self, *a, **k):
        self._tl.set_device(self._g)
        return self._tl.copy(*a, **k)

    def cpu(self, *a, **k):
        self._tl.set_device(self._g)
        return self._tl.cpu(*a, **k)


def _act_bytes(ops: list[tuple]) -> int:
    """Token-expert pairs a GPU's expert actions compute (what an all-to-all dispatches to it)."""
    return sum(op[4] for op in ops if op[0] == RUN or op[0] == LOAD)


class ParallelStepTiming:
    """`StepTiming.play` over several GPUs: the same work in the same order, each layer (pipeline) or each
    GPU's experts (expert parallelism) on its GPU, with the hidden state moved between them."""

    def __init__(self, ps: ParallelScenario, tl, planners: Planners) -> None:
        self.ps, self.tl = ps, tl
        self.planners = planners.all
        self.parts = [StepTiming(sc, _View(tl, g), p, None) for g, (sc, p) in enumerate(zip(ps.devices,
                                                                                          self.planners))]
        self.launch_us = self.parts[0].launch_us
        # the dense part's costs, of the whole model (a pipeline stage's scenario holds a part of it)
        self.dense = StepTiming(ps.driver, _View(tl, 0), self.planners[0], None)
        n = ps.n
        self.totals = [DeviceCounters() for _ in range(n)]
        self.act_bytes = {(g, d): 0 for g in range(n) for d in (H2D, D2H)}  # activations over each GPU's link
        self.peer_bytes = 0
        self.link_bytes = {(s, d): 0 for s in link_names(ps.hw.topology, n) for d in (H2D, D2H)}
        self.stage_moves = 0
        self.expert_moves = 0

    # ---- moving activations between GPUs -----------------------------------------------------------------
    def _counters(self) -> list:
        tl = self.tl
        return [d.c for d in tl.devs] if isinstance(tl, MultiTimeline) else tl.dc

    def move(self, src: int, dst: int, nbytes: int, after, name: str):
        """Activations src -> dst, after `after`: a direct copy (p2p), else staged through host memory."""
        tl, topo = self.tl, self.ps.hw.topology
        links = tl.links
        if topo is not None and topo.p2p:
            us = topo.p2p_latency_us + nbytes / (topo.p2p_gbps * 1e3)
            self.peer_bytes += nbytes
            if not topo.nvlink:  # over PCIe: out of the source's link, into the destination's
                self.act_bytes[(src, D2H)] += nbytes
                self.act_bytes[(dst, H2D)] += nbytes
            for key in links.peer_path(src, dst):
                self.link_bytes[key] += nbytes
            done = tl.peer_copy(src, dst, us, after, name=name)
            tl.set_device(dst)
            return done
        costs = self.ps.devices[src].costs
        for g, d in ((src, D2H), (dst, H2D)):
            self.act_bytes[(g, d)] += nbytes
            s = links.of(g)
            if s is not None:
                self.link_bytes[(s, d)] += nbytes
        tl.set_device(src)
        a = tl.copy(costs.d2h_us(nbytes, pinned=True), D2H, after=after, name=f"{name} to host")
        tl.set_device(dst)
        return tl.copy(costs.h2d_us(nbytes, pinned=True), H2D, after=a, name=f"{name} from host")

    # ---- a step ------------------------------------------------------------------------------------------
    def play(self, step: Step, i: int, _planners=None) -> None:
        ps, tl = self.ps, self.tl
        sc0 = ps.devices[0]
        hw, spec = sc0.hw, ps.driver.spec
        pipeline = ps.mode == "pipeline"
        counters = self._counters()
        for c in counters:
            c.reset()
        for p in self.planners:
            p.begin_step(step, i)
        part0 = self.parts[0]
        rh = part0.rh
        rec = tl.record
        dense = self.dense
        g = ps.layer_gpu[0]
        tl.set_device(g)
        d = dense.begin_dense_step(step, tl)
        act = sc0.costs.activation_bytes(len(step.rows))
        kpe = dense.expert_launches(step)
        for li in range(spec.num_layers):
            lg = ps.layer_gpu[li]
            if lg != g:  # a stage boundary: the hidden state moves on
                done = self.move(g, lg, act, tl.stream_end(), name=f"L{li} hidden state" if rec else "")
                self.stage_moves += 1
                tl.set_device(lg)
                tl.wait(done)
                g = lg
            part = self.parts[g]
            m = ps.driver.moe_of[li]
            r_end = dense.layer_before_experts(tl, d, li, m >= 0)
            if m < 0:
                continue
            if pipeline:
                ops, cpu, pre = self.planners[g].plan_layer(m - ps.moe_lo[g])
                self._experts(part, ops, li, kpe)
                cpu_done = part._cpu_experts(cpu, r_end, li) if cpu else None
                tl.set_device(g)
                tl.kernels(1, hw.gpu.kernel_min_us, after=cpu_done, name=f"L{li} combine" if rec else "", wait="cpu")
                if pre:
                    part._prefetch(pre)
                continue
            plans = [p.plan_layer(m) for p in self.planners]
            back = []
            for r in range(1, ps.n):  # dispatch, remote experts, outputs back to GPU 0
                ops, _cpu, pre = plans[r]
                if not ops:
                    if pre:
                        self.parts[r]._prefetch(pre)
                    continue
                nb = sc0.costs.activation_bytes(_act_bytes(ops))
                sent = self.move(0, r, nb, r_end, name=f"L{li} dispatch to GPU {r}" if rec else "")
                tl.wait(sent)
                self._experts(self.parts[r], ops, li, kpe)
                tl.set_device(r)
                back.append(self.move(r, 0, nb, tl.stream_end(), name=f"L{li} combine from GPU {r}" if rec else ""))
                self.expert_moves += 2
                if pre:
                    self.parts[r]._prefetch(pre)
            ops, _cpu, pre = plans[0]
            self._experts(part0, ops, li, kpe)
            tl.set_device(0)
            tl.kernels(1, hw.gpu.kernel_min_us, after=tl.join(*back), name=f"L{li} combine" if rec else "",
                       wait="peer" if back else "cpu")
            if pre:
                part0._prefetch(pre)
        if d.ks:
            tl.kernels(d.ks - (d.ks // 2 or 1) or 1, d.extra_each, name="lm_head+sample")
        for _ in range(max(rh.syncs_per_step, 1)):
            tl.sync(name="token to host")
        self._close_step(counters)

    def _experts(self, part: StepTiming, ops: list, li: int, kpe: int) -> None:
        if part.rk.fused:
            part.issue_fused(ops, li)
        else:
            part.issue(ops, li, kpe)

    def _close_step(self, counters: list) -> None:
        """The step's counters: per GPU into the run's totals; their mean over the GPUs for the step log (busy
        fractions stay fractions of one GPU), the CPU's busy time and the stalls summed."""
        agg = self.tl.c
        n = len(counters)
        for name in DeviceCounters.__dataclass_fields__:
            total = 0.0
            for g, c in enumerate(counters):
                v = getattr(c, name)
                setattr(self.totals[g], name, getattr(self.totals[g], name) + v)
                total += v
            # GPU and link busy: the mean GPU; the one CPU's busy time and the stalls: summed
            setattr(agg, name, total / n if name.endswith("busy") and name != "cpu_busy" else total)


def make_timeline(ps: ParallelScenario, env: simpy.Environment):
    sc0 = ps.devices[0]
    host = host_costs(sc0)
    if ps.cfg.engine == "simpy":
        return MultiSimpyTimeline(env, host, ps.hw.pcie.copy_engines, ps.n, ps.hw.topology,
                                  record=ps.cfg.timeline_steps is not None)
    return MultiTimeline(host, ps.hw.pcie.copy_engines, ps.n, ps.hw.topology)


def build(ps: ParallelScenario, env: simpy.Environment):
    """(planners, timeline, step timing) of a multi-GPU run."""
    planners = Planners([AccessPlanner(sc) for sc in ps.devices], ps.mode == "pipeline")
    tl = make_timeline(ps, env)
    return planners, tl, ParallelStepTiming(ps, tl, planners)


# ---- results -----------------------------------------------------------------------------------------------
_KIND = {"gpu": (0, "compute stream"), "h2d": (1, "H2D copy engine (its link)"), "d2h": (2, "D2H copy engine")}


def timeline_events(events: list) -> list:
    """The recorded events with one named track per GPU queue, switch uplink direction and peer pair, in GPU
    order (the Chrome trace numbers tracks in order of first appearance)."""
    import re

    def track(t: str) -> tuple[tuple, str]:
        m = re.fullmatch(r"(gpu|h2d|d2h)(\d+)", t)
        if m:
            rank, what = _KIND[m.group(1)]
            return (1, int(m.group(2)), rank), f"GPU {m.group(2)} {what}"
        m = re.fullmatch(r"switch(\d+) (h2d|d2h)", t)
        if m:
            return (2, int(m.group(1)), m.group(2)), f"switch {m.group(1)} uplink {m.group(2).upper()}"
        if t.startswith("p2p "):
            a, b = t[4:].split("->")
            return (3, int(a), int(b)), f"peer copies GPU {a} -> GPU {b}"
        return (0, 0, 0), t  # the host thread, the CPU worker

    named = [(track(e.track), e) for e in events]
    named.sort(key=lambda x: x[0])
    return [dataclasses.replace(e, track=name) for (_, name), e in named]


def device_results(ps: ParallelScenario, timing: ParallelStepTiming, planners: Planners, steps,
                   makespan_us: float) -> dict:
    """Per GPU and per link: what each did (summary["parallel"])."""
    n = ps.n
    frac = (lambda us: us / makespan_us) if makespan_us else (lambda us: 0.0)  # noqa: E731
    kv_full = ps.driver.spec.kv_bytes_per_token()
    kv_peak = int(steps["kv_bytes"].max()) if len(steps) else 0
    gpus = []
    for g in range(n):
        sc, p, t = ps.devices[g], planners.all[g], timing.totals[g]
        c: PlanCounts = p.c
        plan = sc.memory
        kv = kv_peak if n == 1 else (kv_peak * ps.shares[g].kv_per_token // kv_full if kv_full else 0)
        peak = plan.fixed - plan.kv_reserved + kv + c.peak_occupancy * plan.expert_bytes
        acc = c.hits + c.misses
        own = ps.layer_gpu if ps.mode == "pipeline" else ps.expert_gpu
        lo, hi = own.index(g), len(own) - 1 - own[::-1].index(g)
        what = "layer" if ps.mode == "pipeline" else "expert"
        owns = f"{what}s {lo}-{hi}" if hi > lo else f"{what} {lo}"
        gpus.append({
            "gpu": g, "holds": owns, "accesses": acc, "hits": c.hits, "misses": c.misses,
            "hit_rate": c.hits / acc if acc else 0.0, "copies": c.copies, "bytes_h2d": c.bytes_h2d,
            "cache_slots": plan.cache_slots, "gpu_busy": frac(t.gpu_busy), "h2d_busy": frac(t.h2d_busy),
            "d2h_busy": frac(t.d2h_busy), "stall_peer_ms": t.stall_peer / 1e3,
            "peak_mem_bytes": int(peak), "usable_mem_bytes": plan.usable,
            "dense_bytes": plan.dense, "kv_reserved_bytes": plan.kv_reserved,
        })
    links = []
    for g in range(n):  # each GPU's own link: its copy engines' traffic
        t = timing.totals[g]
        links.append({"link": f"gpu{g}", "h2d_busy": frac(t.h2d_busy), "d2h_busy": frac(t.d2h_busy),
                      "bytes_h2d": gpus[g]["bytes_h2d"] + timing.act_bytes[(g, H2D)],
                      "bytes_d2h": planners.all[g].c.bytes_d2h + timing.act_bytes[(g, D2H)]})
    busy = timing.tl.links.busy
    for s in timing.tl.links.names:
        members = [g for g in range(n) if timing.tl.links.of(g) == s]
        links.append({"link": f"{s} uplink (GPUs {', '.join(map(str, members))})",
                      "h2d_busy": frac(busy[(s, H2D)]), "d2h_busy": frac(busy[(s, D2H)]),
                      "bytes_h2d": sum(gpus[g]["bytes_h2d"] for g in members) + timing.link_bytes[(s, H2D)],
                      "bytes_d2h": sum(planners.all[g].c.bytes_d2h for g in members) + timing.link_bytes[(s, D2H)]})
    topo = ps.hw.topology
    return {"mode": ps.mode, "gpus": n, "p2p": bool(topo and topo.p2p), "nvlink": bool(topo and topo.nvlink),
            "peer_bytes": timing.peer_bytes, "stage_moves": timing.stage_moves,
            "expert_moves": timing.expert_moves, "devices": gpus, "links": links}


def format_devices(par: dict) -> list[str]:
    """The per-GPU and per-link table of the text summary."""
    lines = ["", f"  {par['gpus']} GPUs, {par['mode']} parallel   peer copies "
             f"{'direct (NVLink)' if par['nvlink'] else 'direct (PCIe P2P)' if par['p2p'] else 'staged via host'}",
             "  GPU  holds                hits     misses  hit rate   GPU busy   H2D busy   peak mem / usable GiB"]
    for d in par["devices"]:
        lines.append(f"  {d['gpu']:>3}  {d['holds']:<16} {d['hits']:>8,} {d['misses']:>10,}  {100 * d['hit_rate']:>7.1f}%"
                     f"  {100 * d['gpu_busy']:>8.1f}%  {100 * d['h2d_busy']:>8.1f}%   "
                     f"{d['peak_mem_bytes'] / 2**30:,.2f} / {d['usable_mem_bytes'] / 2**30:,.2f}")
    lines.append("  link                          H2D busy   D2H busy    H2D GB    D2H GB")
    for x in par["links"]:
        lines.append(f"  {x['link']:<28} {100 * x['h2d_busy']:>8.1f}%  {100 * x['d2h_busy']:>8.1f}%  "
                     f"{x['bytes_h2d'] / 1e9:>8,.2f}  {x['bytes_d2h'] / 1e9:>8,.2f}")
    return lines
