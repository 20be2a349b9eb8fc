"""The SSD tier (sim/engine/tiers.py): NVMe read costs against published figures, the host-memory rule, the
recurrence against SimPy, invariants (hypothesis), the CLI and the executor's guard."""

from __future__ import annotations

import json

import numpy as np
import pytest
import simpy
from conftest import random_trace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simmoe.cli.main import main
from simmoe.cli.params import flag_of
from simmoe.engine.config import ReplayConfig
from simmoe.engine.replay import Replay
from simmoe.engine.scenario import prepare
from simmoe.engine.simpy_timeline import SimpyTimeline
from simmoe.engine.tiers import GIB, OS_RESERVED_GIB, nvme_read_us
from simmoe.engine.timeline import H2D, HostCosts, Timeline
from simmoe.errors import InputError
from simmoe.hw.profile import NvmeSpec, load_profile
from simmoe.policies.base import PolicySet
from simmoe.runtime.profile import load_runtime
from simmoe.trace.format import read_trace

MIXTRAL = "traces/mixtral-8x7b-synth.npz"
DESKTOP = load_profile("desktop-nvme")
RTX3090 = load_profile("rtx3090")  # 128 GiB of host memory and an nvme: section
TOY_EXPERT = 12 * 2**20  # random_trace's toy model: 12 MiB experts


def toy(**kw):
    return random_trace(40, 3, 8, 2, requests=2, seed=kw.pop("seed", 5), prefill=3)


def with_nvme(hw, **changes):
    return hw.model_copy(update={"nvme": hw.nvme.model_copy(update=changes)})


# ---- NVMe read costs against published figures (docs/tiers.md) ------------------------------------------------
def test_read_model_meets_the_published_990_pro_figures():
    n = DESKTOP.nvme
    # 4 KiB random read at QD1: the latency is fitted to KitGuru's 20,336 IOPS (a PCIe 4.0 drive)
    qd1 = n.model_copy(update={"queue_depth": 1, "request_kib": 4})
    assert 1e6 / nvme_read_us(4096, qd1) == pytest.approx(20_336, rel=0.005)
    # a large sequential read at the default 128 KiB x QD32 reaches the datasheet's 7,450 MB/s (c't: 7.46 GB/s)
    gbps = 2**30 / nvme_read_us(2**30, n) / 1e3
    assert gbps == pytest.approx(7.45, rel=0.001) and gbps == pytest.approx(7.46, rel=0.005)
    # one bf16 Mixtral expert (3 x 4096 x 14336 x 2 B = 352 MB): ~47 ms
    assert nvme_read_us(352_321_536, n) / 1e3 == pytest.approx(47.34, abs=0.05)
    # 4 KiB at QD32 from one reader: 651 K IOPS, NOT the datasheet's multi-queue 1.4 M (docs/tiers.md says so)
    qd32 = n.model_copy(update={"request_kib": 4})
    assert 1e6 * 10**5 / nvme_read_us(10**5 * 4096, qd32) == pytest.approx(651_000, rel=0.005)


def test_read_model_shape_matches_both_published_970_evo_depths():
    # KitGuru's 970 EVO 2 TB, 128 KiB sequential reads: 3,402 MB/s at QD32 and 2,594 MB/s at QD2; one latency
    # (62.5 us) explains both (a consistency check of the formula's shape, docs/tiers.md)
    evo = NvmeSpec(read_gbps=3.402, latency_us=62.5, request_kib=128, queue_depth=32)
    big = 2**30
    assert big / nvme_read_us(big, evo) / 1e3 == pytest.approx(3.402, rel=0.001)
    qd2 = evo.model_copy(update={"queue_depth": 2})
    assert big / nvme_read_us(big, qd2) / 1e3 == pytest.approx(2.594, rel=0.002)


