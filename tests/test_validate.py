"""Validation: the real offloaded executor (tiny model, on the CPU) takes exactly the simulator's cache
decisions; the report is written; bad input is one clear error."""

from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict

import numpy as np
import pytest

from simmoe.calibrate.validate import (
    Config,
    check_host_memory,
    default_configs,
    parse_config,
    run_validation,
    truncate_layers,
    write_report,
)
from simmoe.errors import InputError
from simmoe.hw.profile import load_profile
from simmoe.models.spec import ModelSpec
from simmoe.trace.format import Trace, make_meta, validate, write_trace

torch = pytest.importorskip("torch")

SPEC = ModelSpec(name="tiny-val", num_layers=4, moe_layers=(1, 2, 3), num_experts=8, top_k=2, d_model=64,
                 expert_d_ff=96, num_heads=4, num_kv_heads=2, head_dim=16, vocab_size=256, dense_d_ff=128,
                 num_shared_experts=1, shared_d_ff=32)
MLA = ModelSpec(name="tiny-mla", num_layers=3, moe_layers=(0, 1, 2), num_experts=8, top_k=2, d_model=64,
                expert_d_ff=96, num_heads=4, num_kv_heads=4, head_dim=24, kv_lora_rank=32, qk_rope_head_dim=8,
                vocab_size=256)


def _trace(spec: ModelSpec, requests: int = 3, rows: int = 10, prefill: int = 3, seed: int = 0,
           gates: bool = False) -> Trace:
    rng = np.random.default_rng(seed)
    L, E, K = spec.num_moe_layers, spec.num_experts, spec.top_k
    # Skewed routing so that caches get hits.
    p = np.arange(E, 0, -1, dtype=float) ** 1.5
    ex = np.stack([[rng.choice(E, K, replace=False, p=p / p.sum()) for _ in range(L)]
                   for _ in range(requests * rows)]).astype(np.int16)
    req = np.repeat(np.arange(requests), rows).astype(np.int32)
    ph = np.tile(np.r_[np.zeros(prefill), np.ones(rows - prefill)], requests).astype(np.int8)
    g = rng.random(ex.shape).astype(np.float32) if gates else None
    tr = Trace(ex, req, ph, make_meta(model_spec=spec, source="test"), gates=g)
    validate(tr)
    return tr


@pytest.fixture(scope="module")
def hw():
    return load_profile("rtx3090")


@pytest.fixture(scope="module")
def executor(hw):
    from simmoe.calibrate.executor import OffloadedExecutor

    return OffloadedExecutor(_trace(SPEC, gates=True), hw, device="cpu", threads=1)


def _sim(trace, hw, cfg: Config, batch: int):
    from simmoe.engine.config import ReplayConfig
    from simmoe.engine.replay import Replay

    return Replay(trace, hw, cfg.pset, ReplayConfig(batch=batch)).run()


CONFIGS = ["resident", "ondemand", "lru:slots_per_layer=2", "lru:scope=global,slots_per_layer=3", "cpu-experts",
           "lru:slots_per_layer=3+prefetch=oracle", "lru:slots_per_layer=2+placement=n-cpu-moe:n=1",
           "hybrimoe:slots_per_layer=3", "daop:slots_per_layer=2", "se-moe:slots_per_layer=2",
           "swapmoe:slots=2", "lfu:slots_per_layer=2", "arc:slots_per_layer=3", "fifo:slots_per_layer=2",
           "belady:slots_per_layer=3", "static-popular:profile_prefix=0.5", "mrs:slots_per_layer=2",
           "data-aware:slots_per_layer=2", "lru:slots_per_layer=2+placement=fiddler",
           "lru:slots_per_layer=3+routing=adaptive-k:top_p=0.6", "monde:slots_per_layer=2,profile_prefix=0.5",
           "lru:slots_per_layer=2+prefetch=next-layer:accuracy=0.7",
           "lru:scope=global,slots_per_layer=4+prefetch=impact"]


RUNTIMES = [("torch-eager", "lru:slots_per_layer=3", {}),
            ("mixtral-offloading", "lru:slots_per_layer=2+prefetch=next-layer:accuracy=0.7",
             {"weights.experts": "null", "weights.dense": "null"}),
            ("hf-accelerate", "ondemand", {}),
            ("deepspeed-zero3", "ondemand", {})]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name,text,overrides", RUNTIMES, ids=[r[0] for r in RUNTIMES])
