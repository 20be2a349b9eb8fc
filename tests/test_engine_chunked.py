"""ProMoE's chunked, preemptible prefetch copies (Song et al. 2024, arXiv:2410.22134): hand-checked timelines of
`ChunkedTimeline`, the recurrence against the per-chunk SimPy dispatcher on random programs, and the effect on
a replay (`ReplayConfig.prefetch_chunk_mb`, `simmoe replay --prefetch-chunk-mb`)."""

from __future__ import annotations

import math
import random

import pytest
import simpy
from conftest import REPO, assert_clean_error, random_trace

from simmoe.engine.config import ReplayConfig
from simmoe.engine.replay import Replay
from simmoe.engine.simpy_timeline import SimpyTimeline
from simmoe.engine.timeline import D2H, H2D, ChunkedTimeline, HostCosts, PrefetchHandle, Timeline
from simmoe.errors import InputError
from simmoe.hw.profile import load_profile
from simmoe.policies.base import PolicySet
from simmoe.trace.format import read_trace

HOST = HostCosts(launch_us=10.0, copy_issue_us=2.0, sync_us=5.0)


def _simpy_times(program, copy_engines: int = 2) -> list[float]:
    """Plays `program` on the chunked SimPy timeline to the end; returns every handle's completion time."""
    env = simpy.Environment()
    tl = SimpyTimeline(env, HOST, copy_engines, chunked=True)
    handles = program(tl)
    tl.sync()
    tl.play()
    env.run()
    return [h.end for h in handles]


def _fast_times(program, copy_engines: int = 2) -> list[float]:
    tl = ChunkedTimeline(HOST, copy_engines)
    handles = program(tl)
    tl.sync()
    return [tl._res(h) for h in handles]  # resolving what is still pending commits its tentative schedule


# ---- hand-checked timelines --------------------------------------------------------------------------------
def demand_behind_prefetch(tl, chunks: int | None):
    # A 1000 us prefetch issued at t=2 (copy issue 2 us), then the host works until 302 and issues a demand
    # copy of 100 us at 304.
    p = tl.copy(1000.0, H2D, preemptible=True, chunks=chunks) if chunks else tl.copy(1000.0, H2D)
    tl.host_work(300.0)
    d = tl.copy(100.0, H2D)
    k = tl.kernels(1, 10.0, after=d)  # the expert the demand copy brought in
    kp = tl.kernels(1, 10.0, after=p)  # later, the prefetched expert is needed
    return [p, d, k, kp]


def test_demand_copy_overtakes_a_long_prefetch_at_the_chunk_boundary():
    # FIFO: the prefetch holds the engine 2..1002, the demand copy runs 1002..1102; its kernel (launched at
    # 304+10 = 314) waits for it: 1102..1112; the prefetched expert's kernel follows: 1112..1122.
    fifo = Timeline(HOST)
    p, d, k, kp = demand_behind_prefetch(fifo, None)
    assert (p, d, k, kp) == (1002.0, 1102.0, 1112.0, 1122.0)
    # Ten chunks of 100 us: boundaries at 102, 202, 302, 402, ... The demand copy is ready at 304, inside the
    # chunk 302..402, so it runs 402..502; its kernel 502..512. The 6 prefetch chunks left are pushed back by
    # 100 us: 502..1102, so the prefetched expert's kernel runs 1102..1112.
    ch = ChunkedTimeline(HOST)
    p, d, k, kp = demand_behind_prefetch(ch, 10)
    assert isinstance(p, PrefetchHandle) and p.end == 1102.0
    assert (d, k, kp) == (502.0, 512.0, 1112.0)
    assert ch.c.h2d_busy == fifo.c.h2d_busy == 1100.0  # chunking moves the work, it adds none here
    assert ch.c.stall_copy == pytest.approx((502 - 314) + (1102 - 512))
    # one chunk (the whole prefetch): the demand copy waits for it to end, as FIFO, but nothing is pushed back
    one = ChunkedTimeline(HOST)
    p, d, *_ = demand_behind_prefetch(one, 1)
    assert (one._res(p), d) == (1002.0, 1102.0)
    assert _simpy_times(lambda tl: demand_behind_prefetch(tl, 10)) == pytest.approx([1102.0, 502.0, 512.0, 1112.0])