def test_read_model_shape():
    n = NvmeSpec(read_gbps=7.0, latency_us=50.0, queue_depth=1, request_kib=128)
    # QD1 with 128 KiB requests: one request at a time, each 50 us + 18.7 us
    per = 50.0 + 131072 / 7e3
    assert nvme_read_us(10 * 131072, n) == pytest.approx(10 * per)
    deep = n.model_copy(update={"queue_depth": 64})
    assert nvme_read_us(10 * 131072, deep) == pytest.approx(50.0 + 10 * 131072 / 7e3)  # bandwidth-bound
    assert nvme_read_us(0, n) == 0.0
    sizes = [4096, 65536, 2**20, 2**24, 2**28]
    times = [nvme_read_us(s, n) for s in sizes]
    assert times == sorted(times)


# ---- which experts live where -------------------------------------------------------------------------------------
def test_host_memory_rule_and_tier_activation():
    tr = read_trace(MIXTRAL)
    sc = prepare(tr, DESKTOP, PolicySet("lru", {"scope": "global", "cache_gb": 7.0}))
    t = sc.tier
    host = int((32 - OS_RESERVED_GIB) * GIB) - sc.spec.dense_bytes()
    assert t.active and t.host_bytes == host and t.capacity == host // sc.memory.expert_bytes
    assert t.total_experts == 32 * 8 and t.policy == "lru" and t.placement == "none" and not t.preload
    # a 128 GiB machine holds every Mixtral expert: the tier is configured but moves nothing
    sc2 = prepare(tr, RTX3090, PolicySet("lru", {"slots_per_layer": 1}))
    assert sc2.tier is not None and not sc2.tier.active
    # profiles without nvme: have no tier at all
    assert prepare(tr, load_profile("h100-sxm"), PolicySet("lru", {"slots_per_layer": 1})).tier is None


def test_placements():
    tr = toy()
    cfg = dict(host_memory_gib=0.05)  # 4 of 24 toy experts
    first = prepare(tr, RTX3090, PolicySet("lru", {"slots_per_layer": 2}), ReplayConfig(host_placement="first",
                                                                                          **cfg)).tier
    assert first.preload == (0, 1, 2, 3) and not first.reads_future
    pop = prepare(tr, RTX3090, PolicySet("lru", {"slots_per_layer": 2}), ReplayConfig(host_placement="popular",
                                                                                        **cfg)).tier
    assert pop.reads_future
    keys = (np.arange(3)[None, :, None] * 8 + tr.experts)[tr.experts >= 0]
    counts = np.bincount(keys, minlength=24)
    assert sorted(counts[list(pop.preload)], reverse=True) == sorted(counts, reverse=True)[:4]


def test_all_experts_fit_host_memory_changes_nothing():
    tr = toy()
    ps = PolicySet("lru", {"slots_per_layer": 2})
    plain = Replay(tr, RTX3090.model_copy(update={"nvme": None}), ps).run()
    tiered = Replay(tr, RTX3090, ps, ReplayConfig(host_memory_gib=64)).run()
    assert tiered.steps.equals(plain.steps)
    t = tiered.summary["host_tier"]
    assert not t["active"] and t["nvme_bytes"] == 0 and t["host_misses"] == 0
    assert "SSD tier" not in tiered.format()
    assert "host_tier" not in plain.summary
    # without a tier setting, a run that never touches the SSD has the summary it had before the tier existed
    untouched = Replay(tr, RTX3090, ps).run()
    assert "host_tier" not in untouched.summary and untouched.steps.equals(plain.steps)


def test_summary_keys_with_the_tier():
    from simmoe.engine.results import summary_keys
    from simmoe.sweeps.store import flatten

    ps = PolicySet("lru", {"slots_per_layer": 2})
    used = Replay(toy(), RTX3090, ps, ReplayConfig(host_memory_gib=0.05)).run()
    unused = Replay(toy(), RTX3090, ps, ReplayConfig(host_memory_gib=64)).run()
    for res in (used, unused):
        assert list(flatten(res.summary)) == list(summary_keys(tier=True))