def test_executor_runs_each_runtimes_order_and_copies(executor, hw, name, text, overrides, batch):
    # the runtime's access order (index, hits first with misses issued ahead), copy unit and stream, write-back
    # and whole-layer fetch: the executor's counts equal the simulator's, per step
    from simmoe.engine.config import ReplayConfig
    from simmoe.engine.replay import Replay
    from simmoe.runtime.profile import load_runtime

    runtime = load_runtime(name, overrides)
    cfg = parse_config(text)
    meas = executor.run(cfg.pset, batch, runtime=runtime)
    sim = Replay(executor.trace, hw, cfg.pset, ReplayConfig(batch=batch), runtime=runtime).run()
    for k in ("hits", "misses", "copies", "cpu_experts", "prefetches"):
        assert meas.counts[k] == sim.summary[k], k
    np.testing.assert_array_equal(meas.steps["hits"].to_numpy(), sim.steps["hits"].to_numpy())
    np.testing.assert_array_equal(meas.steps["copies"].to_numpy(), sim.steps["copies"].to_numpy())


def test_index_order_changes_the_executors_hits_as_the_simulators(executor, hw):
    from simmoe.runtime.profile import load_runtime

    pset = parse_config("lru:slots_per_layer=3").pset
    a = executor.run(pset, 3, runtime=load_runtime("generic"))
    b = executor.run(pset, 3, runtime=load_runtime("torch-eager"))
    assert a.counts["hits"] != b.counts["hits"]


def test_every_cache_policy_is_covered():
    from simmoe.policies.registry import all_policies

    named = {parse_config(c).pset.cache for c in CONFIGS}
    from simmoe.engine.setup import resolve

    expanded = {resolve(parse_config(c).pset).cache_cls.name for c in CONFIGS}
    assert {c.name for c in all_policies() if c.kind == "cache"} <= named | expanded


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("text", CONFIGS)
def test_executor_takes_the_simulators_decisions(executor, hw, text, batch):
    cfg = parse_config(text)
    meas = executor.run(cfg.pset, batch)
    sim = _sim(executor.trace, hw, cfg, batch)
    for k in ("hits", "misses", "copies", "cpu_experts", "prefetches"):
        assert meas.counts[k] == sim.summary[k], k
    df = meas.steps
    assert len(df) == len(sim.steps)
    # per step, not only in total
    np.testing.assert_array_equal(df["hits"].to_numpy(), sim.steps["hits"].to_numpy())
    np.testing.assert_array_equal(df["misses"].to_numpy(), sim.steps["misses"].to_numpy())
    assert (df["latency_us"] > 0).all()
    assert list(df["kind"]) == list(sim.steps["kind"])


@pytest.mark.parametrize("text", ["hybrimoe:slots_per_layer=1", "lru:slots_per_layer=1+placement=hybrid-split"])
def test_layer_wise_hits_run_before_misses_evict_them(executor, text):
    # A layer-wise placement looks the whole layer up first; its hits run before its misses, so no miss
    # overwrites a hit of the same layer before the hit's kernels read it (with the old in-order loop this
    # trace had 3 and 12 such hits at batch 1 and 3 with one slot per layer). The executor checks, for every
    # kernel, that its buffer holds the expert the planner says (and raises otherwise).
    for batch in (1, 3):
        meas = executor.run(parse_config(text).pset, batch)
        assert meas.counts["hits"] > 0


def test_executor_refuses_a_plan_that_reads_the_wrong_weights(executor, monkeypatch):
    from simmoe.engine.planner import RUN, AccessPlanner

    real = AccessPlanner.plan_layer

    def wrong(self, m):  # every hit reads buffer 0, whatever it holds
        ops, cpu, pre = real(self, m)
        return [(RUN, 0, *op[2:]) if op[0] == RUN else op for op in ops], cpu, pre

    monkeypatch.setattr(AccessPlanner, "plan_layer", wrong)
    with pytest.raises(RuntimeError, match="buffer 0 holds"):
        executor.run(parse_config("lru:slots_per_layer=4").pset, 1)


def _reference_lru_hits(trace: Trace, slots: int) -> int:
    """A plain per-layer LRU over requests in order, rows in order, slots in order (batch 1)."""
    hits = 0
    caches = [OrderedDict() for _ in range(trace.num_layers)]
    for row in trace.experts[trace.replay_order]:
        for m, lay in enumerate(row):
            c = caches[m]
            for e in lay:
                if e < 0:
                    continue
                if e in c:
                    hits += 1
                    c.move_to_end(e)
                else:
                    if len(c) >= slots:
                        c.popitem(last=False)
                    c[e] = None
    return hits


def test_executor_lru_matches_a_reference_lru(hw):
    from simmoe.calibrate.executor import OffloadedExecutor

    exe = OffloadedExecutor(_trace(SPEC, prefill=0, seed=5), hw, device="cpu", threads=1)  # decode only
    for slots in (1, 3, 5):
        meas = exe.run(parse_config(f"lru:slots_per_layer={slots}").pset, 1)
        assert meas.counts["hits"] == _reference_lru_hits(exe.trace, slots)
        assert meas.counts["hits"] + meas.counts["misses"] == int((exe.trace.experts >= 0).sum())