def test_a_queued_prefetch_not_started_yet_is_overtaken_whole():
    # p runs 2..1002 (one chunk); q (issued at 4) would run 1002..1502. A demand copy issued at 306 cannot
    # interrupt p's single chunk, but goes before q: 1002..1102, and q moves to 1102..1602.
    tl = ChunkedTimeline(HOST)
    p = tl.copy(1000.0, H2D, preemptible=True, chunks=1)
    q = tl.copy(500.0, H2D, preemptible=True, chunks=1)
    tl.host_work(300.0)
    d = tl.copy(100.0, H2D)
    assert d == 1102.0 and tl._res(p) == 1002.0 and tl._res(q) == 1602.0


def test_a_promoted_prefetch_is_not_pushed_back():
    def program(tl):
        p = tl.copy(1000.0, H2D, preemptible=True, chunks=10)  # 2..1002
        q = tl.copy(500.0, H2D, preemptible=True, chunks=5)  # issued at 4, tentatively 1002..1502
        k = tl.kernels(1, 10.0, after=p)  # launched at 4+10: p is needed now, it is promoted
        d = tl.copy(100.0, H2D)  # issued at 16, after the promotion
        return [p, q, k, d]

    # p keeps 2..1002 (its kernel 1002..1012); the demand copy cannot push it back, so it starts at 1002;
    # q, not promoted, is overtaken: 1102..1602.
    assert _fast_times(program) == [1002.0, 1602.0, 1012.0, 1102.0]
    assert _simpy_times(program) == pytest.approx([1002.0, 1602.0, 1012.0, 1102.0])

    def unpromoted(tl):
        p = tl.copy(1000.0, H2D, preemptible=True, chunks=10)
        q = tl.copy(500.0, H2D, preemptible=True, chunks=5)
        d = tl.copy(100.0, H2D)  # issued at 6: overtakes p at its first boundary, 102..202
        return [p, q, d]

    assert _fast_times(unpromoted) == [1102.0, 1602.0, 202.0]
    assert _simpy_times(unpromoted) == pytest.approx([1102.0, 1602.0, 202.0])


def test_promoting_a_prefetch_commits_the_prefetches_ahead_of_it():
    def program(tl):
        p = tl.copy(1000.0, H2D, preemptible=True, chunks=10)  # 2..1002
        q = tl.copy(500.0, H2D, preemptible=True, chunks=5)  # 1002..1502
        tl.sync(q)  # the host waits for q: q and p ahead of it are fixed; host at 1502 + 5
        d = tl.copy(100.0, H2D)  # issued at 1509
        return [p, q, d]

    assert _fast_times(program) == [1002.0, 1502.0, 1609.0]
    assert _simpy_times(program) == pytest.approx([1002.0, 1502.0, 1609.0])


def test_demand_copy_waiting_for_its_slot_lets_prefetch_chunks_run():
    def program(tl):
        k = tl.kernels(1, 1000.0)  # 10..1010: the demand copy's slot is free once this kernel is done
        p = tl.copy(800.0, H2D, preemptible=True, chunks=4)  # issued at 12: 12..212..412..612..812
        d = tl.copy(100.0, H2D, after=k)  # issued at 14 but ready at 1010: the prefetch has finished by then
        return [k, p, d]

    assert _fast_times(program) == [1010.0, 812.0, 1110.0]
    assert _simpy_times(program) == pytest.approx([1010.0, 812.0, 1110.0])


def test_one_shared_copy_engine_d2h_copies_overtake_prefetches_too():
    def program(tl):
        p = tl.copy(400.0, H2D, preemptible=True, chunks=4)  # 2..102..202..302..402
        x = tl.copy(50.0, D2H)  # issued at 4, on the same engine: 102..152; p's 3 chunks left 152..452
        return [p, x]

    assert _fast_times(program, copy_engines=1) == [452.0, 152.0]
    assert _simpy_times(program, copy_engines=1) == pytest.approx([452.0, 152.0])
    assert _fast_times(program, copy_engines=2) == [402.0, 54.0]  # its own engine: no interaction


def test_preemptible_copy_arguments_are_checked():
    with pytest.raises(ValueError):
        ChunkedTimeline(HOST).copy(10.0, H2D, preemptible=True, chunks=0)
    with pytest.raises(ValueError):
        ChunkedTimeline(HOST).copy(10.0, H2D, on_compute=True, preemptible=True, chunks=2)
    with pytest.raises(ValueError):  # the SimPy timeline needs its dispatcher for them
        SimpyTimeline(simpy.Environment(), HOST).copy(10.0, H2D, preemptible=True, chunks=2)