@pytest.mark.parametrize("cfg, field", [
    (dict(host_memory_gib=8), "--host-memory-gib"),
    (dict(host_policy="fifo"), "--host-policy"),
    (dict(host_placement="popular"), "--host-placement"),
])
def test_tier_settings_without_an_ssd_are_errors(cfg, field):
    with pytest.raises(InputError) as e:
        prepare(toy(), load_profile("t4"), PolicySet("lru", {"slots_per_layer": 2}), ReplayConfig(**cfg))
    _names(e.value, field)


def _names(e: InputError, flag: str) -> None:
    """Python names the parameter (host_policy: ...), the command line its flag (--host-policy: ...)."""
    assert str(e).startswith(flag.removeprefix("--").replace("-", "_") + ": "), str(e)
    assert e.line(flag_of).startswith(flag + ": "), e.line(flag_of)


@pytest.mark.parametrize("pset, cfg, needle", [
    (PolicySet("lru", {"slots_per_layer": 2}), dict(host_policy="belady"), "--host-policy"),
    (PolicySet("lru", {"slots_per_layer": 2}), dict(host_policy="no-such"), "--host-policy"),
    (PolicySet("cpu-experts"), {}, "--placement"),
    (PolicySet("lru", {"slots_per_layer": 2}, prefetch="next-layer"), dict(prefetch_chunk_mb=4.0),
     "--prefetch-chunk-mb"),
])
def test_what_the_tier_does_not_model_is_an_error(pset, cfg, needle):
    with pytest.raises(InputError) as e:
        prepare(toy(), RTX3090, pset, ReplayConfig(host_memory_gib=0.05, **cfg))
    _names(e.value, needle)


# ---- timing ---------------------------------------------------------------------------------------------------------
HOST = HostCosts(launch_us=10.0, copy_issue_us=2.0, sync_us=5.0)


def test_read_then_copy_pipeline_by_hand():
    tl = Timeline(HOST)
    r = tl.read(100.0)  # issued at 2, the SSD reads 2..102
    c = tl.copy(50.0, H2D, after=r)  # issued at 4, waits for the read: 102..152
    assert (r, c) == (pytest.approx(102.0), pytest.approx(152.0))
    r2 = tl.read(100.0, blocking=True)  # the SSD's queue: 102..202, the host waits (a page fault)
    assert r2 == pytest.approx(202.0) and tl.h == pytest.approx(202.0)
    assert tl.c.nvme_busy == pytest.approx(200.0) and tl.idle_at() == pytest.approx(202.0)


def test_read_programs_equal_on_both_timelines():
    def program(tl):
        k = tl.kernels(2, 30.0)
        r = tl.read(100.0)
        c = tl.copy(40.0, H2D, after=tl.join(r, k))
        tl.read(70.0, after=k, blocking=True)
        tl.kernels(1, 10.0, after=c)
        tl.sync(tl.read(20.0))

    fast = Timeline(HOST)
    program(fast)
    fast.sync()
    env = simpy.Environment()
    slow = SimpyTimeline(env, HOST)
    program(slow)
    slow.sync()
    env.run(slow.play())
    assert fast.h == pytest.approx(slow.h, rel=1e-12)
    assert fast.c.nvme_busy == slow.c.nvme_busy