def test_executor_mla_attention_and_batch(hw):
    from simmoe.calibrate.executor import OffloadedExecutor

    tr = _trace(MLA, requests=4, rows=6, prefill=2, seed=3)
    exe = OffloadedExecutor(tr, hw, device="cpu", threads=1)
    cfg = parse_config("lru:slots_per_layer=4")
    for b in (1, 2):
        meas = exe.run(cfg.pset, b)
        assert meas.counts["hits"] == _sim(tr, hw, cfg, b).summary["hits"]


def test_executor_rejects_precision_policies(executor):
    with pytest.raises(InputError, match="precision"):
        executor.run(_quantized_pset(), 1)


def _quantized_pset():
    from simmoe.policies.base import PolicySet

    try:
        return PolicySet(cache="lru", cache_options={"slots_per_layer": 2}, precision="quantized",
                         precision_options={"bits": 4})
    except TypeError:  # pragma: no cover - an engine without precision policies
        pytest.skip("this engine has no precision policies")


# ---- configurations and inputs ---------------------------------------------------------------------------------
def test_parse_config_forms():
    c = parse_config("lru:slots_per_layer=4,scope=layer+prefetch=oracle:lookahead=2")
    assert c.pset.cache == "lru" and dict(c.pset.cache_options) == {"slots_per_layer": 4, "scope": "layer"}
    assert c.pset.prefetch == "oracle" and dict(c.pset.prefetch_options) == {"lookahead": 2}
    c = parse_config("ondemand+placement=fiddler")
    assert c.pset.placement == "fiddler" and c.label == "ondemand+placement=fiddler"


@pytest.mark.parametrize("text,needle", [
    ("", "empty"),
    ("nosuchpolicy", "unknown policy"),
    ("lru:slots=4", "unknown option"),
    ("lru+oracle", "expected KIND=NAME"),
    ("lru+prefetch=oracle+prefetch=oracle", "given twice"),
    ("lru:slots_per_layer", "key=value"),
])
def test_parse_config_errors(text, needle):
    with pytest.raises(InputError, match=needle):
        parse_config(text)


def test_default_configs_cover_the_issue_list():
    from simmoe.models import get_model

    cfgs = default_configs(get_model("mixtral-8x7b"))
    assert cfgs[:6] == ["resident", "ondemand", "lru:slots_per_layer=2", "lru:slots_per_layer=4",
                        "lru:slots_per_layer=6", "cpu-experts"]
    assert cfgs[6:] == ["lru:slots_per_layer=4+prefetch=oracle"]  # the oracle prefetcher is registered
    for c in cfgs:
        parse_config(c)


def test_truncate_layers_keeps_the_first_layers(hw):
    tr = _trace(SPEC, gates=True, prefill=0)
    t2 = truncate_layers(tr, 2)
    assert t2.num_layers == 2 and t2.spec.num_moe_layers == 2
    np.testing.assert_array_equal(t2.experts, tr.experts[:, :2])
    assert truncate_layers(tr, 10) is tr
    with pytest.raises(InputError, match="--layers"):
        truncate_layers(tr, 0)
    assert _sim(t2, hw, parse_config("lru:slots_per_layer=2"), 1).summary["accesses"] == int((t2.experts >= 0).sum())


def test_host_memory_check():
    from simmoe.models import get_model

    mix = get_model("mixtral-8x7b")
    with pytest.raises(InputError, match="--layers"):
        check_host_memory(mix, "cuda", "t.npz", available=64 * 2**30)  # 32 layers x 8 x 352 MB = 90 GB
    check_host_memory(mix.truncated(16), "cuda", "t.npz", available=64 * 2**30)  # 45 GB fits


