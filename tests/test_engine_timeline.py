"""Stream semantics: tiny hand-checked timelines, and the fast recurrence against the per-kernel SimPy run."""

from __future__ import annotations

import pytest
import simpy
from conftest import random_trace

from simmoe.engine.config import ReplayConfig
from simmoe.engine.replay import Replay
from simmoe.engine.simpy_timeline import SimpyTimeline
from simmoe.engine.timeline import D2H, H2D, ChunkedTimeline, HostCosts, Timeline
from simmoe.hw.profile import load_profile
from simmoe.policies.base import PolicySet

HOST = HostCosts(launch_us=10.0, copy_issue_us=2.0, sync_us=5.0)


def both(fn, host=HOST, copy_engines=2, chunked=False):
    """Run the same issue program on both timelines; returns (fast, simpy) (host end, gpu end).
    `chunked`: the timelines with preemptible prefetch copies."""
    fast = (ChunkedTimeline if chunked else Timeline)(host, copy_engines)
    fn(fast)
    fast.sync()
    env = simpy.Environment()
    slow = SimpyTimeline(env, host, copy_engines, chunked=chunked)
    fn(slow)
    slow.sync()
    env.run(slow.play())
    return fast.h, slow.h


def test_launch_bound_kernels():
    # 5 kernels of 1 us, 10 us to launch each: the GPU waits for the host, the last ends at 5*10 + 1
    tl = Timeline(HOST)
    end = tl.kernels(5, 1.0)
    assert end == pytest.approx(51.0)
    assert tl.h == pytest.approx(50.0)
    assert tl.c.gpu_busy == pytest.approx(5.0)
    assert tl.c.stall_dispatch == pytest.approx(46.0)


def test_gpu_bound_kernels():
    tl = Timeline(HOST)
    end = tl.kernels(4, 100.0)  # first starts at 10, then back to back
    assert end == pytest.approx(410.0)
    assert tl.h == pytest.approx(40.0)  # the host ran ahead


def test_copy_on_separate_stream_overlaps_compute():
    tl = Timeline(HOST)
    k = tl.kernels(1, 1000.0)  # compute busy until 1010
    c = tl.copy(500.0, H2D)  # issued at 12, runs 12..512 while the kernel runs
    assert k == pytest.approx(1010.0)
    assert c == pytest.approx(512.0)
    e = tl.kernels(1, 10.0, after=c)
    assert e == pytest.approx(1020.0)  # no copy stall: the copy was hidden
    assert tl.c.stall_copy == 0


def test_copy_on_compute_stream_blocks_kernels():
    tl = Timeline(HOST)
    tl.kernels(1, 1000.0)
    c = tl.copy(500.0, H2D, on_compute=True)  # waits for the kernel, then holds the stream
    assert c == pytest.approx(1510.0)
    e = tl.kernels(1, 10.0)  # not dependent on the copy, still waits behind it
    assert e == pytest.approx(1520.0)
    assert tl.c.stall_copy == pytest.approx(500.0)


def test_pageable_copy_blocks_the_host():
    tl = Timeline(HOST)
    c = tl.copy(300.0, H2D, blocking=True)
    assert tl.h == pytest.approx(c) == pytest.approx(302.0)


def test_single_copy_engine_serialises_directions():
    two = Timeline(HOST, copy_engines=2)
    a = two.copy(100.0, H2D)
    b = two.copy(100.0, D2H)
    assert b < a + 100.0  # both directions at once
    one = Timeline(HOST, copy_engines=1)
    a = one.copy(100.0, H2D)
    b = one.copy(100.0, D2H)
    assert b == pytest.approx(a + 100.0)


def test_kernel_waits_for_its_copy_and_counts_the_stall():
    tl = Timeline(HOST)
    c = tl.copy(1000.0, H2D)  # ends 1002
    e = tl.kernels(3, 10.0, after=c)
    assert e == pytest.approx(1032.0)
    assert tl.c.stall_copy == pytest.approx(1002.0 - 12.0)