TIER_CONFIGS = [
    dict(policy=PolicySet("lru", {"slots_per_layer": 2})),
    dict(policy=PolicySet("lru", {"slots_per_layer": 2}), cfg=dict(host_memory="pageable")),
    dict(policy=PolicySet("lru", {"slots_per_layer": 2}), cfg=dict(copy_stream="compute", host_policy="fifo")),
    dict(policy=PolicySet("lru", {"scope": "global", "cache_gb": 0.1}), cfg=dict(batch=2, host_placement="popular")),
    dict(policy=PolicySet("lru", {"slots_per_layer": 2}), gpudirect=True),
    dict(policy=PolicySet("ondemand"), cfg=dict(host_placement="first")),
    dict(policy=PolicySet("lru", {"slots_per_layer": 2}, prefetch="next-layer", prefetch_options={"accuracy": 0.6})),
    dict(policy=PolicySet("lru", {"slots_per_layer": 2}, prefetch="next-layer", prefetch_options={"accuracy": 0.6}),
         gpudirect=True),
    dict(policy=PolicySet("lru", {"slots_per_layer": 2}, prefetch="next-layer", prefetch_options={"accuracy": 0.6}),
         cfg=dict(host_memory="pageable")),
    # a copy unit of 3 pieces: 3 reads, each copy follows its read (a chunked pipeline)
    dict(policy=PolicySet("lru", {"slots_per_layer": 2}), runtime={"experts.copies_per_expert": 3}),
    dict(policy=PolicySet("ondemand"), runtime_name="deepspeed-zero3"),  # every expert of a layer each time
    dict(policy=PolicySet("lru", {"slots_per_layer": 2}), runtime_name="llama.cpp"),  # a fused MoE kernel
]


def _tier_case(case, engine, host_gib=0.05):
    hw = with_nvme(RTX3090, gpudirect=True) if case.get("gpudirect") else RTX3090
    rt = None
    if "runtime" in case or "runtime_name" in case:
        rt = load_runtime(case.get("runtime_name"), case.get("runtime"))
    cfg = ReplayConfig(engine=engine, host_memory_gib=host_gib, **case.get("cfg", {}))
    return Replay(toy(), hw, case["policy"], cfg, runtime=rt).run()


@pytest.mark.parametrize("case", TIER_CONFIGS, ids=lambda c: c["policy"].describe() + str(c.get("cfg", ""))
                         + ("gds" if c.get("gpudirect") else "") + str(c.get("runtime", c.get("runtime_name", ""))))
def test_tier_fast_equals_simpy(case):
    f, s = _tier_case(case, "fast"), _tier_case(case, "simpy")
    assert f.summary["host_tier"]["active"]
    assert f.steps["end_us"].to_numpy() == pytest.approx(s.steps["end_us"].to_numpy(), rel=1e-9)
    for key in ("hits", "misses", "copies", "bytes_h2d"):
        assert f.summary[key] == s.summary[key]
    for key in ("host_hits", "host_misses", "nvme_bytes"):
        assert f.summary["host_tier"][key] == s.summary["host_tier"][key]
    assert f.summary["host_tier"]["nvme_busy"] == pytest.approx(s.summary["host_tier"]["nvme_busy"], rel=1e-9)
    assert f.summary["host_tier"]["nvme_bytes"] > 0


def test_a_smaller_host_memory_reads_more_and_is_slower():
    ps = PolicySet("lru", {"slots_per_layer": 2})
    out = [Replay(toy(), RTX3090, ps, ReplayConfig(host_memory_gib=g)).run().summary for g in (0.05, 0.15)]
    assert out[0]["host_tier"]["nvme_bytes"] > out[1]["host_tier"]["nvme_bytes"]
    assert out[0]["tpot_ms"]["mean"] > out[1]["tpot_ms"]["mean"]
    assert out[0]["hits"] == out[1]["hits"]  # the GPU cache does not see the host tier


def test_gpudirect_reads_skip_the_h2d_copy():
    ps = PolicySet("lru", {"slots_per_layer": 2})
    via_host = Replay(toy(), RTX3090, ps, ReplayConfig(host_memory_gib=0.05)).run().summary
    gds = Replay(toy(), with_nvme(RTX3090, gpudirect=True), ps, ReplayConfig(host_memory_gib=0.05)).run().summary
    t = gds["host_tier"]
    assert gds["bytes_h2d"] == via_host["bytes_h2d"] - t["nvme_bytes"]
    assert t["host_occupancy"] == 0  # host memory is bypassed (placement none)


