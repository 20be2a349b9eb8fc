"""`simmoe replay` through the real entry point: outputs, and bad input as one clear line with exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_clean_error

from simmoe.trace.format import write_trace
from simmoe.trace.synth import PRESETS, synth_trace


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("t") / "mixtral.npz"
    write_trace(synth_trace("mixtral-8x7b", requests=2, prompt_tokens=8, decode_tokens=24, seed=3,
                            **PRESETS["mixtral-like"]), p)
    return p


JSON_KEYS = {"tokens", "steps", "hits", "misses", "hit_rate", "bytes_h2d", "tpot_ms", "ttft_ms", "tokens_per_s",
             "gpu_busy", "pcie_busy", "peak_gpu_mem_bytes", "policy", "hw", "wall_s"}


def test_replay_prints_summary_and_writes_json(simmoe_cli, trace_file, tmp_path):
    out = tmp_path / "r.json"
    csv = tmp_path / "steps.csv"
    res = simmoe_cli("replay", trace_file, "--hw", "rtx3090", "--policy", "lru", "--opt", "slots_per_layer=1",
                     "--json", out, "--steps-csv", csv)
    assert res.returncode == 0, res.stderr
    assert "hit rate" in res.stdout and "TPOT" in res.stdout
    data = json.loads(out.read_text())
    assert JSON_KEYS <= set(data)
    assert set(data["tpot_ms"]) == {"mean", "p50", "p90", "p95", "p99"}
    assert data["hits"] + data["misses"] == data["accesses"]
    assert data["policy"] == "lru(slots_per_layer=1)" and data["hw"] == "rtx3090"
    assert 0 < data["tpot_ms"]["p50"] <= data["tpot_ms"]["p99"]
    import pandas as pd

    steps = pd.read_csv(csv, comment="#")  # the first line is the provenance comment
    assert len(steps) == data["steps"] and steps["hits"].sum() == data["hits"]


def test_replay_hw_path_and_batch(simmoe_cli, trace_file, tmp_path):
    from conftest import REPO

    out = tmp_path / "b.json"
    res = simmoe_cli("replay", trace_file, "--hw", REPO / "hwprofiles" / "a100-80gb-sxm.yaml", "--batch", "2",
                     "--json", out, "--quiet")
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""
    assert json.loads(out.read_text())["batch"] == 2


def test_timeline_is_valid_trace_event_json(simmoe_cli, trace_file, tmp_path):
    out = tmp_path / "tl.json"
    res = simmoe_cli("replay", trace_file, "--hw", "rtx3090", "--opt", "slots_per_layer=1", "--timeline", out,
                     "--timeline-steps", "0:5", "--quiet")
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    evs = doc["traceEvents"]
    names = {e["args"]["name"] for e in evs if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"GPU compute stream", "H2D copy engine", "host dispatch thread", "CPU expert worker"} <= names
    xs = [e for e in evs if e["ph"] == "X"]
    assert xs and all(e["dur"] >= 0 and isinstance(e["ts"], (int, float)) for e in xs)
    assert {e["tid"] for e in xs} >= {1, 2, 3}
    assert any(e["ph"] == "C" for e in evs)
    steps = [e for e in xs if e["cat"] == "step"]
    assert len(steps) == 5


@pytest.mark.parametrize("args,needles", [
    (["--hw", "rtx3090", "--policy", "nope"], ["--policy", "unknown policy 'nope'"]),
    (["--hw", "rtx3090", "--opt", "slots=3"], ["slots", "unknown option", "slots_per_layer"]),
    (["--hw", "rtx3090", "--opt", "slots_per_layer"], ["--opt", "key=value"]),
    (["--hw", "rtx3090", "--opt", "slots_per_layer=-1"], ["slots_per_layer"]),
    (["--hw", "rtx3090", "--opt", "slots_per_layer=many"], ["slots_per_layer"]),
    (["--hw", "no-such-gpu"], ["no-such-gpu", "no such hardware profile"]),
    (["--hw", "missing/profile.yaml"], ["missing/profile.yaml", "not found"]),
    (["--hw", "t4", "--policy", "resident"], ["resident", "does not fit"]),
    (["--hw", "rtx3090", "--opt", "scope=global", "--opt", "cache_gb=500"], ["cache_gb", "does not fit"]),
    (["--hw", "rtx3090", "--batch", "0"], ["--batch"]),
    (["--hw", "rtx3090", "--json", "no/such/dir/out.json"], ["--json", "does not exist"]),
])
def test_bad_inputs(simmoe_cli, trace_file, args, needles):
    assert_clean_error(simmoe_cli("replay", trace_file, *args), *needles)


def test_model_that_cannot_fit(simmoe_cli, tmp_path):
    p = tmp_path / "big.npz"
    # DeepSeek-V3's dense part alone exceeds a T4
    tr = synth_trace("deepseek-v3", requests=1, prompt_tokens=2, decode_tokens=2, seed=0)
    write_trace(tr, p)
    assert_clean_error(simmoe_cli("replay", p, "--hw", "t4"), "does not fit", "gpu.memory_gib")


def test_missing_and_bad_trace(simmoe_cli, tmp_path):
    assert_clean_error(simmoe_cli("replay", tmp_path / "nope.npz", "--hw", "rtx3090"), "nope.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, experts=np.zeros((2, 1, 2), np.int16))
    assert_clean_error(simmoe_cli("replay", bad, "--hw", "rtx3090"), "bad.npz")


def test_nothing_half_written_on_error(simmoe_cli, trace_file, tmp_path):
    out = tmp_path / "r.json"
    res = simmoe_cli("replay", trace_file, "--hw", "t4", "--policy", "resident", "--json", out)
    assert res.returncode == 2
    assert list(tmp_path.iterdir()) == []


def test_policies_lists_builtins(simmoe_cli):
    res = simmoe_cli("policies")
    assert res.returncode == 0
    for name in ("lru", "ondemand", "resident", "cpu-experts"):
        assert name in res.stdout