def test_cpu_worker_in_order():
    tl = Timeline(HOST)
    a = tl.cpu(100.0)
    b = tl.cpu(50.0, after=10.0)
    assert b == pytest.approx(a + 50.0)


# (program, chunked timelines): every program also on the chunked ones; preemptible copies need them
PROGRAMS = [(p, c) for p in ("mixed", "launch_bound", "compute_copy", "cpu") for c in (False, True)]
PROGRAMS.append(("prefetch", True))


@pytest.mark.parametrize(("program", "chunked"), PROGRAMS)
@pytest.mark.parametrize("engines", [1, 2])
def test_recurrence_equals_simpy_on_programs(program, chunked, engines):

    def mixed(tl):
        a = tl.kernels(3, 4.0)
        c = tl.copy(200.0, H2D, after=a)
        tl.kernels(6, 7.0, after=c)
        d = tl.copy(30.0, D2H)
        x = tl.cpu(90.0, after=d)
        y = tl.copy(20.0, H2D, after=x)
        tl.sync(a)
        tl.kernels(2, 50.0, after=tl.join(y, c), wait="cpu")

    def launch_bound(tl):
        for _ in range(20):
            tl.kernels(7, 0.5)

    def compute_copy(tl):
        for i in range(5):
            c = tl.copy(100.0 + i, H2D, on_compute=True)
            tl.kernels(4, 3.0 * i + 1, after=c)
            tl.copy(10.0, H2D, blocking=True)

    def cpu(tl):
        r = tl.kernels(2, 5.0)
        d = tl.copy(3.0, D2H, after=r)
        for _ in range(4):
            d = tl.cpu(40.0, after=d)
        tl.kernels(1, 2.0, after=tl.copy(3.0, H2D, after=d), wait="cpu")

    def prefetch(tl):  # preemptible prefetches (tests/test_engine_chunked.py has hand-checked ones)
        a = tl.kernels(3, 4.0)
        p = tl.copy(600.0, H2D, preemptible=True, chunks=6)
        q = tl.copy(300.0, H2D, after=a, preemptible=True, chunks=3)
        d = tl.copy(100.0, H2D, after=a)  # overtakes both at p's next chunk boundary
        tl.kernels(4, 5.0, after=d)
        x = tl.copy(30.0, D2H)  # on the same engine with copy_engines=1
        tl.kernels(2, 20.0, after=q)  # q is needed: promoted, with p ahead of it
        tl.copy(50.0, H2D, on_compute=True)
        tl.cpu(40.0, after=x)
        r = tl.copy(200.0, H2D, after=p, preemptible=True, chunks=4)
        tl.copy(80.0, H2D, blocking=True)
        tl.sync(r)

    fn = {"mixed": mixed, "launch_bound": launch_bound, "compute_copy": compute_copy, "cpu": cpu,
          "prefetch": prefetch}[program]
    fast, slow = both(fn, copy_engines=engines, chunked=chunked)
    assert fast == pytest.approx(slow, rel=1e-12)


CONFIGS = [
    dict(policy=PolicySet("lru", {"slots_per_layer": 3})),
    dict(policy=PolicySet("ondemand")),
    dict(policy=PolicySet("cpu-experts")),
    dict(policy=PolicySet("lru", {"slots_per_layer": 2}), cfg=dict(copy_stream="compute")),
    dict(policy=PolicySet("lru", {"slots_per_layer": 2}), cfg=dict(host_memory="pageable")),
    dict(policy=PolicySet("lru", {"scope": "global", "cache_gb": 0.1}), cfg=dict(batch=3)),
    dict(policy=PolicySet("resident")),
    # ProMoE's chunked, preemptible prefetch (the toy model's experts are 12 MiB)
    dict(policy=PolicySet("lru", {"slots_per_layer": 2}, prefetch="stride", prefetch_options={"accuracy": 0.6}),
         cfg=dict(prefetch_chunk_mb=4.0)),
    dict(policy=PolicySet("lru", {"slots_per_layer": 2}, prefetch="next-layer", prefetch_options={"accuracy": 0.5}),
         cfg=dict(prefetch_chunk_mb=100.0, copy_stream="compute")),
    dict(policy=PolicySet("lru", {"scope": "global", "cache_gb": 0.1}, prefetch="next-layer",
                          prefetch_options={"accuracy": 0.7}), cfg=dict(batch=3, prefetch_chunk_mb=2.0,
                                                                        host_memory="pageable")),
    dict(policy=PolicySet("lru", {"slots_per_layer": 3}, prefetch="oracle", placement="fiddler"),
         cfg=dict(batch=2, prefetch_chunk_mb=0.5), copy_engines=1),
]