# ---- invariants -------------------------------------------------------------------------------------------------
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(seed=st.integers(0, 10_000), layers=st.integers(1, 4), experts=st.integers(2, 10), k=st.integers(1, 3),
       slots=st.integers(0, 3), host_experts=st.integers(0, 30), batch=st.integers(1, 2),
       policy=st.sampled_from(["lru", "fifo", "lfu"]), placement=st.sampled_from(["none", "first", "popular"]),
       gpudirect=st.booleans(), prefetch=st.booleans())
def test_tier_invariants(seed, layers, experts, k, slots, host_experts, batch, policy, placement, gpudirect,
                         prefetch):
    tr = random_trace(30, layers, experts, min(k, experts), requests=2, seed=seed, prefill=2)
    hw = with_nvme(RTX3090, gpudirect=gpudirect)
    ps = PolicySet("lru" if slots else "ondemand", {"slots_per_layer": slots} if slots else {},
                   prefetch="next-layer" if prefetch and slots else None,
                   prefetch_options={"accuracy": 0.5} if prefetch and slots else {})
    cfg = ReplayConfig(host_memory_gib=(host_experts * TOY_EXPERT + 1) / GIB, host_policy=policy,
                       host_placement=placement, batch=batch)
    res = Replay(tr, hw, ps, cfg).run()
    s, df = res.summary, res.steps
    t = s["host_tier"]
    if not t["active"]:  # every expert fits host memory: no tier traffic at all
        assert host_experts >= layers * experts and t["nvme_bytes"] == 0
        return
    cap = t["host_capacity_experts"]
    assert cap == host_experts
    # no tier is ever over capacity: host memory, and the GPU's expert cache and memory as before
    assert (df["host_occupancy"] <= cap).all() and t["host_peak_occupancy"] <= cap
    assert (df["cache_occupancy"] <= s["cache_slots"]).all() and s["peak_gpu_mem_bytes"] <= s["gpu_mem_usable_bytes"]
    # every host miss reads the expert's bytes from NVMe exactly once
    assert t["nvme_bytes"] == t["host_misses"] * s["expert_bytes"] == df["nvme_bytes"].sum()
    assert t["nvme_reads"] == t["host_misses"] == df["host_misses"].sum()
    # every copy to the GPU (a demand miss or a prefetch) is looked up in host memory once
    assert t["host_hits"] + t["host_misses"] == s["copies"]
    # every activation served once
    assert s["hits"] + s["misses"] == s["accesses"] and s["tokens"] == tr.num_rows
    assert 0.0 <= t["nvme_busy"] <= 1.0 and s["pcie_busy"] <= 1.0
    assert t["nvme_busy"] == pytest.approx(df["nvme_busy_us"].sum() / (s["makespan_s"] * 1e6))
    assert df["nvme_busy_us"].sum() == pytest.approx(t["nvme_reads"] * t["expert_read_ms"] * 1e3)  # whole reads
    assert (df["host_hits"].sum(), df["host_misses"].sum()) == (t["host_hits"], t["host_misses"])
    if gpudirect:
        assert t["host_occupancy"] == (cap if placement != "none" else 0)
    again = Replay(tr, hw, ps, cfg).run()  # determinism
    a, b = dict(s), dict(again.summary)
    a.pop("wall_s"), b.pop("wall_s")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert again.steps.equals(df)


