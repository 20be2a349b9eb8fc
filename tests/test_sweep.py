"""Sweeps: spec parsing and typo errors, 1 vs 2 workers, resume, recorded failures, Ray backend."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import assert_clean_error, random_trace

from simmoe.errors import InputError
from simmoe.sweeps import expand, load_results, load_spec, run_sweep
from simmoe.sweeps.store import partial_path
from simmoe.trace.format import write_trace

VOLATILE = ["run_s", "wall_s"]  # the simulator's own run times differ between runs


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("sweep") / "toy.npz"
    write_trace(random_trace(rows=48, layers=4, experts=8, k=2, requests=3, seed=1, prefill=4), p)
    return p


def spec_dict(trace: Path, **extra) -> dict:
    d = {"trace": str(trace), "base": {"max_requests": 2},
         "grid": {"hw": ["rtx3090", "a100-80gb-sxm"], "policy": ["lru", "lfu"],
                  "policy_options.slots_per_layer": [2, 4]}}
    d.update(extra)
    return d


def write_spec(folder: Path, text: str) -> Path:
    p = folder / "spec.yaml"
    p.write_text(text)
    return p


def test_expand_grid_cases_and_keys(trace_path, tmp_path):
    spec = expand(spec_dict(trace_path, cases=[{"batch": 1}, {"batch": 2, "prefill_chunk": 2}]), "s.yaml", tmp_path)
    assert len(spec) == 2 * 2 * 2 * 2
    first = spec.configs[0]
    assert first.params == {"trace": str(trace_path), "hw": "rtx3090", "policy": "lru",
                            "policy_options.slots_per_layer": 2, "batch": 1, "max_requests": 2}
    keys = [c.key for c in spec.configs]
    assert len(set(keys)) == len(keys)
    again = expand(spec_dict(trace_path, cases=[{"batch": 1}, {"batch": 2, "prefill_chunk": 2}]), "s.yaml", tmp_path)
    assert [c.key for c in again.configs] == keys  # stable across loads
    # a whole options mapping flattens to the same configuration (and the same key)
    d = spec_dict(trace_path)
    d["grid"].pop("policy_options.slots_per_layer")
    d["grid"]["policy_options"] = [{"slots_per_layer": 2}, {"slots_per_layer": 4}]
    assert {c.key for c in expand(d, "s.yaml", tmp_path).configs} == \
        {c.key for c in expand(spec_dict(trace_path), "s.yaml", tmp_path).configs}


def test_key_covers_trace_contents(tmp_path):
    p = tmp_path / "t.npz"
    write_trace(random_trace(rows=16, layers=2, experts=4, k=1, seed=0), p)
    k1 = expand({"trace": str(p), "base": {"hw": "rtx3090"}}, "s", tmp_path).configs[0].key
    write_trace(random_trace(rows=16, layers=2, experts=4, k=1, seed=1), p)
    from simmoe.sweeps.spec import _digest

    _digest.cache_clear()
    k2 = expand({"trace": str(p), "base": {"hw": "rtx3090"}}, "s", tmp_path).configs[0].key
    assert k1 != k2


def test_relative_paths_are_relative_to_the_spec(trace_path, tmp_path):
    (tmp_path / "sub").mkdir()
    target = tmp_path / "sub" / "t.npz"
    target.write_bytes(trace_path.read_bytes())
    p = write_spec(tmp_path, "trace: sub/t.npz\nbase: {hw: rtx3090}\n")
    cfg = load_spec(p).configs[0]
    assert cfg.params["trace"] == "sub/t.npz" and Path(cfg.resolved["trace"]) == target


@pytest.mark.parametrize("body, needles", [
    ("gird: {hw: [rtx3090]}\n", ["gird", "unknown key", "did you mean 'grid'"]),
    ("grid: {hw: [rtx3090], bacth: [1, 2]}\n", ["grid.bacth", "unknown parameter", "did you mean 'batch'"]),
    ("base: {hw: rtx3090, policy_options: {slot_per_layer: 4}}\n",
     ["policy_options.slot_per_layer", "did you mean 'slots_per_layer'"]),
])
def test_spec_errors_through_cli(simmoe_cli, trace_path, tmp_path, body, needles):
    spec = write_spec(tmp_path, f"trace: {trace_path}\n{body}")
    res = simmoe_cli("sweep", spec, "--out", tmp_path / "r.parquet")
    assert_clean_error(res, str(spec), *needles)
    assert not (tmp_path / "r.parquet").exists()


@pytest.mark.parametrize("body, needles", [
    ("base: {hw: rtx3090, policy: lruu}\n", ["unknown policy 'lruu'"]),
    ("base: {hw: rtx9090}\n", ["hw", "no such hardware profile"]),
    ("base: {batch: 1}\n", ["hw", "missing"]),
    ("grid: {hw: []}\n", ["grid.hw", "empty list"]),
    ("grid: {batch: [1, 2]}\ncases: [{hw: rtx3090, batch: 4}]\n", ["cases[0].batch", "also a grid axis"]),
    ("base: {hw: rtx3090}\nbase: {hw: rtx4090}\n", ["duplicate key"]),
    ("base: {hw: rtx3090, prefetch_options: {accuracy: 0.5}}\n", ["prefetch_options.accuracy", "no prefetch"]),
])
def test_spec_errors(trace_path, tmp_path, body, needles):
    spec = write_spec(tmp_path, f"trace: {trace_path}\n{body}")
    with pytest.raises(InputError) as e:
        load_spec(spec)
    for n in [str(spec), *needles]:
        assert n in e.value.line()


def test_missing_trace_and_bad_out(simmoe_cli, tmp_path):
    spec = write_spec(tmp_path, "trace: nope.npz\nbase: {hw: rtx3090}\n")
    assert_clean_error(simmoe_cli("sweep", spec, "--out", tmp_path / "r.parquet"), "trace file not found")
    assert_clean_error(simmoe_cli("sweep", spec, "--out", tmp_path / "r.txt"), "--out", ".parquet")


def _frame(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in VOLATILE if c in df.columns])


def test_one_and_two_workers_give_identical_results(trace_path, tmp_path):
    cfgs = expand(spec_dict(trace_path, cases=[{"batch": 1}, {"batch": 0}]), "s", tmp_path).configs
    r1 = run_sweep(cfgs, tmp_path / "w1.parquet", workers=1, progress=False)
    r2 = run_sweep(cfgs, tmp_path / "w2.parquet", workers=2, progress=False)
    assert (r1.ran, r1.ok, r1.errors, r1.crashes) == (16, 8, 8, 0) == (r2.ran, r2.ok, r2.errors, r2.crashes)
    a, b = _frame(load_results(tmp_path / "w1.parquet")), _frame(load_results(tmp_path / "w2.parquet"))
    pd.testing.assert_frame_equal(a, b)
    assert [c.key for c in cfgs] == a["key"].tolist()  # rows in spec order whatever the completion order
    ok = a[a["status"] == "ok"]
    assert {"tpot_ms.p90", "ttft_ms.p50", "tokens_per_s", "hit_rate", "summary.policy"} <= set(a.columns)
    assert ok["summary.policy"].tolist()[:2] == ["lru(slots_per_layer=2)", "lru(slots_per_layer=4)"]
    assert (ok["hits"] + ok["misses"] == ok["accesses"]).all()
    # the failing configurations are recorded with their error, and did not stop the others
    bad = a[a["status"] == "error"]
    assert len(bad) == 8 and bad["error"].str.startswith("batch: must be >= 1, got 0").all()
    assert bad["tpot_ms.p90"].isna().all()


def test_resume_skips_done_configurations(trace_path, tmp_path):
    out = tmp_path / "r.parquet"
    part = expand(spec_dict(trace_path, grid={"hw": ["rtx3090"], "policy": ["lru"],
                                              "policy_options.slots_per_layer": [2, 4]}), "s", tmp_path).configs
    full = expand(spec_dict(trace_path), "s", tmp_path).configs
    r = run_sweep(part, out, workers=1, progress=False)
    assert (r.total, r.skipped, r.ran) == (2, 0, 2)
    # an interrupted run: stop after two more records; the journal keeps them
    seen = []

    def stop_after_two(rec):
        seen.append(rec["key"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(full, out, workers=1, progress=False, on_record=stop_after_two)
    assert partial_path(out).exists()
    assert len(load_results(out)) == 4  # the table's 2 plus the journal's 2
    r = run_sweep(full, out, workers=1, progress=False)
    assert (r.total, r.skipped, r.ran) == (8, 4, 4)
    assert not partial_path(out).exists()
    df = load_results(out)
    assert df["key"].tolist() == [c.key for c in full] and (df["status"] == "ok").all()
    r = run_sweep(full, out, workers=1, progress=False)
    assert (r.skipped, r.ran) == (8, 0)


def test_sweep_cli_records_failures_and_resumes(simmoe_cli, trace_path, tmp_path):
    spec = write_spec(tmp_path, f"trace: {trace_path}\nbase: {{hw: rtx3090, max_requests: 1}}\n"
                                "grid: {batch: [1, 0]}\n")
    out = tmp_path / "r.csv"
    res = simmoe_cli("sweep", spec, "--out", out, "--workers", "1")
    assert res.returncode == 0, res.stderr
    assert "2 configurations: 0 already done, ran 2" in res.stdout and "ok 1, error 1" in res.stdout
    assert "1 x batch: must be >= 1, got 0" in res.stdout  # the spec's key, not a flag
    df = load_results(out)
    assert df["status"].tolist() == ["ok", "error"]
    res = simmoe_cli("sweep", spec, "--out", out, "--dry-run")
    assert res.returncode == 0 and res.stdout.count(" done ") == 2
    res = simmoe_cli("sweep", spec, "--out", out)
    assert "2 already done, ran 0" in res.stdout


def test_ray_backend(trace_path, tmp_path):
    pytest.importorskip("ray")
    cfgs = expand(spec_dict(trace_path, grid={"hw": ["rtx3090"], "batch": [1, 2, 0]}), "s", tmp_path).configs
    local = run_sweep(cfgs, tmp_path / "local.parquet", workers=1, progress=False)
    ray_rep = run_sweep(cfgs, tmp_path / "ray.parquet", workers=2, backend="ray", progress=False)
    assert (ray_rep.ok, ray_rep.errors) == (local.ok, local.errors) == (2, 1)
    pd.testing.assert_frame_equal(_frame(local.results), _frame(ray_rep.results))
