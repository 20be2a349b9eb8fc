"""Replay a routing trace on a hardware profile under a policy set.

`prepare()` (scenario.py) turns the inputs into an immutable scenario; `play()` runs it: the SimPy
environment owns time and a driver process runs one step after another. The access planner (planner.py)
decides each layer's expert actions; the step timing (step_timing.py) turns the step's dense work and those
actions into copies and kernels on a stream timeline: the fast recurrence (one event per step) or, with
engine="simpy", one SimPy event per kernel. Both give the same times (tested).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import simpy

from simmoe.engine import parallel
from simmoe.engine.config import ReplayConfig
from simmoe.engine.fast_timing import FastStepTiming
from simmoe.engine.planner import AccessPlanner
from simmoe.engine.results import Result, RunRecord, StepLog
from simmoe.engine.scenario import Scenario, prepare
from simmoe.engine.schedule import Idle, Step, online_schedule
from simmoe.engine.simpy_timeline import SimpyTimeline
from simmoe.engine.step_timing import StepTiming, host_costs
from simmoe.engine.tiers import tier_summary
from simmoe.engine.timeline import ChunkedTimeline, HostDeviceTimeline, Timeline
from simmoe.errors import InputError
from simmoe.hw.profile import HwProfile, load_profile
from simmoe.policies.base import PolicySet
from simmoe.provenance import run_provenance
from simmoe.runtime.profile import RuntimeProfile, load_runtime
from simmoe.trace.format import Trace, read_trace

logger = logging.getLogger(__name__)


class Replay:
    """One configuration (trace, profile, policies, replay settings). `run()` prepares a fresh scenario and
    plays it, so running the same Replay twice gives identical results."""

    def __init__(self, trace: Trace, hw: HwProfile, policies: PolicySet | None = None,
                 config: ReplayConfig | None = None, hw_name: str | None = None,
                 runtime: RuntimeProfile | None = None) -> None:
        self.trace = trace
        self.hw = hw
        self.hw_name = hw_name or hw.name
        self.cfg = config or ReplayConfig()
        self.pset = policies or PolicySet()
        self.runtime = runtime  # None: the named system's runtime, else `generic`

    def prepare(self) -> Scenario | parallel.ParallelScenario:
        if self.cfg.parallel != "none":
            return parallel.prepare_parallel(self.trace, self.hw, self.pset, self.cfg, self.hw_name, self.runtime)
        return prepare(self.trace, self.hw, self.pset, self.cfg, self.hw_name, self.runtime)

    def run(self, progress: bool = False) -> Result:
        wall0 = time.perf_counter()
        return play(self.prepare(), progress=progress, wall0=wall0)


def play(sc: Scenario | parallel.ParallelScenario, progress: bool = False, wall0: float | None = None) -> Result:
    """Play a prepared scenario from a cold cache and return its results."""
    wall0 = time.perf_counter() if wall0 is None else wall0
    if isinstance(sc, parallel.ParallelScenario):
        return _play_parallel(sc, progress, wall0)
    logger.info(f"replay {sc.spec.name} on {sc.hw_name} ({sc.runtime.name}, {sc.policies.pset.describe()}): "
                f"{len(sc.ri.ids)} requests, {len(sc.steps) if not sc.online else 'online'} steps, cache "
                f"{sc.cache.total_slots} expert slots ({sc.cache.scope}), engine {sc.cfg.engine}")
    logger.debug(f"memory plan: {sc.memory}")
    planner = AccessPlanner(sc)
    chunk_mb = planner.chunk_mb()
    hw, cfg = sc.hw, sc.cfg
    env = simpy.Environment()
    chunked = chunk_mb is not None  # preemptible prefetches need the chunked engine
    host = host_costs(sc)
    on_host = hw.gpu.executes_on_host
    if cfg.engine == "simpy":
        tl = SimpyTimeline(env, host, hw.pcie.copy_engines, record=cfg.timeline_steps is not None, chunked=chunked,
                           synchronous=on_host)
    elif on_host:
        if chunked:
            raise InputError(sc.hw_name, "gpu.executes_on_host", "preemptible chunked prefetches need a copy "
                             "engine beside the device; a CPU device copies on its own thread")
        tl = HostDeviceTimeline(host, hw.pcie.copy_engines)
    else:
        tl = (ChunkedTimeline if chunked else Timeline)(host, hw.pcie.copy_engines)
    timing = (FastStepTiming if cfg.engine == "fast" else StepTiming)(sc, tl, planner, chunk_mb)
    log = StepLog(tier=planner.tier is not None)
    env.process(_driver(env, sc, planner, timing, log, progress))
    env.run()
    rec = RunRecord(trace=sc.trace.source, model=sc.spec.name, hw=sc.hw_name, runtime=sc.runtime.name,
                    policy=sc.policies.pset.describe(), cfg=cfg, host_memory=sc.host_memory,
                    copy_stream=sc.copy_stream, chunk_mb=chunk_mb, ri=sc.ri, arrival_us=sc.arrival_us, online=sc.online,
                    routing_fidelity=sc.routing_fidelity, activations=int((sc.trace.experts >= 0).sum()),
                    memory=sc.memory, counts=planner.c, log=log, events=list(getattr(tl, "events", [])),
                    provenance=run_provenance(sc.trace.source, hw, sc.hw_name, sc.runtime, sc.runtime.name,
                                              sc.policies.pset, sc.policies.pset.describe(), cfg),
                    tier=tier_summary(sc.tier, sc.cfg, planner.tier))
    logger.debug(f"replay done: {planner.c.hits} hits, {planner.c.misses} misses in "
                 f"{time.perf_counter() - wall0:.2f} s of wall time")
    result = Result.build(rec, wall_s=time.perf_counter() - wall0)
    result.timeline_steps = cfg.timeline_steps  # what `events` holds (Result.write_timeline)
    return result


def _play_parallel(ps: parallel.ParallelScenario, progress: bool, wall0: float) -> Result:
    """`play` over several GPUs (sim/engine/parallel.py): per-GPU planners and queues, one driver."""
    env = simpy.Environment()
    planners, tl, timing = parallel.build(ps, env)
    sc = ps.driver
    log = StepLog()
    env.process(_driver(env, sc, planners, timing, log, progress))
    env.run()
    d0 = ps.devices[0]
    rec = RunRecord(trace=sc.trace.source, model=sc.spec.name, hw=ps.hw_name, runtime=d0.runtime.name,
                    policy=d0.policies.pset.describe(), cfg=ps.cfg, host_memory=d0.host_memory,
                    copy_stream=d0.copy_stream, chunk_mb=None, ri=sc.ri, arrival_us=sc.arrival_us,
                    online=sc.online, routing_fidelity=d0.routing_fidelity,
                    activations=int((sc.trace.experts >= 0).sum()), memory=d0.memory, counts=planners.c, log=log,
                    events=parallel.timeline_events(tl.events) if ps.n > 1 else list(tl.events),
                    provenance=run_provenance(sc.trace.source, ps.hw, ps.hw_name, d0.runtime, d0.runtime.name,
                                              d0.policies.pset, d0.policies.pset.describe(), ps.cfg),
                    # as the single-GPU engine reports it (an active tier and tier settings are refused)
                    tier=tier_summary(d0.tier, ps.cfg, None))
    res = Result.build(rec, wall_s=time.perf_counter() - wall0)
    res.timeline_steps = ps.cfg.timeline_steps  # what `events` holds (Result.write_timeline)
    if ps.n > 1:  # one GPU: the single-GPU summary exactly
        par = parallel.device_results(ps, timing, planners, res.steps, res.summary["makespan_s"] * 1e6)
        s = res.summary
        s["parallel"] = par
        s["cache_slots"] = sum(d["cache_slots"] for d in par["devices"])
        s["peak_gpu_mem_bytes"] = max(d["peak_mem_bytes"] for d in par["devices"])  # the fullest GPU
        s["gpu_mem_usable_bytes"] = d0.memory.usable
        # memory of all GPUs together (the Perfetto memory counter and plots.memory_over_time stack the steps'
        # KV and cache occupancy, which are the GPUs' sums); per GPU: summary["parallel"]["devices"]
        plans = [sc.memory.as_dict() for sc in ps.devices]
        res.memory = {k: (plans[0][k] if k == "expert_bytes" else sum(p[k] for p in plans)) for k in plans[0]}
        s["wall_s"] = time.perf_counter() - wall0
    return res


def _driver(env: simpy.Environment, sc: Scenario, planner: AccessPlanner, timing: StepTiming, log: StepLog,
            progress: bool):
    tl, cfg = timing.tl, sc.cfg
    fast = not isinstance(tl, SimpyTimeline)
    window = cfg.timeline_steps
    c = planner.c
    tier = getattr(planner, "tier", None)  # the SSD tier (tiers.py); planners without one have none
    bar = None
    if progress:
        from simmoe.progress import bar as progress_bar

        bar = progress_bar(total=len(sc.steps) if not sc.online else None, unit="step", desc="replay",
                           mininterval=0.5)
    n = 0
    for step in steps_of(env, sc):
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
        counts0 = (c.hits, c.misses, c.cpu_experts, c.copies, c.bytes_h2d)
        tier0 = tier.snapshot() if tier is not None else None
        timing.play(step, i, planner)
        if fast:
            yield env.timeout(tl.h - env.now)
        else:
            yield tl.play()
        log.add(step, t0, env.now, tl.c, counts0, c, sc.ri, sc.spec)
        if tier is not None:
            log.add_tier(tl.c, tier0, tier)
        n += 1
    if bar is not None:
        bar.update(n - bar.n)
        bar.close()


def steps_of(env: simpy.Environment, sc: Scenario):
    """The steps in order: the precomputed closed-loop schedule, or the online scheduler fed with the clock
    (an Idle item when it must wait; step indices count only steps)."""
    if not sc.online:
        yield from sc.steps
        return
    cfg = sc.cfg
    gen = online_schedule(sc.ri, sc.arrival_us, cfg.batch, cfg.prefill_chunk, cfg.max_batched_tokens)
    next(gen)
    while True:
        try:
            item = gen.send(env.now)
        except StopIteration:
            return
        yield item


def replay(trace: Trace | str | Path, hw: HwProfile | str | Path, policy: str | PolicySet = "lru",
           options: dict | None = None, runtime: RuntimeProfile | str | Path | None = None, **config) -> Result:
    """`replay("traces/x.npz", "rtx3090", "lru", {"slots_per_layer": 4}, batch=1)`; `runtime=` a bundled
    runtime name, a YAML path or a RuntimeProfile. The sweep runner's entry; notebooks use `simmoe.replay`
    (sim/api.py), which also takes the other policy kinds, runtime changes and a model."""
    tr = trace if isinstance(trace, Trace) else read_trace(trace)
    hw_name = None
    if not isinstance(hw, HwProfile):
        hw_name = str(hw)
        hw = load_profile(hw)
    if runtime is not None and not isinstance(runtime, RuntimeProfile):
        runtime = load_runtime(runtime)
    pset = policy if isinstance(policy, PolicySet) else PolicySet(cache=policy, cache_options=options or {})
    return Replay(tr, hw, pset, ReplayConfig(**config), hw_name=hw_name, runtime=runtime).run()


__all__ = ["Replay", "Step", "play", "replay"]