# ---- results, CLI, timeline, executor -------------------------------------------------------------------------------
def test_cli_replays_mixtral_from_the_ssd(tmp_path, capsys):
    out, steps, trace = tmp_path / "s.json", tmp_path / "steps.csv", tmp_path / "t.json"
    rc = main(["replay", MIXTRAL, "--hw", "desktop-nvme", "--policy", "lru", "--opt", "scope=global",
               "--opt", "cache_gb=7", "--host-memory-gib", "16", "--max-requests", "1", "--json", str(out),
               "--steps-csv", str(steps), "--timeline", str(trace), "--timeline-steps", "0:3"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "SSD tier: host memory 16.0 GiB" in text and "NVMe" in text
    s = json.loads(out.read_text())
    t = s["host_tier"]
    assert t["active"] and t["host_capacity_experts"] == 16 * GIB // s["expert_bytes"]
    assert t["nvme_bytes"] == t["host_misses"] * s["expert_bytes"] > 0
    assert "nvme_bytes" in [ln for ln in steps.read_text().splitlines() if not ln.startswith("#")][0]
    events = json.loads(trace.read_text())["traceEvents"]
    tracks = {e["tid"]: e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    reads = [e for e in events if e.get("ph") == "X" and tracks.get(e["tid"]) == "nvme"]
    assert reads and all(e["name"].startswith("read M") for e in reads)
    occupancy = [e for e in events if e.get("ph") == "C" and e["name"] == "expert cache occupancy"]
    assert occupancy and all(0 <= e["args"]["host tier experts"] <= t["host_capacity_experts"] for e in occupancy)


def test_step_timeline_plot_draws_the_ssd_track(tmp_path):
    from simmoe import plots

    res = Replay(toy(), RTX3090, PolicySet("lru", {"slots_per_layer": 2}),
                 ReplayConfig(host_memory_gib=0.05, timeline_steps=(0, 4))).run()
    ax = plots.step_timeline(res)
    assert "NVMe SSD reads" in [t.get_text() for t in ax.get_yticklabels()]


@pytest.mark.parametrize("args, needle", [
    (["--host-memory-gib", "0"], "--host-memory-gib"),
    (["--host-placement", "hottest"], "--host-placement"),
])
def test_cli_bad_tier_flags(args, needle, capsys):
    assert main(["replay", MIXTRAL, "--hw", "desktop-nvme", "--policy", "ondemand", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_tier_flag_on_a_profile_without_ssd(capsys):
    assert main(["replay", MIXTRAL, "--hw", "h100-sxm", "--host-memory-gib", "16"]) == 2
    err = capsys.readouterr().err
    assert "--host-memory-gib" in err and "no nvme" in err


def test_executor_says_it_cannot_run_the_ssd_tier():
    pytest.importorskip("torch")
    from test_validate import SPEC, _trace

    from simmoe.calibrate.executor import OffloadedExecutor

    small = RTX3090.model_copy(update={"cpu": RTX3090.cpu.model_copy(update={"memory_gib": 4.0})})
    exe = OffloadedExecutor(_trace(SPEC), small, device="cpu", threads=1)
    with pytest.raises(InputError, match="SSD tier") as e:
        exe.run(PolicySet("lru", {"slots_per_layer": 2}))
    assert "\n" not in str(e.value)


def test_host_memory_is_a_sweep_parameter(tmp_path):
    from simmoe.sweeps import expand, load_results, run_sweep
    from simmoe.trace.format import write_trace

    p = tmp_path / "toy.npz"
    write_trace(toy(), p)
    spec = expand({"trace": str(p), "base": {"hw": "rtx3090", "policy": "lru",
                                             "policy_options.slots_per_layer": 2},
                   "grid": {"host_memory_gib": [0.05, 0.15, 64]}}, "s.yaml", tmp_path)
    report = run_sweep(spec.configs, tmp_path / "r.parquet", workers=1, progress=False)
    assert report.ok == 3
    df = load_results(tmp_path / "r.parquet").sort_values("host_memory_gib")
    assert df["host_tier.active"].tolist() == [True, True, False]
    assert df["host_tier.nvme_bytes"].tolist()[0] > df["host_tier.nvme_bytes"].tolist()[1] > 0
    assert df["host_tier.nvme_bytes"].tolist()[2] == 0


# ---- the host tier's actions, by hand ------------------------------------------------------------------------------
def _tier(capacity: int, direct: bool = False, preload=()):
    from simmoe.engine.planner import PlanCounts
    from simmoe.engine.tiers import HostTier, TierPlan
    from simmoe.policies.cache.lru import LRU

    plan = TierPlan(active=True, host_bytes=0, rule="test", capacity=capacity, total_experts=8, expert_bytes=100,
                    policy="lru", policy_cls=LRU, policy_opts=LRU.Options(), placement="first",
                    reads_future=False, direct=direct, preload=tuple(preload), read_us=1.0)
    counts = PlanCounts(bytes_h2d=1000)
    return HostTier(plan, 2, 4, counts), counts


def test_expand_adds_a_read_before_each_copy_the_host_misses():
    from simmoe.engine.planner import FETCH, LOAD, PREFETCH, RUN
    from simmoe.engine.tiers import READ

    tier, counts = _tier(2, preload=(1,))
    ops = [(RUN, 0, 0, 3, 1, 0), (LOAD, 1, 0, 1, 1, 0, 100), (LOAD, 2, 0, 2, 1, 0, 100),
           (FETCH, 3, 1, 0, 100, True, 0, 0), (PREFETCH, 4, 1, 1, 100)]
    out = tier.expand(ops)
    # expert (0,1) = key 1 is in host memory; keys 2, 4 and 5 are read first
    assert out == [ops[0], ops[1], (READ, 2, 0, 2, 100, False), ops[2], (READ, 3, 1, 0, 100, False), ops[3],
                   (READ, 4, 1, 1, 100, False), ops[4]]
    assert (tier.hits, tier.misses, tier.nvme_bytes, tier.evictions) == (1, 3, 300, 2)
    assert sorted(tier.cache.keys()) == [4, 5] and counts.bytes_h2d == 1000  # LRU of 2; copies still counted


def test_direct_reads_replace_the_copy_and_leave_host_memory_alone():
    from simmoe.engine.planner import LOAD, PREFETCH, RUN
    from simmoe.engine.tiers import READ

    tier, counts = _tier(2, direct=True)
    out = tier.expand([(LOAD, 1, 0, 1, 7, 0, 100), (PREFETCH, 4, 1, 1, 100)])
    assert out == [(READ, 1, 0, 1, 100, True), (RUN, 1, 0, 1, 7, 0), (READ, 4, 1, 1, 100, True)]
    assert len(tier.cache) == 0 and counts.bytes_h2d == 800 and tier.nvme_bytes == 200


def test_a_miss_in_both_tiers_costs_its_read_on_the_critical_path():
    # one decode row, one layer, a cold GPU cache and no host memory: the step is the same as without the tier
    # plus exactly one expert read (the copy starts when the read ends instead of when it is issued)
    tr = random_trace(1, 1, 2, 1, requests=1, seed=0, prefill=0)
    ps = PolicySet("lru", {"slots_per_layer": 1})
    plain = Replay(tr, RTX3090.model_copy(update={"nvme": None}), ps).run()
    tiered = Replay(tr, RTX3090, ps, ReplayConfig(host_memory_gib=1e-6)).run()
    assert tiered.summary["host_tier"]["nvme_reads"] == 1
    read = nvme_read_us(TOY_EXPERT, RTX3090.nvme)
    assert tiered.steps["latency_us"].iloc[0] - plain.steps["latency_us"].iloc[0] == pytest.approx(read)


def test_several_gpus_refuse_the_ssd_tier():
    hw = load_profile("2x-rtx3090")  # 128 GiB of host memory and an nvme: section
    tr = read_trace(MIXTRAL).select(requests=[0])
    ps = PolicySet("lru", {"slots_per_layer": 1})
    with pytest.raises(InputError) as e:
        Replay(tr, hw, ps, ReplayConfig(parallel="pipeline", host_memory_gib=16)).run()
    _names(e.value, "--host-memory-gib")
    small = hw.model_copy(update={"cpu": hw.cpu.model_copy(update={"memory_gib": 32})})
    with pytest.raises(InputError) as e:
        Replay(tr, small, ps, ReplayConfig(parallel="expert")).run()
    _names(e.value, "--parallel")
    res = Replay(tr, hw, ps, ReplayConfig(parallel="pipeline")).run()  # every expert fits: runs as before
    assert res.summary["parallel"]["devices"] and "host_tier" not in res.summary
