"""Several GPUs: the topology schema, layer and expert placement, the per-GPU queues and shared links (the
recurrence against SimPy), invariants (hypothesis), one GPU equal to the single-GPU engine, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import simpy
from conftest import random_trace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simmoe.cli.main import main
from simmoe.cli.params import flag_of
from simmoe.engine.config import ReplayConfig
from simmoe.engine.devices import MultiSimpyTimeline, MultiTimeline
from simmoe.engine.parallel import expert_owners, pipeline_layers, prepare_parallel
from simmoe.engine.replay import Replay
from simmoe.engine.timeline import D2H, H2D, HostCosts
from simmoe.errors import InputError
from simmoe.hw.profile import load_profile, profile_from_dict
from simmoe.hw.topology import TopologySpec
from simmoe.policies.base import PolicySet
from simmoe.runtime.profile import load_runtime
from simmoe.trace.format import read_trace

TWO = load_profile("2x-rtx3090")
EIGHT = load_profile("8x-l40s-pcie-switch")
HOST = HostCosts(launch_us=10.0, copy_issue_us=2.0, sync_us=5.0)
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(tr, hw, pset=None, runtime=None, **cfg):
    return Replay(tr, hw, pset or PolicySet("lru"), ReplayConfig(**cfg),
                  runtime=load_runtime(runtime) if runtime else None).run()


# ---- schema ------------------------------------------------------------------------------------------------
def _with_topology(topo: dict) -> dict:
    raw = TWO.model_dump(exclude_defaults=True)
    raw["topology"] = topo
    return raw


@pytest.mark.parametrize("topo, field, words", [
    ({"gpus": 2, "switches": [[0, 2]]}, "topology", "GPU 2 is not in [0, 2)"),
    ({"gpus": 4, "switches": [[0, 1], [1, 2]]}, "topology", "behind two switches"),
    ({"gpus": 2, "p2p": True}, "topology", "p2p_gbps"),
    ({"gpus": 2, "nvlink": True, "p2p_gbps": 50.0}, "topology", "set p2p: true"),
    ({"gpus": 2, "p2p_gbps": 10.0}, "topology", "only used with p2p"),
    ({"gpus": 0}, "topology.gpus", ">= 1"),
    ({"gpus": 2, "swiches": [[0, 1]]}, "topology.swiches", "did you mean 'switches'"),
    ({"gpus": 2.0}, "topology.gpus", "integer"),
])
def test_bad_topology_is_one_clear_error(topo, field, words):
    with pytest.raises(InputError) as e:
        profile_from_dict(_with_topology(topo), "box.yaml")
    assert e.value.field == field and words in str(e.value), str(e.value)


def test_bundled_multi_gpu_profiles():
    assert TWO.num_gpus == 2 and not TWO.topology.p2p and TWO.topology.switches == []
    assert TWO.pcie.link == "PCIe 4.0 x8"
    assert EIGHT.num_gpus == 8 and EIGHT.topology.p2p and not EIGHT.topology.nvlink
    assert [len(s) for s in EIGHT.topology.switches] == [2, 2, 2, 2]
    assert load_profile("rtx3090").num_gpus == 1 and load_profile("rtx3090").topology is None
    assert TopologySpec(gpus=4, switches=[[2, 3]]).switch_of(3) == 0 and TopologySpec(gpus=4).switch_of(3) is None


# ---- placement -------------------------------------------------------------------------------------------
def test_pipeline_layers_follow_llama_cpp():
    # llama.cpp: layer il -> upper_bound(splits, il / (n_layer + 1)), splits 1/N, 2/N, ...; output = layer n_layer
    split = pipeline_layers(32, 2)
    assert split.count(0) == 17 and split.count(1) == 15 and split == tuple(sorted(split))
    for L, n in ((32, 2), (26, 4), (32, 8), (7, 3)):
        split = pipeline_layers(L, n)
        for il, g in enumerate(split):
            assert g == int(np.searchsorted([(k + 1) / n for k in range(n)], il / (L + 1), side="right"))


def test_expert_owners_are_deepspeed_blocks():
    assert expert_owners(8, 2) == (0, 0, 0, 0, 1, 1, 1, 1)
    assert expert_owners(64, 8)[8:16] == (1,) * 8


def test_expert_parallel_gives_each_gpu_only_its_experts():
    tr = random_trace(40, 3, 8, 2, requests=2, seed=3)
    ps = prepare_parallel(tr, TWO, PolicySet("lru"), ReplayConfig(parallel="expert"))
    for g, sc in enumerate(ps.devices):
        ex = sc.trace.experts
        assert np.all((ex < 0) | (np.asarray(ps.expert_gpu)[np.maximum(ex, 0)] == g))
    together = np.where(ps.devices[0].trace.experts >= 0, ps.devices[0].trace.experts, ps.devices[1].trace.experts)
    assert np.array_equal(together, tr.experts)  # every activation on exactly one GPU


def test_configurations_refused():
    tr = random_trace(20, 3, 8, 2)
    for cfg, pset, flag in [
        (dict(parallel="pipeline", gpus=3), PolicySet("lru"), "--gpus"),
        (dict(parallel="expert", gpus=8), PolicySet("lru"), "--gpus"),  # the 2-GPU profile
        (dict(parallel="expert"), PolicySet("lru", placement="cpu"), "--placement"),
        (dict(parallel="pipeline"), PolicySet("lru", routing="adaptive-k"), "--routing"),
        (dict(parallel="pipeline", prefetch_chunk_mb=4.0), PolicySet("lru", prefetch="next-layer"),
         "--prefetch-chunk-mb"),
    ]:
        with pytest.raises(InputError) as e:
            run(tr, TWO, pset, **cfg)
        # the parameter from Python, its flag from the command line
        assert e.value.line(flag_of).startswith(f"{flag}: ") and str(e.value).startswith(e.value.param), str(e.value)
    with pytest.raises(InputError) as e:  # 8 experts over 3 GPUs: DeepSpeed needs an even split
        run(random_trace(20, 3, 8, 2), EIGHT, parallel="expert", gpus=3)
    assert "divide" in str(e.value)
    with pytest.raises(InputError) as e:  # a one-GPU profile: no effect, refused
        run(tr, load_profile("rtx3090"), parallel="pipeline")
    assert str(e.value).startswith("parallel: ") and "one GPU" in str(e.value)
    with pytest.raises(InputError) as e:
        ReplayConfig(gpus=2)
    assert str(e.value).startswith("gpus: only used with parallel pipeline or expert")
    assert e.value.line(flag_of).startswith("--gpus: only used with --parallel pipeline or expert")


# ---- queues and links ------------------------------------------------------------------------------------
def test_switch_uplink_serialises_host_copies_but_own_links_do_not():
    for hw, second_end in ((EIGHT, 102.0 + 100.0), (TWO, 2 + 2 + 100.0)):  # FIFO behind the first; or at once
        tl = MultiTimeline(HOST, 2, 2, hw.topology)
        tl.set_device(0)
        a = tl.copy(100.0, H2D)
        tl.set_device(1)
        b = tl.copy(100.0, H2D)
        assert a == pytest.approx(102.0) and b == pytest.approx(second_end)


def test_peer_copies_use_the_uplinks_on_their_path():
    tl = MultiTimeline(HOST, 2, 4, EIGHT.topology)
    tl.peer_copy(0, 1, 50.0, None)  # within switch 0: no uplink
    assert all(v == 0.0 for v in tl.links.busy.values())
    tl.peer_copy(0, 2, 50.0, None)  # switch 0 up, switch 1 down
    assert tl.links.busy[("switch0", D2H)] == 50.0 and tl.links.busy[("switch1", H2D)] == 50.0
    assert tl.devs[0].c.d2h_busy == 100.0 and tl.devs[2].c.h2d_busy == 50.0


def test_nvlink_copies_use_no_pcie_link():
    topo = TopologySpec(gpus=2, switches=[[0], [1]], p2p=True, nvlink=True, p2p_gbps=50.0)
    tl = MultiTimeline(HOST, 2, 2, topo)
    assert tl.links.peer_path(0, 1) == []
    tl.peer_copy(0, 1, 20.0, None)
    assert all(v == 0.0 for v in tl.links.busy.values())
    pcie = MultiTimeline(HOST, 2, 2, TopologySpec(gpus=2, switches=[[0], [1]], p2p=True, p2p_gbps=10.0))
    assert pcie.links.peer_path(0, 1) == [("switch0", D2H), ("switch1", H2D)]


def test_fifo_uplink_equal_in_simpy():
    def program(tl):
        for g in (0, 1, 2, 0):
            tl.set_device(g)
            tl.kernels(2, 30.0)
            tl.copy(80.0, H2D, after=tl.stream_end())
        tl.peer_copy(1, 3, 40.0, None)
        tl.set_device(3)
        tl.sync()

    fast = MultiTimeline(HOST, 2, 4, EIGHT.topology)
    program(fast)
    env = simpy.Environment()
    slow = MultiSimpyTimeline(env, HOST, 2, 4, EIGHT.topology)
    program(slow)
    env.run(slow.play())
    assert fast.h == pytest.approx(slow.h)
    assert fast.links.busy == pytest.approx(slow.links.busy)


SIMPY_CASES = [  # runtimes with per-expert syncs and host work, write-back, fused kernels, whole-layer fetches
    (PolicySet("lru", {"slots_per_layer": 3}), None, {"batch": 2}),
    (PolicySet("lru", {"slots_per_layer": 2}, prefetch="next-layer", prefetch_options={"accuracy": 0.6}), None, {}),
    (PolicySet("lru", {"slots_per_layer": 2}), "mixtral-offloading", {}),
    (PolicySet("lru", {"slots_per_layer": 2}), "llama.cpp", {"batch": 2}),
    (PolicySet("lru", {"slots_per_layer": 2}), "hf-accelerate", {}),
    (PolicySet("lru", {"slots_per_layer": 2}), None, {"host_memory": "pageable", "copy_stream": "compute"}),
    (PolicySet("ondemand"), "deepspeed-zero3", {}),
]


@pytest.mark.parametrize("hw", [TWO, EIGHT], ids=["2x-rtx3090", "8x-l40s"])
@pytest.mark.parametrize("mode", ["pipeline", "expert"])
@pytest.mark.parametrize("case", range(len(SIMPY_CASES)))
def test_recurrence_equals_simpy(hw, mode, case):
    pset, runtime, cfg = SIMPY_CASES[case]
    tr = random_trace(24, 4 if mode == "expert" else 8, 8, 2, requests=2, seed=7 + case, prefill=3)
    kw = dict(parallel=mode, gpus=2 if hw is TWO else 4, **cfg)
    a = run(tr, hw, pset, runtime, **kw)
    b = run(tr, hw, pset, runtime, engine="simpy", **kw)
    assert a.summary["hits"] == b.summary["hits"]
    np.testing.assert_allclose(a.steps["end_us"], b.steps["end_us"], rtol=1e-9)
    for da, db in zip(a.summary["parallel"]["devices"], b.summary["parallel"]["devices"]):
        assert da["gpu_busy"] == pytest.approx(db["gpu_busy"]) and da["h2d_busy"] == pytest.approx(db["h2d_busy"])
    for la, lb in zip(a.summary["parallel"]["links"], b.summary["parallel"]["links"]):
        assert la["h2d_busy"] == pytest.approx(lb["h2d_busy"]) and la["d2h_busy"] == pytest.approx(lb["d2h_busy"])


# ---- one GPU is the single-GPU engine ------------------------------------------------------------------------
@pytest.mark.parametrize("pset, runtime, cfg", [
    (PolicySet("lru", {"slots_per_layer": 4}), None, {"batch": 2}),
    (PolicySet("belady"), None, {}),
    (PolicySet("lru", prefetch="next-layer", prefetch_options={"accuracy": 0.7}), None, {}),
    (PolicySet("lru"), "llama.cpp", {"batch": 3}),
    (PolicySet("lru"), "mixtral-offloading", {}),
    (PolicySet("lru", {"slots_per_layer": 2}), "torch-eager", {"engine": "simpy"}),
])
@pytest.mark.parametrize("mode", ["pipeline", "expert"])
def test_one_gpu_equals_the_single_gpu_engine_exactly(pset, runtime, cfg, mode):
    tr = read_trace("traces/deepseek-v2-lite-synth.npz") if cfg.get("engine") != "simpy" else \
        random_trace(40, 4, 8, 2, requests=2, seed=5, prefill=3)  # SimPy plays every kernel: a small trace
    a = run(tr, TWO, pset, runtime, max_requests=2, **cfg)
    b = run(tr, TWO, pset, runtime, max_requests=2, parallel=mode, gpus=1, **cfg)
    pd.testing.assert_frame_equal(a.steps, b.steps, check_exact=True)
    sa, sb = dict(a.summary), dict(b.summary)
    sa.pop("wall_s"), sb.pop("wall_s")
    assert sa == sb


# ---- invariants ------------------------------------------------------------------------------------------
@SETTINGS
@given(n=st.sampled_from([2, 4, 8]), mode=st.sampled_from(["pipeline", "expert"]), batch=st.integers(1, 3),
       slots=st.integers(1, 6), seed=st.integers(0, 10_000), p2p=st.booleans(),
       runtime=st.sampled_from([None, "llama.cpp", "torch-eager"]))
def test_invariants(n, mode, batch, slots, seed, p2p, runtime):
    layers = 2 * n - 1 if mode == "pipeline" else 3  # llama.cpp's split gives every GPU a layer from 2N-1 on
    tr = random_trace(16, layers, 8, 2, requests=2, seed=seed, prefill=2)
    hw = EIGHT if p2p else TWO.model_copy(update={"topology": TopologySpec(gpus=8)})
    pset = PolicySet("lru", {"slots_per_layer": slots})
    single = run(tr, hw, pset, runtime, batch=batch)
    res = run(tr, hw, pset, runtime, batch=batch, parallel=mode, gpus=n)
    par = res.summary["parallel"]
    # each GPU's accesses, counted from the trace: the distinct experts per step and layer that it owns
    ps = prepare_parallel(tr, hw, pset, ReplayConfig(batch=batch, parallel=mode, gpus=n))
    want = [0] * n
    for step in ps.driver.steps:
        ex = tr.experts[step.rows]
        for m in range(tr.num_layers):
            for e in np.unique(ex[:, m][ex[:, m] >= 0]):
                g = ps.layer_gpu[tr.spec.moe_layers[m]] if mode == "pipeline" else ps.expert_gpu[e]
                want[g] += 1
    assert [d["accesses"] for d in par["devices"]] == want
    # every activation served once, by the GPU that owns it
    assert sum(d["accesses"] for d in par["devices"]) == single.summary["accesses"] == res.summary["accesses"]
    if mode == "pipeline":  # a stage's caches see exactly its layers' accesses
        layer_acc = (single.layers["hits"] + single.layers["misses"]).tolist()
        assert res.layers["hits"].add(res.layers["misses"]).tolist() == layer_acc
    for d in par["devices"]:
        assert d["peak_mem_bytes"] <= d["usable_mem_bytes"]  # no GPU over its memory
        assert d["gpu_busy"] <= 1 + 1e-9 and d["h2d_busy"] <= 1 + 1e-9 and d["d2h_busy"] <= 1 + 1e-9
    assert res.memory["usable"] == sum(d["usable_mem_bytes"] for d in par["devices"])  # all GPUs together
    for x in par["links"]:
        assert 0 <= x["h2d_busy"] <= 1 + 1e-9 and 0 <= x["d2h_busy"] <= 1 + 1e-9  # never above 100%
    again = run(tr, hw, pset, runtime, batch=batch, parallel=mode, gpus=n)  # determinism
    pd.testing.assert_frame_equal(res.steps, again.steps, check_exact=True)
    assert json.dumps(par) == json.dumps(again.summary["parallel"])


@pytest.mark.parametrize("pset", [
    PolicySet("lru", {"slots_per_layer": 2}, placement="n-cpu-moe", placement_options={"n": 4}),
    PolicySet("lru", {"slots_per_layer": 2}, placement="fiddler"),
], ids=["n-cpu-moe", "fiddler"])
def test_pipeline_stages_compute_the_models_cpu_layers(pset):
    tr = random_trace(30, 6, 8, 2, requests=2, seed=2, prefill=2)
    single = run(tr, TWO, pset, batch=2)
    fast = run(tr, TWO, pset, batch=2, parallel="pipeline")
    slow = run(tr, TWO, pset, batch=2, parallel="pipeline", engine="simpy")
    assert fast.layers["cpu_experts"].tolist() == single.layers["cpu_experts"].tolist()  # the model's layers 0-3
    assert fast.summary["cpu_experts"] > 0
    np.testing.assert_allclose(fast.steps["end_us"], slow.steps["end_us"], rtol=1e-9)
    np.testing.assert_allclose(fast.steps["cpu_busy_us"], slow.steps["cpu_busy_us"], rtol=1e-9)


def test_a_model_too_big_for_one_gpu_runs_split():
    tr = read_trace("traces/mixtral-8x7b-synth.npz")
    single = load_profile("l40s")
    with pytest.raises(InputError):  # every expert resident: ~87 GiB of bf16 experts on one 45 GiB card
        run(tr, single, PolicySet("resident"), max_requests=1)
    res = run(tr, EIGHT, PolicySet("resident"), max_requests=1, parallel="pipeline")
    assert res.summary["misses"] == 0 and res.summary["hits"] > 0
    assert all(d["peak_mem_bytes"] <= d["usable_mem_bytes"] for d in res.summary["parallel"]["devices"])


def test_pipeline_moves_the_hidden_state_at_each_boundary():
    tr = random_trace(20, 8, 8, 2, seed=1)
    res = run(tr, TWO, parallel="pipeline")
    steps = len(res.steps)
    assert res.summary["parallel"]["stage_moves"] == steps  # one boundary, crossed once per step
    act = res.summary["parallel"]["links"]
    assert act[0]["bytes_d2h"] > 0 and act[1]["bytes_h2d"] > res.summary["parallel"]["devices"][1]["bytes_h2d"]


# ---- command line ----------------------------------------------------------------------------------------
def test_cli_replay_on_two_gpus(tmp_path, capsys):
    out = tmp_path / "r.json"
    tl = tmp_path / "t.json"
    rc = main(["replay", "traces/mixtral-8x7b-synth.npz", "--hw", "2x-rtx3090", "--parallel", "pipeline",
               "--max-requests", "1", "--json", str(out), "--timeline", str(tl), "--timeline-steps", "0:3"])
    assert rc in (0, None)
    text = capsys.readouterr().out
    assert "2 GPUs, pipeline parallel" in text and "gpu1" in text
    s = json.loads(out.read_text())
    assert [d["gpu"] for d in s["parallel"]["devices"]] == [0, 1]
    names = {e["args"]["name"] for e in json.loads(tl.read_text())["traceEvents"] if e.get("name") == "thread_name"}
    assert {"GPU 0 compute stream", "GPU 1 compute stream", "GPU 0 H2D copy engine (its link)",
            "GPU 0 D2H copy engine", "host dispatch thread"} <= names


def test_cli_single_gpu_text_has_no_device_table(capsys):
    main(["replay", "traces/mixtral-8x7b-synth.npz", "--hw", "rtx3090", "--max-requests", "1"])
    assert "GPUs," not in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["--parallel", "pipeline", "--gpus", "3"], "--gpus: the profile 2x-rtx3090 has 2 GPUs"),
    (["--gpus", "2"], "--gpus: only used with --parallel"),
    (["--parallel", "sideways"], "invalid choice"),
])
def test_cli_bad_parallel_flags(args, words, capsys, tmp_path):
    out = tmp_path / "r.json"
    try:
        rc = main(["replay", "traces/mixtral-8x7b-synth.npz", "--hw", "2x-rtx3090", "--json", str(out), *args])
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


# ---- sweeps and plans ------------------------------------------------------------------------------------
def test_sweep_takes_parallel_and_gpus_as_dimensions(tmp_path):
    from simmoe.sweeps.store import load_results

    trace = (tmp_path / "t.npz")
    import shutil

    shutil.copy("traces/mixtral-8x7b-synth.npz", trace)
    spec = tmp_path / "s.yaml"
    spec.write_text("trace: t.npz\nbase: {max_requests: 1, policy: lru}\n"
                    "grid: {hw: [2x-rtx3090, 8x-l40s-pcie-switch], parallel: [pipeline, expert], gpus: [2]}\n")
    out = tmp_path / "r.parquet"
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1"]) in (0, None)
    df = load_results(out)
    assert len(df) == 4 and (df["status"] == "ok").all()
    assert set(df["parallel"]) == {"pipeline", "expert"}
    assert df.groupby("hw")["tpot_ms.p90"].nunique().min() == 2  # the split changes the result


def test_plan_compares_two_gpus_with_one_and_prices_the_machine():
    from simmoe.planning import parse_slo, plan, search_space

    rows = search_space("traces/mixtral-8x7b-synth.npz", ["2x-rtx3090", "rtx4090"], ["lru", "cpu-experts"],
                        [None], [1])
    two = [r for r in rows if r["hw"] == "2x-rtx3090"]
    assert sorted(r["parallel"] for r in two) == ["expert", "pipeline"]  # cpu-experts does not split
    assert all("parallel" not in r for r in rows if r["hw"] == "rtx4090")
    ev = plan("traces/mixtral-8x7b-synth.npz", [parse_slo("tpot_p90_ms=100000")], hws=["2x-rtx3090", "rtx4090"],
              policies=["lru"], slots=[None], batches=[1], base={"max_requests": 1}, workers=1, progress=False)
    assert len(ev) == 3 and ev["feasible"].all()
    assert set(ev[ev["hw"] == "2x-rtx3090"]["usd_per_hour"]) == {0.30}
    # a split that cannot run is not offered: 8 GPUs over a 4-layer model's pipeline
    tiny = search_space("traces/tinymoe-stdlib.npz", ["8x-l40s-pcie-switch"], ["lru"], [None], [1])
    from simmoe.trace.format import read_trace as rt

    spec = rt("traces/tinymoe-stdlib.npz").spec
    want = (["expert"] if spec.num_experts % 8 == 0 else []) + (["pipeline"] if spec.num_layers >= 15 else [])
    assert sorted(r["parallel"] for r in tiny) == sorted(want)


@pytest.mark.parametrize("runtime", [None, "llama.cpp"])  # the model's own precision, GGUF dense weights
def test_stage_shares_add_up_to_the_model(runtime):
    tr = read_trace("traces/mixtral-8x7b-synth.npz")
    ps = prepare_parallel(tr, EIGHT, PolicySet("lru"), ReplayConfig(parallel="pipeline", max_requests=1),
                          runtime=load_runtime(runtime) if runtime else None)
    spec = ps.driver.spec
    assert not spec.tie_embeddings
    assert abs(sum(s.dense for s in ps.shares) - spec.dense_bytes()) <= len(ps.shares)
    assert sum(s.kv_per_token for s in ps.shares) == spec.kv_bytes_per_token()
    assert [sc.memory.dense for sc in ps.devices] == [s.dense for s in ps.shares]


def test_the_real_executor_says_it_runs_one_gpu(capsys):
    from simmoe.calibrate.executor import OffloadedExecutor

    tr = random_trace(8, 2, 4, 2)
    with pytest.raises(InputError) as e:
        OffloadedExecutor(tr, TWO, device="cpu")
    assert e.value.field == "topology" and "runs one GPU" in str(e.value)
    rc = main(["validate", "--trace", "traces/tinymoe-stdlib.npz", "--hw", "2x-rtx3090", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "runs one GPU" in err and len(err.strip().splitlines()) == 1


def test_serving_run_on_two_gpus():
    tr = random_trace(40, 3, 8, 2, requests=4, seed=4, prefill=3)
    res = run(tr, TWO, arrivals="poisson", rate=50.0, batch=2, parallel="expert")
    assert res.summary["requests"] == 4 and res.summary["e2e_ms"]["mean"] > 0
    assert sum(d["accesses"] for d in res.summary["parallel"]["devices"]) == res.summary["accesses"]


def test_timeline_names_no_empty_single_gpu_tracks(tmp_path):
    """Several GPUs: each GPU's queues are named; the single GPU's track names (unused) are not."""
    tl = tmp_path / "t.json"
    main(["replay", "traces/mixtral-8x7b-synth.npz", "--hw", "2x-rtx3090", "--parallel", "pipeline",
          "--max-requests", "1", "--timeline", str(tl), "--timeline-steps", "0:2", "-q"])
    events = json.loads(tl.read_text())["traceEvents"]
    names = {e["args"]["name"]: e["tid"] for e in events if e.get("name") == "thread_name"}
    busy = {e["tid"] for e in events if e.get("ph") == "X"}
    assert not {"GPU compute stream", "H2D copy engine", "D2H copy engine"} & set(names)
    assert {"GPU 0 compute stream", "GPU 1 compute stream"} <= set(names)
    assert names["GPU 1 compute stream"] in busy