@pytest.mark.parametrize("case", CONFIGS, ids=lambda c: c["policy"].describe() + str(c.get("cfg", "")))
def test_replay_fast_equals_simpy(case):
    tr = random_trace(60, 3, 8, 2, requests=3, seed=5, prefill=4)
    hw = load_profile("rtx3090")
    if "copy_engines" in case:
        hw = hw.model_copy(update={"pcie": hw.pcie.model_copy(update={"copy_engines": case["copy_engines"]})})
    out = {}
    for engine in ("fast", "simpy"):
        cfg = ReplayConfig(engine=engine, **case.get("cfg", {}))
        out[engine] = Replay(tr, hw, case["policy"], cfg).run()
    f, s = out["fast"], out["simpy"]
    assert f.steps["end_us"].to_numpy() == pytest.approx(s.steps["end_us"].to_numpy(), rel=1e-9)
    for key in ("hits", "misses", "copies", "bytes_h2d", "cpu_experts"):
        assert f.summary[key] == s.summary[key]
    for key in ("gpu_busy", "pcie_busy", "cpu_busy"):
        assert f.summary[key] == pytest.approx(s.summary[key], rel=1e-9)


def test_a_cpu_device_runs_each_kernel_on_the_host_thread():
    # gpu.executes_on_host (a profile from `calibrate --as-device`): the host waits for every kernel and copy;
    # the recurrence equals the SimPy reference, and the step takes host + device time, not the larger one
    from conftest import random_trace

    from simmoe.engine.config import ReplayConfig
    from simmoe.policies.base import PolicySet

    hw = load_profile("rtx3090")
    cpu_dev = hw.model_copy(update={"gpu": hw.gpu.model_copy(update={"executes_on_host": True})})
    tr = random_trace(40, 3, 8, 2, requests=2, seed=3, prefill=4)
    ps = PolicySet("lru", {"slots_per_layer": 3})
    out = {e: Replay(tr, cpu_dev, ps, ReplayConfig(engine=e, batch=2)).run() for e in ("fast", "simpy")}
    assert out["fast"].steps["end_us"].to_numpy() == pytest.approx(out["simpy"].steps["end_us"].to_numpy(),
                                                                  rel=1e-9)
    queued = Replay(tr, hw, ps, ReplayConfig(batch=2)).run()
    s = out["fast"].steps
    assert (s["latency_us"] >= s["gpu_busy_us"] + s["h2d_busy_us"] - 1e-6).all()  # nothing overlaps
    assert s["latency_us"].sum() > queued.steps["latency_us"].sum()


def test_a_cpu_device_runs_cpu_experts_on_its_own_cores():
    from conftest import random_trace

    from simmoe.engine.config import ReplayConfig
    from simmoe.policies.base import PolicySet

    hw = load_profile("rtx3090")
    cpu_dev = hw.model_copy(update={"gpu": hw.gpu.model_copy(update={"executes_on_host": True})})
    tr = random_trace(30, 3, 8, 2, requests=2, seed=4, prefill=3)
    out = {e: Replay(tr, cpu_dev, PolicySet("cpu-experts"), ReplayConfig(engine=e, batch=2)).run()
           for e in ("fast", "simpy")}
    assert out["fast"].steps["end_us"].to_numpy() == pytest.approx(out["simpy"].steps["end_us"].to_numpy(),
                                                                  rel=1e-9)
    s = out["fast"].steps
    assert (s["latency_us"] >= s["gpu_busy_us"] + s["cpu_busy_us"] - 1e-6).all()