# ---- recurrence == SimPy on random programs -----------------------------------------------------------------
def random_program(seed: int):
    rng = random.Random(seed)
    ops = [(rng.random(), rng.random(), rng.random(), rng.randint(1, 12), rng.uniform(1, 500))
           for _ in range(rng.randint(5, 40))]

    def program(tl):
        hs: list = [None]
        pf: list = []
        for a, b, c, n, dur in ops:
            dep = hs[int(b * len(hs))] if b < 0.7 else None
            if a < 0.35:  # a prefetch, sometimes into the slot of an earlier prefetch or after any op
                pdep = pf[int(c * len(pf))] if pf and c < 0.3 else (dep if c > 0.8 else None)
                h = tl.copy(dur * 3, H2D, after=pdep, preemptible=True, chunks=n)
                pf.append(h)
            elif a < 0.55:
                h = tl.copy(dur, H2D if c < 0.8 else D2H, after=dep, on_compute=c < 0.15,
                            blocking=0.5 < c < 0.55)
            elif a < 0.65 and pf:  # a demand copy into the slot of a prefetched expert (promotes it)
                h = tl.copy(dur, H2D, after=pf[int(c * len(pf))])
            elif a < 0.85:  # expert kernels, often on a prefetched expert
                h = tl.kernels(n, dur / 10, after=pf[int(c * len(pf))] if pf and c < 0.4 else dep)
            elif a < 0.92:
                h = tl.cpu(dur, after=dep)
            elif a < 0.96:
                tl.host_work(dur)
                continue
            else:
                tl.sync(dep)
                continue
            hs.append(h)
        return [h for h in hs if h is not None]

    return program


@pytest.mark.parametrize("engines", [1, 2])
def test_recurrence_equals_simpy_on_random_preemptible_programs(engines):
    preempted = 0
    for seed in range(150):
        prog = random_program(seed)
        fast, slow = _fast_times(prog, engines), _simpy_times(prog, engines)
        assert fast == pytest.approx(slow, rel=1e-12, abs=1e-9), f"seed {seed}"
        tl = ChunkedTimeline(HOST, engines)
        prog(tl)
        preempted += sum(p.rem > 0 for p in tl._pq)  # still pending (some were pushed back by demands)
    assert preempted > 0


def test_without_preemptible_copies_the_chunked_timeline_is_the_plain_one():
    for seed in range(60):
        prog = random_program(seed)

        def no_prefetch(tl, prog=prog):
            real = tl.copy

            def copy(us, direction=H2D, after=None, preemptible=False, chunks=1, **kw):
                return real(us, direction, after=after, **kw)  # every prefetch becomes a FIFO copy

            tl.copy = copy
            return prog(tl)

        a, b = Timeline(HOST, 1 + seed % 2), ChunkedTimeline(HOST, 1 + seed % 2)
        ha, hb = no_prefetch(a), no_prefetch(b)
        assert ha == hb and (a.h, a.gpu_free, a.h2d_free, a.d2h_free) == (b.h, b.gpu_free, b.h2d_free, b.d2h_free)
        assert a.c == b.c


# ---- replay ---------------------------------------------------------------------------------------------------
def test_config_and_cli_validate_the_chunk_size(simmoe_cli):
    for bad in (0, -1.0, math.nan, math.inf):
        with pytest.raises(InputError, match="^prefetch_chunk_mb: "):
            ReplayConfig(prefetch_chunk_mb=bad)
    trace = REPO / "traces" / "deepseek-v2-lite-synth.npz"
    assert_clean_error(simmoe_cli("replay", trace, "--hw", "rtx3090", "--prefetch-chunk-mb", "0"),
                       "--prefetch-chunk-mb")