# ---- the report and the CLI -------------------------------------------------------------------------------------
def test_run_validation_writes_the_report(hw, tmp_path):
    tr = _trace(SPEC, requests=2, rows=6)
    cfgs = [parse_config(c) for c in ("resident", "lru:slots_per_layer=2", "cpu-experts")]
    rep = run_validation(tr, hw, cfgs, [1, 2], device="cpu", threads=1)
    assert len(rep.rows) == 6 and rep.counts_match
    assert all(r.decode_steps > 0 and r.measured_mean_ms > 0 and r.simulated_mean_ms > 0 for r in rep.rows)
    r = rep.rows[1]
    assert r.error_mean == pytest.approx(r.simulated_mean_ms / r.measured_mean_ms - 1)
    assert rep.mape_mean == pytest.approx(np.mean([abs(x.error_mean) for x in rep.rows]))
    paths = write_report(rep, tmp_path / "rep")
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["report.json", "report.md", "report.png",
                                                                     "steps.csv"]
    d = json.loads(paths["json"].read_text())
    assert d["counts_match"] is True and len(d["rows"]) == 6 and d["device"] == "cpu"
    assert any("CPU" in n for n in d["notes"])
    md = paths["markdown"].read_text()
    assert "| 2 | `cpu-experts` |" in md and "report.png" in md
    assert paths["figure"].stat().st_size > 1000
    import pandas as pd

    steps = pd.read_csv(paths["steps"])
    assert set(steps["config"]) == {"resident", "lru:slots_per_layer=2", "cpu-experts"}
    assert (steps["hits"] == steps["simulated_hits"]).all()


def _main_with_validate(monkeypatch):
    from simmoe.cli import main as cli_main

    if "simmoe.cli.validate_cmd" not in cli_main.COMMAND_MODULES:
        monkeypatch.setattr(cli_main, "COMMAND_MODULES", [*cli_main.COMMAND_MODULES, "simmoe.cli.validate_cmd"])
    return cli_main.main


def test_validate_cli_tiny_cpu(monkeypatch, tmp_path, capsys):
    write_trace(_trace(SPEC, requests=2, rows=5), tmp_path / "t.npz")
    main = _main_with_validate(monkeypatch)
    rc = main(["validate", "--trace", str(tmp_path / "t.npz"), "--hw", "rtx3090", "--device", "cpu",
               "--threads", "1", "--batch", "1", "2", "--configs", "ondemand", "lru:slots_per_layer=3",
               "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "cache decisions equal in every configuration: **yes**" in out
    assert (tmp_path / "out" / "report.md").is_file()


@pytest.mark.parametrize("args,needle", [
    (["--configs", "nosuch"], "unknown policy"),
    (["--batch", "0"], "--batch"),
    (["--layers", "0"], "--layers"),
    (["--hw", "nosuchhw"], "no such hardware profile"),
])
def test_validate_cli_bad_input(monkeypatch, tmp_path, capsys, args, needle):
    write_trace(_trace(SPEC, requests=1, rows=4), tmp_path / "t.npz")
    main = _main_with_validate(monkeypatch)
    base = {"--trace": str(tmp_path / "t.npz"), "--hw": "rtx3090"}
    for flag in ("--hw",):
        if flag in args:
            base.pop(flag)
    argv = ["validate", *[x for kv in base.items() for x in kv], "--device", "cpu", *args,
            "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("simmoe: error:") and needle in err[0], err
    assert not (tmp_path / "out").exists()


def test_validate_cli_config_that_does_not_fit(monkeypatch, tmp_path, capsys):
    from simmoe.models import get_model

    spec = get_model("mixtral-8x7b").truncated(8)  # 64 experts x 352 MB: more than a T4 holds
    write_trace(_trace(spec, requests=1, rows=4), tmp_path / "t.npz")
    main = _main_with_validate(monkeypatch)
    assert main(["validate", "--trace", str(tmp_path / "t.npz"), "--hw", "t4", "--device", "cpu",
                 "--configs", "resident", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "'resident'" in err and "\n" not in err


def test_validate_without_torch_is_one_clear_error(monkeypatch, tmp_path):
    from simmoe.cli import validate_cmd

    write_trace(_trace(SPEC, requests=1, rows=4), tmp_path / "t.npz")
    monkeypatch.setitem(sys.modules, "torch", None)
    parser = argparse.ArgumentParser()
    validate_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["validate", "--trace", str(tmp_path / "t.npz"), "--hw", "rtx3090",
                              "--configs", "ondemand", "--out", str(tmp_path / "o")])
    with pytest.raises(InputError, match=r"install the torch extra: pip install -e '\.\[torch\]'"):
        args.func(args)


# ---- GPU ----------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("batch", [1, 3])
def test_executor_on_gpu_takes_the_simulators_decisions(hw, batch):
    from simmoe.calibrate.executor import OffloadedExecutor

    tr = _trace(SPEC, gates=True)
    exe = OffloadedExecutor(tr, hw, device="cuda")
    for text in ("resident", "ondemand", "lru:slots_per_layer=2", "cpu-experts",
                 "lru:slots_per_layer=3+prefetch=oracle"):
        cfg = parse_config(text)
        meas = exe.run(cfg.pset, batch)
        sim = _sim(tr, hw, cfg, batch)
        for k in ("hits", "misses", "copies", "cpu_experts", "prefetches"):
            assert meas.counts[k] == sim.summary[k], (text, k)
