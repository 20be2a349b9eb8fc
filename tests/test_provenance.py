"""Provenance in every output (replay --json, CSVs, timeline, sweep rows) and the per-request table."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simmoe import __version__, provenance
from simmoe.engine.replay import replay
from simmoe.hw.profile import load_profile
from simmoe.trace.format import read_trace, write_trace
from simmoe.trace.synth import PRESETS, synth_trace

PROV_KEYS = {"simmoe_version", "trace", "trace_sha256", "hw", "hw_sha256", "runtime", "runtime_sha256", "policy",
             "policies", "settings"}


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("t") / "mixtral.npz"
    write_trace(synth_trace("mixtral-8x7b", requests=3, prompt_tokens=8, decode_tokens=24, seed=3,
                            **PRESETS["mixtral-like"]), p)
    return p


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_file_sha256_streams_once_per_file_version(tmp_path, monkeypatch):
    p = tmp_path / "f.bin"
    p.write_bytes(b"x" * 3_000_000)
    calls = []
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda f, name: calls.append(name) or real(f, name))
    assert provenance.file_sha256(p) == sha(p)
    assert provenance.file_sha256(str(p)) == sha(p)
    assert len(calls) == 1  # cached: a sweep replaying the trace many times hashes it once
    p.write_bytes(b"y" * 10)  # changed (size and mtime): hashed again
    assert provenance.file_sha256(p) == hashlib.sha256(b"y" * 10).hexdigest()
    assert len(calls) == 2
    assert provenance.file_sha256(tmp_path / "missing") is None
    assert provenance.file_sha256("<memory>") is None


def test_profile_hash_is_of_content_not_text(tmp_path):
    src = REPO / "hwprofiles" / "rtx3090.yaml"
    a = load_profile(src)
    commented = tmp_path / "rtx3090.yaml"
    commented.write_text("# a comment changes nothing\n" + src.read_text())
    assert provenance.content_sha256(load_profile(commented)) == provenance.content_sha256(a)
    changed = a.model_copy(update={"name": a.name + "-x"})
    assert provenance.content_sha256(changed) != provenance.content_sha256(a)


def test_replay_outputs_carry_provenance(trace_file, tmp_path):
    j, steps, reqs, tl = (tmp_path / n for n in ("r.json", "steps.csv", "req.csv", "tl.json"))
    res = run_main("replay", trace_file, "--hw", "rtx3090", "--opt", "slots_per_layer=1", "--batch", "2",
                   "--json", j, "--steps-csv", steps, "--requests-csv", reqs, "--timeline", tl, "--quiet")
    assert res.returncode == 0, res.stderr
    data = json.loads(j.read_text())
    prov = data["provenance"]
    assert PROV_KEYS | {"command"} <= set(prov)
    assert prov["simmoe_version"] == __version__
    assert prov["trace_sha256"] == sha(trace_file)
    assert prov["hw"] == "rtx3090" and prov["hw_sha256"] == provenance.content_sha256(load_profile("rtx3090"))
    assert prov["runtime"] == "generic" and len(prov["runtime_sha256"]) == 64
    assert prov["policies"] == {"cache": "lru", "cache_options": {"slots_per_layer": 1}}
    assert prov["settings"]["batch"] == 2 and prov["settings"]["arrivals"] == "closed"
    assert prov["command"].startswith("simmoe replay ") and f"--json {j}" in prov["command"]
    # the CSVs: one comment line, then a table pandas reads back with comment="#"
    for path, n in ((steps, data["steps"]), (reqs, data["requests"])):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# simmoe-provenance: ")
        assert json.loads(first.split(": ", 1)[1]) == prov
        assert len(pd.read_csv(path, comment="#")) == n
        df, p = provenance.read_csv(path)
        assert p == prov and len(df) == n
    assert json.loads(tl.read_text())["otherData"] == prov


def test_provenance_distinguishes_runtime_and_options(trace_file):
    tr = read_trace(trace_file)
    a = replay(tr, "rtx3090", "lru", {"slots_per_layer": 1})
    b = replay(tr, "rtx3090", "lru", {"slots_per_layer": 1}, runtime="torch-eager")
    assert a.provenance["runtime_sha256"] != b.provenance["runtime_sha256"]
    assert a.provenance["trace_sha256"] == b.provenance["trace_sha256"] == sha(trace_file)
    assert "command" not in a.provenance  # not run from the CLI


def _check_requests(res) -> None:
    s, r = res.summary, res.requests
    assert len(r) == s["requests"]
    assert list(r["request"]) == sorted(r["request"])
    assert r["ttft_ms"].mean() == pytest.approx(s["ttft_ms"]["mean"], rel=1e-12)
    assert r["ttft_ms"].median() == pytest.approx(s["ttft_ms"]["p50"], rel=1e-12)
    # each request's TPOT is the mean of its own inter-token latencies, so weighted by their number the
    # requests give the summary's mean TPOT exactly
    assert np.average(r["tpot_ms"], weights=r["intervals"]) == pytest.approx(s["tpot_ms"]["mean"], rel=1e-12)
    assert r["intervals"].sum() == s["decode_tokens"] - int((r["prompt_tokens"] == 0).sum())
    assert r["e2e_ms"].mean() == pytest.approx(s["e2e_ms"]["mean"], rel=1e-12)
    assert r["queue_ms"].mean() == pytest.approx(s["queue_ms"]["mean"], rel=1e-12, abs=1e-12)
    assert (r["prompt_tokens"] + r["decode_tokens"]).sum() == s["tokens"]
    assert ((r["first_token_s"] >= r["admit_s"]) & (r["admit_s"] >= r["arrival_s"])).all()
    if "slo_attainment" in s:
        assert r["slo_met"].mean() == pytest.approx(s["slo_attainment"])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 3), arrivals=st.sampled_from(["closed", "poisson"]), chunk=st.sampled_from([None, 3]),
       slo=st.floats(50, 5000))
def test_requests_table_matches_summary(trace_file, batch, arrivals, chunk, slo):
    kw = {"rate": 2.0} if arrivals == "poisson" else {}
    res = replay(str(trace_file), "a100-80gb-sxm", "lru", {"slots_per_layer": 1}, batch=batch, arrivals=arrivals,
                 prefill_chunk=chunk, slo_tpot_ms=slo, **kw)
    _check_requests(res)


def test_requests_csv_through_cli_with_slo(trace_file, tmp_path):
    out, j = tmp_path / "req.csv", tmp_path / "r.json"
    res = run_main("replay", trace_file, "--hw", "a100-80gb-sxm", "--opt", "slots_per_layer=1", "--arrivals",
                   "poisson", "--rate", "1", "--slo-ttft-ms", "5000", "--slo-tpot-ms", "400", "--requests-csv", out,
                   "--json", j, "--quiet")
    assert res.returncode == 0, res.stderr
    s = json.loads(j.read_text())
    df = pd.read_csv(out, comment="#")
    assert list(df.columns) == ["request", "arrival_s", "admit_s", "first_token_s", "end_s", "ttft_ms", "tpot_ms",
                                "e2e_ms", "queue_ms", "prompt_tokens", "decode_tokens", "intervals", "slo_met"]
    assert len(df) == s["requests"] == 3
    assert df["ttft_ms"].mean() == pytest.approx(s["ttft_ms"]["mean"])
    assert np.average(df["tpot_ms"], weights=df["intervals"]) == pytest.approx(s["tpot_ms"]["mean"])
    assert df["slo_met"].mean() == pytest.approx(s["slo_attainment"])


def test_requests_csv_bad_folder(trace_file, tmp_path):
    from conftest import assert_clean_error

    assert_clean_error(run_main("replay", trace_file, "--hw", "rtx3090", "--requests-csv", tmp_path / "no" / "r.csv"),
                       "--requests-csv", "does not exist")


def test_sweep_rows_carry_provenance(trace_file, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"trace: {trace_file}\nbase: {{max_requests: 1}}\ngrid:\n  hw: [rtx3090]\n"
                    "  policy: [lru, lfu]\n  policy_options.slots_per_layer: [1]\n")
    for out in (tmp_path / "r.parquet", tmp_path / "r.csv"):
        res = run_main("sweep", spec, "--out", out, "--workers", "1", "--quiet")
        assert res.returncode == 0, res.stderr
        df = pd.read_parquet(out) if out.suffix == ".parquet" else pd.read_csv(out)
        assert (df["simmoe_version"] == __version__).all()
        assert (df["trace_sha256"] == sha(trace_file)).all()
        assert (df["hw_sha256"] == provenance.content_sha256(load_profile("rtx3090"))).all()
        assert df["runtime_sha256"].str.len().eq(64).all()
        assert [json.loads(p)["cache"] for p in df["policies"]] == ["lru", "lfu"]
        assert all(json.loads(s)["max_requests"] == 1 for s in df["settings"])


@pytest.mark.parametrize("mode", ["pipeline", "expert"])
def test_several_gpus_carry_provenance_and_requests(trace_file, mode):
    res = replay(str(trace_file), "2x-rtx3090", "lru", {"slots_per_layer": 1}, parallel=mode, batch=2)
    assert PROV_KEYS <= set(res.provenance)
    assert res.provenance["hw"] == "2x-rtx3090" and res.provenance["settings"]["parallel"] == mode
    assert res.provenance["hw_sha256"] == provenance.content_sha256(load_profile("2x-rtx3090"))
    assert res.provenance["trace_sha256"] == sha(trace_file)
    _check_requests(res)