def test_cli_flag_reaches_the_engine(simmoe_cli, tmp_path):
    import json

    trace = REPO / "traces" / "deepseek-v2-lite-synth.npz"
    args = ("replay", trace, "--hw", "rtx3090", "--opt", "slots_per_layer=4", "--prefetch", "stride",
            "--prefetch-opt", "accuracy=0.8", "--max-requests", "1", "--quiet")
    out = {}
    for name, extra in (("fifo", ()), ("chunked", ("--prefetch-chunk-mb", "64"))):
        res = simmoe_cli(*args, *extra, "--json", tmp_path / f"{name}.json")
        assert res.returncode == 0, res.stderr
        out[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert out["chunked"]["tpot_ms"]["mean"] != out["fifo"]["tpot_ms"]["mean"]
    assert out["chunked"]["copies"] == out["fifo"]["copies"]


def test_chunk_flag_without_a_prefetcher_changes_nothing():
    tr = random_trace(60, 3, 8, 2, requests=3, seed=5, prefill=4)
    hw = load_profile("rtx3090")
    a = Replay(tr, hw, PolicySet("lru", {"slots_per_layer": 2}), ReplayConfig()).run()
    b = Replay(tr, hw, PolicySet("lru", {"slots_per_layer": 2}), ReplayConfig(prefetch_chunk_mb=1.0)).run()
    sa, sb = dict(a.summary), dict(b.summary)
    sa.pop("wall_s"), sb.pop("wall_s")
    assert (sa.pop("prefetch_chunk_mb"), sb.pop("prefetch_chunk_mb")) == (None, 1.0)  # the run says how it ran
    assert sa == sb and a.steps.equals(b.steps)


@pytest.fixture(scope="module")
def deepseek():
    return read_trace(REPO / "traces" / "deepseek-v2-lite-synth.npz").select(requests=[0])


def _tpot(tr, hw, chunk_mb):
    pset = PolicySet("lru", {"slots_per_layer": 4}, prefetch="stride", prefetch_options={"accuracy": 0.8})
    return Replay(tr, hw, pset, ReplayConfig(prefetch_chunk_mb=chunk_mb)).run().summary


def test_deepseek_stride_small_cache_chunking(deepseek):
    # deepseek-v2-lite experts are 16.5 MiB; rtx3090 copies them at 24.5 GB/s plus 10 us per copy. Measured on
    # request 0 (4 slots per layer, stride accuracy 0.8), mean TPOT: FIFO 194.548 ms; 64 MiB chunks (one chunk
    # per expert: demand copies only overtake queued prefetches) 194.435 ms; 8 MiB 197.162 ms and 4 MiB
    # 199.889 ms, because every chunk pays the 10 us latency. With a zero-latency link: FIFO 191.845 ms,
    # 4 MiB 191.732 ms. The PCIe link is saturated here, so reordering gains little.
    hw = load_profile("rtx3090")
    fifo, whole = _tpot(deepseek, hw, None), _tpot(deepseek, hw, 64.0)
    assert whole["tpot_ms"]["mean"] < fifo["tpot_ms"]["mean"]
    assert whole["hits"] == fifo["hits"] and whole["bytes_h2d"] == fifo["bytes_h2d"]
    assert _tpot(deepseek, hw, 4.0)["tpot_ms"]["mean"] > fifo["tpot_ms"]["mean"]  # latency per chunk
    free = hw.model_copy(update={"pcie": hw.pcie.model_copy(update={"latency_us": 0.0})})
    assert _tpot(deepseek, free, 4.0)["tpot_ms"]["mean"] < _tpot(deepseek, free, None)["tpot_ms"]["mean"]


def test_promoe_system_is_stride_with_chunks_and_matches_the_flag():
    from simmoe.engine.setup import resolve

    r = resolve(PolicySet("promoe", {"slots_per_layer": 4, "chunk_mb": 8}))
    assert (r.pset.cache, r.pset.prefetch, r.prefetch_opts.distance, r.prefetch_opts.chunk_mb) == \
        ("lru", "stride", 2, 8.0)
    tr = random_trace(80, 4, 8, 2, requests=2, seed=3, prefill=4)
    hw = load_profile("rtx3090")
    sys_ = Replay(tr, hw, PolicySet("promoe", {"slots_per_layer": 2, "chunk_mb": 8}), ReplayConfig()).run()
    flag = Replay(tr, hw, PolicySet("lru", {"slots_per_layer": 2}, prefetch="stride",
                                    prefetch_options={"accuracy": 0.8}), ReplayConfig(prefetch_chunk_mb=8)).run()
    fifo = Replay(tr, hw, PolicySet("lru", {"slots_per_layer": 2}, prefetch="stride",
                                    prefetch_options={"accuracy": 0.8}), ReplayConfig()).run()
    assert sys_.summary["prefetch_chunk_mb"] == 8.0 and fifo.summary["prefetch_chunk_mb"] is None
    assert sys_.steps["latency_us"].equals(flag.steps["latency_us"])  # the option = the engine setting
    assert sys_.summary["hits"] == fifo.summary["hits"]  # chunking moves time, not decisions
    assert not sys_.steps["latency_us"].equals(fifo.steps["latency_us"])
    # the replay setting overrides the policy's chunk size
    over = Replay(tr, hw, PolicySet("promoe", {"slots_per_layer": 2, "chunk_mb": 8}),
                  ReplayConfig(prefetch_chunk_mb=64)).run()
    assert over.summary["prefetch_chunk_mb"] == 64
