"""Runtime profiles: the schema (strict, one-line errors), the bundled runtimes (each figure sourced), and what
each field changes in a replay — counted in the timeline, the counters and the memory plan."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import assert_clean_error, plan_run, random_trace

from simmoe.engine.config import ReplayConfig
from simmoe.engine.planner import FETCH, LOAD, RUN
from simmoe.engine.replay import Replay, replay
from simmoe.errors import InputError
from simmoe.hw.profile import load_profile
from simmoe.policies.base import PolicySet
from simmoe.runtime.formats import FORMATS
from simmoe.runtime.profile import (
    RuntimeProfile,
    builtin_dir,
    list_runtimes,
    load_runtime,
    runtime_from_dict,
)

HW = "rtx3090"
BUNDLED = ["deepspeed-zero3", "fiddler", "generic", "hf-accelerate", "ktransformers", "llama.cpp",
           "mixtral-offloading", "simmoe-executor", "torch-eager", "vllm"]


def rt(**sections) -> RuntimeProfile:
    """The generic runtime with some fields changed: rt(host={"syncs_per_expert": 2})."""
    base = load_runtime("generic").model_dump()
    for sec, fields in sections.items():
        base[sec] = {**base[sec], **fields}
    return runtime_from_dict(base, "test")


@pytest.fixture(scope="module")
def tr():
    return random_trace(60, 3, 8, 2, requests=3, seed=5, prefill=4, model="deepseek-v2-lite")


def run(trace, pset=None, runtime=None, hw=HW, **cfg):
    return Replay(trace, load_profile(hw), pset or PolicySet("lru", {"slots_per_layer": 3}),
                  ReplayConfig(**cfg), runtime=runtime).run()


def events(res, track=None, name=None):
    return [e for e in res.events if (track is None or e.track == track) and (name is None or name in e.name)]


# ---- the schema and the bundled files ----------------------------------------------------------------------------
def test_bundled_runtimes_load_and_are_listed():
    assert list_runtimes() == BUNDLED
    for name in BUNDLED:
        r = load_runtime(name)
        assert r.name == name


@pytest.mark.parametrize("name", [n for n in BUNDLED if n != "generic"])
def test_every_figure_of_a_bundled_runtime_says_where_it_comes_from(name):
    text = (builtin_dir() / f"{name}.yaml").read_text()
    data = yaml.safe_load(text)
    assert data["source"] == "code" and data["references"]
    # every non-zero number under host / kernels / experts carries a comment (or its section does)
    section = None
    above = False  # a comment block right above a line explains it too
    for line in text.splitlines():
        if re.match(r"^\w", line):
            section = line.split(":")[0]
            section_commented = "#" in line
            above = False
            continue
        if line.strip().startswith("#"):
            above = True
            continue
        m = re.match(r"^\s+(\w+):\s*([0-9.]+)\s*(#.*)?$", line)
        if section in ("host", "kernels") and m and float(m.group(2)) != 0 and not section_commented:
            assert m.group(3) or above, f"{name}: {section}.{m.group(1)} has no comment saying where it comes from"
        above = False


@pytest.mark.parametrize("data,needle", [
    ({"host": {"lanch": "eager"}}, "host.lanch"),
    ({"host": {"syncs_per_expert": 1.5}}, "host.syncs_per_expert"),
    ({"host": {"per_expert_us": -1}}, "host.per_expert_us"),
    ({"host": {"per_expert_us": float("nan")}}, "host.per_expert_us"),
    ({"host": {"syncs_per_step": 0}}, "host.syncs_per_step"),
    ({"kernels": {"per_expert": 0}}, "per_expert (an expert loop)"),
    ({"kernels": {"per_moe_layer": 4}}, "not both"),
    ({"experts": {"order": "random"}}, "experts.order"),
    ({"experts": {"issue_ahead": 2}}, "issue_ahead needs lookup: layer"),
    ({"experts": {"writeback": "yes"}}, "experts.writeback"),
    ({"weights": {"experts": "q3_kk"}}, "unknown weight format"),
    ({"source": "datasheet"}, "source"),
])
def test_bad_runtime_fields_are_one_line_errors(data, needle):
    base = {"name": "x", "source": "code", **data}
    with pytest.raises(InputError) as e:
        runtime_from_dict(base, "x.yaml")
    line = e.value.line()
    assert "\n" not in line and needle in line and line.startswith("x.yaml")


def test_runtime_opt_overrides_are_checked():
    assert load_runtime("generic", {"experts.order": "index"}).experts.order == "index"
    for key, needle in (("experts.ordr", "did you mean 'experts.order'"), ("order", "SECTION.FIELD"),
                        ("kernels.per_expert", "per_expert")):
        with pytest.raises(InputError, match=re.escape(needle)):
            load_runtime("generic", {key: "0" if key == "kernels.per_expert" else "index"})


def test_cli_runtimes_and_bad_runtime(simmoe_cli, tmp_path):
    res = simmoe_cli("runtimes")
    assert res.returncode == 0 and all(n in res.stdout for n in BUNDLED)
    res = simmoe_cli("runtimes", "show", "mixtral-offloading")
    assert res.returncode == 0
    shown = yaml.safe_load(res.stdout)
    assert runtime_from_dict(shown, "stdout") == load_runtime("mixtral-offloading")
    assert_clean_error(simmoe_cli("replay", "traces/mixtral-8x7b-synth.npz", "--hw", HW, "--runtime", "mixtral-ofloading"),
                       "--runtime", "did you mean 'mixtral-offloading'")
    bad = tmp_path / "rt.yaml"
    bad.write_text("name: x\nsource: code\nexperts: {copy_stream: dma}\n")
    assert_clean_error(simmoe_cli("replay", "traces/mixtral-8x7b-synth.npz", "--hw", HW, "--runtime", str(bad)),
                       "rt.yaml", "experts.copy_stream")
    assert_clean_error(simmoe_cli("replay", "traces/mixtral-8x7b-synth.npz", "--hw", HW, "--runtime-opt",
                                  "host.per_expert_us=fast"), "host.per_expert_us")


# ---- what each field changes ---------------------------------------------------------------------------------------
def test_the_generic_runtime_is_the_default(tr):
    a = run(tr)
    b = run(tr, runtime=load_runtime("generic"))
    pd.testing.assert_frame_equal(a.steps, b.steps, check_exact=True)
    assert a.summary["runtime"] == "generic"


def test_per_expert_syncs_and_bookkeeping_are_host_time_on_the_timeline(tr):
    r = rt(host={"syncs_per_expert": 2, "per_expert_us": 40.0, "per_layer_us": 25.0, "per_moe_layer_us": 11.0,
                 "per_step_us": 70.0})
    res = run(tr, runtime=r, timeline_steps=(0, 5))
    base = run(tr, timeline_steps=(0, 5))
    n_experts = int(res.steps["hits"][:5].sum() + res.steps["misses"][:5].sum())
    assert len(events(res, "dispatch", "index read-back")) == 2 * n_experts
    book = [e for e in events(res, "dispatch", "bookkeeping")]
    assert sum(1 for e in book if " e" in e.name) == n_experts
    assert all(e.end - e.start == pytest.approx(40.0) for e in book if " e" in e.name)
    assert sum(1 for e in book if e.name == "step bookkeeping") == 5
    assert sum(1 for e in book if "routing bookkeeping" in e.name) == 5 * tr.num_layers
    assert (res.steps["latency_us"] > base.steps["latency_us"]).all()


def test_syncs_per_expert_stop_the_host_running_ahead(tr):
    # resident experts: with no syncs the host launches ahead of the GPU; a sync before every expert makes it
    # wait for the queue to drain, so the GPU then waits for the next expert's launches (dispatch stalls)
    pset = PolicySet("resident")
    hw = load_profile("a100-80gb-sxm")
    free = run(tr, pset, hw="a100-80gb-sxm")
    synced = run(tr, pset, runtime=rt(host={"syncs_per_expert": 1}), hw="a100-80gb-sxm")
    calls = int(free.summary["hits"])
    assert synced.steps["latency_us"].sum() >= free.steps["latency_us"].sum() + calls * hw.host.sync_us
    extra_stall = synced.steps["stall_dispatch_us"].sum() - free.steps["stall_dispatch_us"].sum()
    assert extra_stall > calls * hw.host.launch_overhead_us  # at least the first launch after each sync


def test_copy_unit_stream_memory_and_write_back(tr):
    base = run(tr, timeline_steps=(0, 10**6))
    loads = base.summary["copies"]
    three = run(tr, runtime=rt(experts={"copies_per_expert": 3}), timeline_steps=(0, 10**6))
    assert len(events(three, "h2d")) == 3 * len(events(base, "h2d"))
    assert three.summary["bytes_h2d"] == base.summary["bytes_h2d"]  # the same bytes, in more pieces
    wb = run(tr, runtime=rt(experts={"writeback": True}), timeline_steps=(0, 10**6))
    backs = events(wb, "d2h", "write back")
    evictions = loads - 3 * tr.num_layers  # every load after a layer's 3 slots filled evicts an expert
    assert len(backs) == evictions > 0
    assert wb.summary["tpot_ms"]["mean"] > base.summary["tpot_ms"]["mean"]
    on_gpu = run(tr, runtime=rt(experts={"copy_stream": "compute"}))
    assert on_gpu.summary["stall_ms"]["copy"] > base.summary["stall_ms"]["copy"]
    pageable = run(tr, runtime=rt(experts={"host_memory": "pageable"}))
    assert pageable.summary["host_memory"] == "pageable" and pageable.summary["tpot_ms"]["mean"] > \
        base.summary["tpot_ms"]["mean"]
    flag = run(tr, runtime=rt(experts={"host_memory": "pageable"}), host_memory="pinned")  # the flag wins
    assert flag.summary["host_memory"] == "pinned"


def test_fetching_whole_layers_copies_every_expert_every_step(tr):
    r = rt(experts={"fetch": "layer"})
    res = run(tr, PolicySet("ondemand"), runtime=r)
    E = 64  # deepseek-v2-lite
    assert res.summary["copies"] == res.summary["steps"] * tr.num_layers * E
    assert res.summary["hits"] == 0 and res.summary["misses"] == res.summary["accesses"]
    with pytest.raises(InputError, match="needs the cache policy ondemand"):
        run(tr, PolicySet("lru", {"slots_per_layer": 3}), runtime=r)


def test_fused_moe_launches_one_group_per_layer(tr):
    fused = rt(kernels={"per_expert": 0, "per_moe_layer": 7})
    res = run(tr, PolicySet("resident"), runtime=fused, hw="a100-80gb-sxm", timeline_steps=(0, 5))
    groups = [e for e in events(res, "gpu") if e.cat == "expert"]
    assert len(groups) == 5 * tr.num_layers and all(e.args["kernels"] == 7 for e in groups)
    loop = run(tr, PolicySet("resident"), hw="a100-80gb-sxm", timeline_steps=(0, 5))
    assert len([e for e in events(loop, "gpu") if e.cat == "expert"]) == int(loop.steps["hits"][:5].sum())
    # fewer launches: a launch-bound batch-1 step gets faster
    assert res.summary["tpot_ms"]["mean"] < loop.summary["tpot_ms"]["mean"]


def test_cuda_graph_steps_pay_one_launch(tr):
    graphs = rt(host={"graphs_max_tokens": 1})
    res = run(tr, PolicySet("resident"), runtime=graphs, hw="a100-80gb-sxm", timeline_steps=(0, 10**6))
    launches = [e for e in events(res, "dispatch") if e.name.startswith("launch the step")]
    decode = int((res.steps["kind"] == "decode").sum())
    assert len(launches) == decode  # one-token steps only; prefill runs launched per kernel
    eager = run(tr, PolicySet("resident"), hw="a100-80gb-sxm")
    dec = res.steps["kind"] == "decode"
    assert res.steps["stall_dispatch_us"][dec].sum() < 0.1 * eager.steps["stall_dispatch_us"][dec].sum()


def test_weight_formats_set_copy_sizes_and_memory():
    from simmoe.trace.format import read_trace

    mix = read_trace("traces/mixtral-8x7b-synth.npz").select(requests=[0])
    # bf16 Mixtral with 2 slots per layer does not fit a 12 GB card; 2-bit experts and 4-bit attention do
    with pytest.raises(InputError, match="does not fit"):
        run(mix, PolicySet("lru", {"slots_per_layer": 2}), hw="rtx3060")
    res = run(mix, PolicySet("lru", {"slots_per_layer": 2}), runtime=load_runtime("mixtral-offloading"),
              hw="rtx3060")
    params = 3 * 4096 * 14336
    assert res.summary["expert_bytes"] == round(params * FORMATS["hqq2-g16"].bits / 8)
    assert res.memory["dense"] < 0.5 * 2 * 1_600_000_000  # attention at 4.25 bits, embeddings fp16


def test_issue_ahead_copies_misses_before_the_layers_hits(tr):
    r = rt(experts={"order": "index", "lookup": "layer", "issue_ahead": 2})
    planner, records = plan_run(tr, PolicySet("lru", {"slots_per_layer": 3}), batch=3)
    assert not any(op[0] == FETCH for _, _, ops, _, _ in records for op in ops)
    from simmoe.engine.planner import AccessPlanner
    from simmoe.engine.scenario import prepare

    sc = prepare(tr, load_profile(HW), PolicySet("lru", {"slots_per_layer": 3}), ReplayConfig(batch=3), runtime=r)
    p = AccessPlanner(sc)
    seen_ahead = 0
    for i, step in enumerate(sc.steps):
        p.begin_step(step, i)
        for m in range(sc.num_layers):
            ops, _, _ = p.plan_layer(m)
            kinds = [op[0] for op in ops]
            ahead = kinds[: kinds.index(RUN)] if RUN in kinds else kinds
            assert set(ahead) <= {FETCH} and len(ahead) <= 2
            seen_ahead += len(ahead)
            # a fetched buffer is run after, never loaded twice in the layer
            fetched = [op[1] for op in ops if op[0] == FETCH]
            assert all(sum(1 for op in ops if op[0] in (RUN, LOAD) and op[1] == b) >= 1 for b in fetched)
    assert seen_ahead > 0


@pytest.mark.parametrize("name", ["torch-eager", "mixtral-offloading", "hf-accelerate"])
def test_eager_runtimes_cost_more_than_the_generic_loop(tr, name):
    # more launches per expert and per layer, syncs per expert: the same decisions take longer
    pset = PolicySet("ondemand") if name == "hf-accelerate" else PolicySet("lru", {"slots_per_layer": 3})
    a = run(tr, pset)
    r = load_runtime(name, {"weights.experts": "bf16", "weights.dense": "bf16"}) if name == "mixtral-offloading" \
        else load_runtime(name)
    b = run(tr, pset, runtime=r)
    assert b.summary["tpot_ms"]["mean"] > 1.1 * a.summary["tpot_ms"]["mean"]
    assert b.summary["stall_ms"]["dispatch"] > a.summary["stall_ms"]["dispatch"]


def test_named_systems_bring_their_runtime(tr):
    s = replay(tr, HW, "mixtral-offloading", {"slots_per_layer": 2}).summary
    assert s["runtime"] == "mixtral-offloading" and "next-layer" in s["policy"]
    s = replay(tr, HW, "mixtral-offloading", {"slots_per_layer": 2}, runtime="generic").summary
    assert s["runtime"] == "generic"  # --runtime overrides the system's
    assert replay(tr, "a100-80gb-sxm", "vllm").summary["runtime"] == "vllm"


def test_fast_timing_defers_what_it_does_not_inline(tr, monkeypatch):
    from simmoe.engine import replay as replay_mod
    from simmoe.engine.step_timing import StepTiming

    for name in ("torch-eager", "mixtral-offloading", "llama.cpp", "deepspeed-zero3"):
        pset = PolicySet("ondemand") if name == "deepspeed-zero3" else PolicySet("lru", {"slots_per_layer": 3})
        r = load_runtime(name, {"weights.experts": "bf16"}) if name == "mixtral-offloading" else load_runtime(name)
        fast = run(tr, pset, runtime=r)
        with monkeypatch.context() as mp:
            mp.setattr(replay_mod, "FastStepTiming", StepTiming)
            ref = run(tr, pset, runtime=r)
        pd.testing.assert_frame_equal(fast.steps, ref.steps, check_exact=True)


def test_simpy_reference_agrees_for_runtime_features(tr):
    r = rt(host={"syncs_per_expert": 1, "per_expert_us": 30.0, "graphs_max_tokens": 1},
           experts={"copies_per_expert": 2, "writeback": True, "copy_stream": "compute"})
    out = {e: run(tr, runtime=r, engine=e) for e in ("fast", "simpy")}
    np.testing.assert_allclose(out["fast"].steps["end_us"], out["simpy"].steps["end_us"], rtol=1e-9)
    assert Counter(out["fast"].steps["hits"]) == Counter(out["simpy"].steps["hits"])


def test_unified_memory_reads_experts_in_place():
    from simmoe.trace.format import read_trace

    tr = read_trace("traces/deepseek-v2-lite-synth.npz").select(requests=[0])
    with pytest.raises(InputError, match="gpu.unified_memory"):
        run(tr, PolicySet("lru", {"slots_per_layer": 8}), hw="jetson-agx-orin")
    s = run(tr, PolicySet("resident"), hw="jetson-agx-orin").summary
    assert s["copies"] == 0 and s["bytes_h2d"] == 0 and s["hits"] == s["accesses"]


def test_gather_kernels_at_more_than_one_token(tr):
    r = rt(kernels={"per_expert_gather": 2})
    one = run(tr, PolicySet("resident"), hw="a100-80gb-sxm", runtime=r, timeline_steps=(0, 10**6))
    gathers = [e for e in events(one, "gpu", "gather/scatter")]
    multi = one.steps["tokens"] > 1
    assert len(gathers) == int(one.steps["hits"][multi].sum())  # one group per expert call in multi-token steps
    assert all(e.args["kernels"] == 2 for e in gathers)
    base = run(tr, PolicySet("resident"), hw="a100-80gb-sxm")
    single = ~multi.to_numpy()
    # one-token steps launch the same work (their latency may still differ by what the step before left queued)
    np.testing.assert_array_equal(one.steps["gpu_busy_us"][single], base.steps["gpu_busy_us"][single])
    assert (one.steps["latency_us"][multi].to_numpy() > base.steps["latency_us"][multi].to_numpy()).all()
