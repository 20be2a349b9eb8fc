"""Fitting split from measuring: `simmoe calibrate --from MEASUREMENTS.json`.

Synthetic measurements of known coefficients are recovered; the shipped H100 profile is what `--from` makes
of the shipped measurements (through the real CLI); every figure states its origin; bad measurement files
are one-line errors (exit 2) that write nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import pytest
import yaml
from conftest import CliResult, assert_clean_error

from simmoe.calibrate.assemble import fit_profile
from simmoe.calibrate.fit import FitError, call_kernels, fit_expert_calls, monotone_table
from simmoe.calibrate.measurements import dumps, load_measurements, measurements_from_dict
from simmoe.errors import InputError
from simmoe.hw.profile import builtin_dir, load_profile, origins

SHIPPED_JSON = builtin_dir() / "h100-sxm-calibrated.json"
SHIPPED_YAML = builtin_dir() / "h100-sxm-calibrated.yaml"
# sha256 of ../shared/measurements/h100-sxm-microbench.json, the H100 host's microbenchmarks (2026-11-22)
SHARED_SHA256 = "44f35a5e021ecd94f602039b2aed78ed0505f176a0a1512c3ae7586f614b996b"


def _stat(t_s: float, spread: float = 0.02) -> dict:
    return {"median": t_s, "min": t_s * (1 - spread), "max": t_s * (1 + spread)}


def _noisy(rng: np.random.Generator, t: float, sd: float) -> float:
    return float(t * (1 + rng.normal(0, sd))) if sd else float(t)


SHAPES = [(4096, 14336, "swiglu"), (2048, 1408, "swiglu"), (2048, 1024, "swiglu"), (768, 3072, "relu")]
TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]


def synthetic(seed: int = 0, sd: float = 0.02, *, lat=20.0, gbps=50.0, pg_lat=25.0, pg_gbps=10.0, launch=15.0,
              gflops=600e3, hbm=2500.0, c_cpu=40.0, cpu_gflops=1500.0, cpu_gbps=40.0) -> dict:
    """A measurements file of a GPU host whose copies, eager expert calls and CPU experts follow the models
    exactly (times in us inside, seconds in the file), with relative noise `sd`."""
    rng = np.random.default_rng(seed)
    transfer = []
    for k in range(11):
        b = 1024 * 4**k
        for pinned, (lt, bw) in ((True, (lat, gbps)), (False, (pg_lat, pg_gbps))):
            t = lt + b / (bw * 1e3)
            transfer.append({"bytes": b, "pinned": pinned, "h2d_s": _stat(_noisy(rng, t, sd) / 1e6),
                             "d2h_s": _stat(_noisy(rng, t, sd) / 1e6)})
    gpu = []
    for d, f, act in SHAPES:
        mats = 3 if act == "swiglu" else 2
        n = call_kernels(act)
        for tok in TOKENS:
            dt = max(2 * mats * d * f * tok / (gflops * 1e3), mats * d * f * 2 / (hbm * 1e3))
            t = max(launch + dt, n * launch + dt / n)
            gpu.append({"model": "", "d_model": d, "d_ff": f, "activation": act, "tokens": tok, "dtype": "bf16",
                        "time_s": _stat(_noisy(rng, t, sd) / 1e6)})
    cpu = []
    for model, (d, f) in (("mixtral-8x7b", (4096, 14336)), ("olmoe-1b-7b", (2048, 1024)),
                          ("deepseek-v2-lite", (2048, 1408))):
        for tok in (1, 4, 16, 64, 256):
            t = c_cpu + max(2 * 3 * d * f * tok / (cpu_gflops * 1e3), 3 * d * f * 2 / (cpu_gbps * 1e3))
            cpu.append({"model": model, "tokens": tok, "dtype": "bfloat16", "threads": 8,
                        "time_s": _stat(_noisy(rng, t, sd) / 1e6)})
    return {"machine": {"gpu": "Test GPU (16384 MiB)", "link": "PCIe 4.0 x16", "cpu": "Test CPU",
                        "host_memory_gib": 64, "date": "2026-01-02"},
            "method": {"transfer": "synthetic"}, "transfer": transfer, "gpu_ffn": gpu, "cpu_ffn": cpu}


# ---- fits recover known coefficients -------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_fit_expert_calls_recovers_launch_and_rates(seed):
    m = measurements_from_dict(synthetic(seed, sd=0.02), "synthetic")
    rows = m.gpu_ffn
    mats = np.array([3 if r.activation == "swiglu" else 2 for r in rows])
    f = np.array([2 * k * r.d_model * r.d_ff * r.tokens for k, r in zip(mats, rows, strict=True)], float)
    b = np.array([k * r.d_model * r.d_ff * 2 for k, r in zip(mats, rows, strict=True)], float)
    n = [call_kernels(r.activation) for r in rows]
    fit = fit_expert_calls(f, b, n, [r.time_s.median * 1e6 for r in rows])
    assert fit.launch_us == pytest.approx(15.0, rel=0.05)
    assert fit.gflops == pytest.approx(600e3, rel=0.06)
    assert fit.gbps == pytest.approx(2500.0, rel=0.06)
    assert 0.005 < fit.rel_rms < 0.05 and fit.notes == ()
    assert 0 < fit.n_gpu_bound < len(rows)  # both regimes are in the data


def test_fit_expert_calls_exact_without_noise_and_bounds_when_all_host_bound():
    m = measurements_from_dict(synthetic(sd=0.0), "synthetic")
    small = [r for r in m.gpu_ffn if r.d_model == 2048 and r.tokens <= 64]  # host-bound only
    f = [2 * 3 * r.d_model * r.d_ff * r.tokens for r in small]
    b = [3 * r.d_model * r.d_ff * 2 for r in small]
    fit = fit_expert_calls(f, b, [5] * len(small), [r.time_s.median * 1e6 for r in small])
    assert fit.launch_us == pytest.approx(15.0, rel=1e-4)
    assert fit.n_gpu_bound == 0 and any("undetermined" in n for n in fit.notes)
    with pytest.raises(FitError, match="at least 4"):
        fit_expert_calls(f[:3], b[:3], [5] * 3, [80.0] * 3)


def test_monotone_table_pools_noise_and_keeps_monotone_data():
    t = monotone_table([4096, 1024, 16384, 65536], [26.0, 25.0, 24.0, 30.0])  # sorted by size first
    assert t.size_bytes == (1024, 4096, 16384, 65536)
    assert list(t.us) == sorted(t.us) and t.us[-1] == 30.0
    assert t.us[0] == t.us[1] == t.us[2] and 24.0 < t.us[0] < 26.0 and t.rel_rms > 0
    same = monotone_table([1, 2, 3], [1.0, 2.0, 3.0])
    assert same.us == (1.0, 2.0, 3.0) and same.rel_rms == 0.0
    with pytest.raises(FitError, match="twice"):
        monotone_table([1, 1], [1.0, 2.0])


def test_profile_from_synthetic_measurements_recovers_the_coefficients():
    base = load_profile("h100-sxm")  # peaks above the synthetic GPU's achieved rates
    res = fit_profile(measurements_from_dict(synthetic(sd=0.01), "synthetic"), name="synth", base=base,
                      base_label="h100-sxm")
    p = res.profile
    pc = p.pcie
    assert pc.h2d_pinned_gbps == pytest.approx(50.0, rel=0.03) and pc.d2h_pinned_gbps == pytest.approx(50.0, rel=0.03)
    assert pc.h2d_pageable_gbps == pytest.approx(10.0, rel=0.03)
    assert pc.latency_us == pytest.approx(20.0, rel=0.08)
    assert p.host.launch_overhead_us == pytest.approx(15.0, rel=0.05)
    g = p.gpu
    assert g.matmul_efficiency * g.peak_tflops["bf16"] == pytest.approx(600.0, rel=0.06)
    assert g.membw_efficiency * g.hbm_gbps == pytest.approx(2500.0, rel=0.06)
    assert g.name == "Test GPU" and g.memory_gib == 16.0 and pc.link == "PCIe 4.0 x16"
    c = p.cpu
    assert c.cores == 8 and c.memory_gib == 64
    assert c.expert_overhead_us == pytest.approx(40.0, rel=0.2)
    assert c.peak_gflops * c.matmul_efficiency == pytest.approx(1500.0, rel=0.08)
    assert c.memory_gbps * c.membw_efficiency == pytest.approx(40.0, rel=0.08)
    # tables: copies exact at the (noisy, monotone) medians; GPU times = call minus launch where GPU-bound
    assert set(pc.copy_tables) == {"h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable"}
    big = p.kernels.expert_ffn_gpu["4096x14336xswiglu:bf16"]
    d_true = 3 * 4096 * 14336 * 2 / 2500e3  # GPU time of one call at 1 token, us
    assert big.us[0] == pytest.approx(d_true, rel=0.04)
    # what the profile could not get from the measurements is borrowed from h100-sxm, and says so
    prov = p.calibration.provenance
    assert prov["gpu.hbm_gbps"].how == "borrowed" and prov["gpu.hbm_gbps"].source == "h100-sxm (datasheet)"
    assert prov["host.launch_overhead_us"].how == "fitted" and prov["pcie.copy_tables.h2d_pinned"].how == "measured"
    assert all(how in ("measured", "fitted", "borrowed") for how, _ in origins(p).values())
    # a peak below the achieved rate is kept (datasheet), the efficiency clipped to 1 and the note made
    low = fit_profile(measurements_from_dict(synthetic(sd=0.01), "synthetic"), name="synth",
                      base=load_profile("rtx3090"), base_label="rtx3090").profile
    assert low.gpu.peak_tflops["bf16"] == 71.0 and low.gpu.matmul_efficiency == 1.0
    assert "clipped to 1" in low.calibration.provenance["gpu.matmul_efficiency"].source
    assert "clipped to 1" in low.description


def test_gpu_only_timing_and_measured_peaks_need_no_base():
    """A file as `simmoe calibrate` writes it on a GPU (GPU-only expert times, host rows, GEMM and HBM rows):
    nothing required is missing, so no --base; schema defaults fill the rest, marked as borrowed from it."""
    d = synthetic(sd=0.0)
    for r in d["gpu_ffn"]:  # GPU time only: no launch gaps
        mats = 3 if r["activation"] == "swiglu" else 2
        dt = max(2 * mats * r["d_model"] * r["d_ff"] * r["tokens"] / 600e6,
                 mats * r["d_model"] * r["d_ff"] * 2 / 2500e3)
        r["time_s"] = _stat(dt / 1e6)
    d.update(gpu_ffn_timing="gpu", host=[{"device": "cuda", "op": "launch", "time_s": _stat(9e-6)}],
             membw=[{"device": "cuda", "bytes": 2 * 2**30, "time_s": _stat(2 * 2**30 / 3000e9)},
                    {"device": "cpu", "bytes": 2**30, "time_s": _stat(2**30 / 80e9)}],
             gemm=[{"device": "cuda", "n": 8192, "dtype": "bf16", "time_s": _stat(2 * 8192**3 / 800e12)},
                   {"device": "cpu", "n": 2048, "dtype": "bf16", "time_s": _stat(2 * 2048**3 / 3000e9)}])
    res = fit_profile(measurements_from_dict(d, "synthetic"), name="synth")
    p = res.profile
    assert p.gpu.peak_tflops == {"bf16": 800.0} and p.gpu.hbm_gbps == 3000.0
    assert p.gpu.matmul_efficiency == pytest.approx(0.75, rel=0.02)
    assert p.gpu.membw_efficiency == pytest.approx(2500 / 3000, rel=0.02)
    assert p.host.launch_overhead_us == 9.0
    t = p.kernels.expert_ffn_gpu["2048x1024xswiglu:bf16"]
    assert t.us[0] == pytest.approx(3 * 2048 * 1024 * 2 / 2500e3, rel=1e-3)  # the measured medians
    prov = p.calibration.provenance
    assert prov["host.launch_overhead_us"].how == "measured" and prov["gpu.peak_tflops.bf16"].how == "measured"
    assert prov["kernels.expert_ffn_gpu.2048x1024xswiglu:bf16"].how == "measured"
    assert prov["host.sync_us"].how == "borrowed" and "schema default" in prov["host.sync_us"].source


def test_without_base_what_cannot_be_measured_is_an_error_naming_it():
    with pytest.raises(InputError) as ei:
        fit_profile(measurements_from_dict(synthetic(sd=0.0), "m.json"), name="x", source="m.json")
    assert ei.value.source == "--base"
    assert "gpu.peak_tflops" in ei.value.message and "gpu.hbm_gbps" in ei.value.message


# ---- the shipped H100 profile -----------------------------------------------------------------------------
def test_shipped_measurements_are_the_h100_hosts_file():
    assert hashlib.sha256(SHIPPED_JSON.read_bytes()).hexdigest() == SHARED_SHA256
    m = load_measurements(SHIPPED_JSON)
    assert dumps(m) == SHIPPED_JSON.read_text()  # read and written back unchanged
    assert len(m.transfer) == 22 and len(m.gpu_ffn) == 60 and len(m.cpu_ffn) == 24


def test_from_reproduces_the_shipped_profile(simmoe_cli, tmp_path):
    out = tmp_path / "h100-sxm-calibrated.yaml"
    r = simmoe_cli("calibrate", "--from", SHIPPED_JSON, "--base", "h100-sxm", "--out", out)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == SHIPPED_YAML.read_text()
    assert (tmp_path / "h100-sxm-calibrated.json").read_bytes() == SHIPPED_JSON.read_bytes()
    assert "borrowed (h100-sxm (datasheet)): gpu.reserved_gib, gpu.hbm_gbps" in r.stdout


def test_shipped_profile_expresses_what_the_measurements_show():
    from simmoe.engine.costs import CostModel
    from simmoe.models import get_model

    p = load_profile("h100-sxm-calibrated")
    assert p.source == "calibrated" and p.calibration.measurements == "h100-sxm-calibrated.json"
    c = CostModel(get_model("mixtral-8x7b"), p)
    # pageable bandwidth depends on the size: ~11.5 GB/s at 16 MiB, ~6.7 GB/s from 64 MiB (H2D)
    assert 2**24 / c.h2d_us(2**24, pinned=False) / 1e3 == pytest.approx(11.54, abs=0.05)
    assert 2**26 / c.h2d_us(2**26, pinned=False) / 1e3 == pytest.approx(6.76, abs=0.05)
    # pinned reaches ~54.7 GB/s at 1 GiB over a ~23-25 us floor
    assert 2**30 / c.h2d_us(2**30) / 1e3 == pytest.approx(54.7, abs=0.1)
    assert 22 < c.h2d_us(1024) < 26
    # a whole Mixtral expert (352 MB) pinned: the table's 6.43 ms vs 6.51 ms measured on a second stream
    assert c.h2d_us(c.expert_bytes) == pytest.approx(6509.2, rel=0.02)
    # small experts are host-bound: per call ~ kernels x launch (~80-100 us in the benchmark), the GPU's
    # own time a few us
    small = CostModel(get_model("olmoe-1b-7b"), p)
    assert small.expert_gpu_us(1) < 10
    assert 75 < 5 * p.host.launch_overhead_us < 100
    prov = p.calibration.provenance
    assert prov["host.launch_overhead_us"].how == "fitted"
    for k in ("gpu.hbm_gbps", "gpu.peak_tflops.bf16", "gpu.kernel_min_us", "host.sync_us", "pcie.copy_engines"):
        assert prov[k].how == "borrowed" and prov[k].source == "h100-sxm (datasheet)", k
    # held-out checks: the copy table vs the overlap test's copy, the GPU table vs 20 back-to-back calls
    res = p.calibration.residuals
    assert res["check:pcie.copy_tables.h2d_pinned@overlap.copy_s"] < 0.03
    assert res["check:kernels.expert_ffn_gpu@overlap.compute20_s"] < 0.05


# ---- bad measurement files --------------------------------------------------------------------------------
@pytest.fixture
def cli_inproc(capsys):
    """The `simmoe` entry point called in this process (the many bad-input cases stay fast); the golden and
    `hw show` tests above and below go through the real console script."""
    from simmoe.cli.main import main

    def run(*args) -> CliResult:
        rc = main([str(a) for a in args])
        out = capsys.readouterr()
        return CliResult(rc, out.out, out.err)

    return run


def _h100() -> dict:
    return json.loads(SHIPPED_JSON.read_text())


@pytest.mark.parametrize("edit,field,needle", [
    (lambda d: ("raw", "{not json"), "line 1", "not valid JSON"),
    (lambda d: ("raw", "[1, 2]"), None, "JSON object"),
    (lambda d: ("raw", json.dumps(d).replace('"median": 2.499200031161308e-05', '"median": NaN', 1)), None, "NaN"),
    (lambda d: d.update(extra=1), "extra", "unknown key"),
    (lambda d: d["machine"].pop("date"), "machine.date", "missing"),
    (lambda d: d.pop("machine"), "machine", "Field required"),
    (lambda d: d["transfer"][0]["h2d_s"].update(min=1.0), "transfer[0].h2d_s", "min <= median <= max"),
    (lambda d: d["transfer"][0].update(bytes=True), "transfer[0].bytes", "valid integer"),
    (lambda d: d["transfer"][0].update(bytes="1024"), "transfer[0].bytes", "valid integer"),
    (lambda d: d["transfer"][0]["h2d_s"].update(median=-1.0), "transfer[0].h2d_s.median", "greater than 0"),
    (lambda d: d["transfer"][0].pop("pinned"), "transfer[0].pinned", "Field required"),
    (lambda d: d["transfer"].append(copy.deepcopy(d["transfer"][0])), None, "transfer[22] repeats"),
    (lambda d: d["gpu_ffn"][0].update(activation="swish"), "gpu_ffn[0].activation", "swiglu"),
    (lambda d: d["gpu_ffn"][0].update(dtype="bf61"), "gpu_ffn[0].dtype", "bf16"),
    (lambda d: d["cpu_ffn"][0].update(model="no-such-model"), "cpu_ffn[0].model", "unknown model"),
    (lambda d: d["cpu_ffn"][0].update(d_model=4096), "cpu_ffn[0]", "all of d_model"),
    (lambda d: d["overlap"].pop("compute20_s"), "overlap", "exactly one of"),
    (lambda d: d.update(device="cpu"), None, "no gpu_ffn"),
    (lambda d: d.update(transfer=[], gpu_ffn=[], cpu_ffn=[]) or d.pop("overlap"), None, "nothing to fit"),
])
def test_bad_measurement_files_are_one_line_errors(cli_inproc, tmp_path, edit, field, needle):
    d = _h100()
    out = edit(d)  # edits the file's data in place, or returns ("raw", text) to write instead
    path = tmp_path / "m.json"
    path.write_text(out[1] if isinstance(out, tuple) and out[0] == "raw" else json.dumps(d))
    r = cli_inproc("calibrate", "--from", path, "--base", "h100-sxm", "--out", tmp_path / "p.yaml")
    assert_clean_error(r, str(path), needle, *([field] if field else []))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.json"]  # nothing written


@pytest.mark.parametrize("args,needles", [
    (["--from", "{d}/missing.json", "--base", "h100-sxm"], ["missing.json", "not found"]),
    (["--from", "{d}", "--base", "h100-sxm"], ["folder"]),
    (["--from", "{j}"], ["--base", "gpu.peak_tflops", "gpu.hbm_gbps"]),  # borrowing is never silent
    (["--from", "{j}", "--base", "h100-sxm", "--quick"], ["--quick", "measures nothing"]),
    (["--from", "{j}", "--base", "h100-sxm", "--device", "cuda"], ["--device"]),
    (["--from", "{j}", "--base", "h100-sxm", "--model", "mixtral-8x7b"], ["--model"]),
    (["--from", "{j}", "--base", "h100-sxm", "--max-tokens", "8"], ["--max-tokens"]),
    (["--from", "{j}", "--base", "h100-sxm", "--as-device"], ["--as-device", "cuda"]),
    (["--from", "{j}", "--base", "h100-sxm", "--threads", "8"], ["--threads", "16"]),
    (["--from", "{j}", "--base", "h100-sxm", "--threads", "8", "16"], ["--threads", "one thread count"]),
    (["--from", "{j}", "--base", "no-such-profile"], ["no-such-profile", "no such hardware profile"]),
])
def test_from_bad_options(cli_inproc, tmp_path, args, needles):
    out = tmp_path / "out"
    out.mkdir()
    r = cli_inproc("calibrate", *[a.format(d=tmp_path, j=SHIPPED_JSON) for a in args], "--out", out / "p.yaml")
    assert_clean_error(r, *needles)
    assert list(out.iterdir()) == []


def test_unfittable_measurements_are_one_line_errors(simmoe_cli, tmp_path):  # the real script, once
    d = _h100()
    d["cpu_ffn"] = [r for r in d["cpu_ffn"] if r["model"] == "olmoe-1b-7b" and r["dtype"] == "bfloat16"]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(d))
    r = simmoe_cli("calibrate", "--from", path, "--base", "h100-sxm", "--out", tmp_path / "p.yaml")
    assert_clean_error(r, str(path), "cannot be fitted", "same weight bytes")  # one CPU shape, no probe


# ---- provenance in the schema and in `simmoe hw show` -------------------------------------------------------
def _shipped_dict() -> dict:
    return yaml.safe_load(SHIPPED_YAML.read_text())


def test_provenance_is_validated(tmp_path):
    from simmoe.hw.profile import profile_from_dict

    d = _shipped_dict()
    d["calibration"]["provenance"].pop("gpu.hbm_gbps")
    with pytest.raises(InputError, match=r"provenance: no origin stated for gpu\.hbm_gbps") as ei:
        profile_from_dict(d, "p.yaml")
    assert ei.value.field == "calibration"
    d = _shipped_dict()
    d["calibration"]["provenance"]["gpu.hbm_gbs"] = {"how": "measured", "source": "x"}
    with pytest.raises(InputError, match="names no figure of this profile; did you mean 'gpu.hbm_gbps'"):
        profile_from_dict(d, "p.yaml")
    d = _shipped_dict()
    d["calibration"]["provenance"]["gpu.hbm_gbps"]["how"] = "guessed"
    with pytest.raises(InputError) as ei:
        profile_from_dict(d, "p.yaml")
    assert ei.value.field == "calibration.provenance.gpu.hbm_gbps.how"
    d = _shipped_dict()
    d["calibration"]["provenance"]["gpu.hbm_gbps"]["source"] = ""
    with pytest.raises(InputError, match="at least 1 character"):
        profile_from_dict(d, "p.yaml")
    # a whole section may be covered by one entry
    d = _shipped_dict()
    d["calibration"]["provenance"] = {k: v for k, v in d["calibration"]["provenance"].items()
                                      if not k.startswith("host.")}
    d["calibration"]["provenance"]["host"] = {"how": "borrowed", "source": "test"}
    assert origins(profile_from_dict(d, "p.yaml"))["host.sync_us"] == ("borrowed", "test")


def test_hw_show_prints_the_origins(simmoe_cli):
    r = simmoe_cli("hw", "show", "h100-sxm-calibrated")
    assert r.returncode == 0, r.stderr
    head = [ln for ln in r.stdout.splitlines() if ln.startswith("#")]
    assert any("figures by origin" in ln and "measured" in ln and "fitted" in ln and "borrowed" in ln for ln in head)
    assert any(ln.startswith("#   borrowed (h100-sxm (datasheet)):") and "gpu.hbm_gbps" in ln for ln in head)
    assert yaml.safe_load(r.stdout)["calibration"]["provenance"]["pcie.copy_tables.h2d_pinned"]["how"] == "measured"
    assert not any("figures by origin" in ln for ln in simmoe_cli("hw", "show", "h100-sxm").stdout.splitlines())


def test_rows_of_a_gpu_calibration_make_a_file_and_a_profile_without_base():
    """The rows `measure.plan_gpu` + `plan_cpu` produce on a GPU machine (built here by hand: no GPU in CI)
    become a measurements file and a profile with nothing borrowed but the schema's defaults."""
    import pandas as pd

    from simmoe.calibrate.measure import COLUMNS, _row
    from simmoe.calibrate.measurements import from_frame

    rows = [_row("host", "cuda", "launch", [6.0, 6.5, 7.0]), _row("host", "cuda", "copy_issue", [5.0]),
            _row("host", "cuda", "sync", [12.0]), _row("kernel_min", "cuda", "add1", [2.5, 2.6]),
            _row("host", "cpu", "dispatch", [3.0]), _row("host", "cpu", "copy_issue", [1.0]),
            _row("host", "cpu", "sync", [0.5]),
            _row("membw", "cuda", "copy", [2 * 2**28 / 3000e3], size_bytes=2**28, nbytes=2**29),
            _row("membw", "cpu", "copy", [2 * 2**28 / 60e3], size_bytes=2**28, nbytes=2**29),
            _row("gemm", "cuda", "matmul8192", [2 * 8192**3 / 800e6], dtype="bf16", tokens=8192,
                 flops=2.0 * 8192**3),
            _row("gemm", "cpu", "matmul2048", [2 * 2048**3 / 2000e3], dtype="bf16", tokens=2048,
                 flops=2.0 * 2048**3)]
    for name, (lat, bw) in {"h2d_pinned": (10, 50), "d2h_pinned": (10, 50), "h2d_pageable": (15, 10),
                            "d2h_pageable": (15, 12)}.items():
        rows += [_row("copy", "cuda", name, [lat + b / (bw * 1e3)], size_bytes=b, nbytes=b)
                 for b in (4096, 2**20, 2**24, 2**26)]
    for kind, d_ff, tokens in (("expert_ffn", 1408, (1, 4, 16, 64, 256)), ("expert_probe", 352, (1, 2))):
        for dev, rate_f, rate_b, c, threads in (("cuda", 600e3, 2500.0, 0.0, 0), ("cpu", 1500.0, 40.0, 30.0, 4)):
            for n in tokens:
                fl, wb = 2 * 3 * 2048 * d_ff * n, 3 * 2048 * d_ff * 2
                rows.append(_row(kind, dev, f"2048x{d_ff}xswiglu:bf16", [c + max(fl / (rate_f * 1e3), wb / (rate_b * 1e3))],
                                 dtype="bf16", tokens=n, flops=fl, nbytes=wb, threads=threads,
                                 model="deepseek-v2-lite"))
    rows += [_row("overlap", "cuda", "copy_alone", [1300.0], size_bytes=2**26),
             _row("overlap", "cuda", "compute_alone", [1000.0], tokens=40),
             _row("overlap", "cuda", "overlapped", [1350.0], size_bytes=2**26, tokens=40),
             _row("overlap", "cuda", "d2h_alone", [1300.0], size_bytes=2**26),
             _row("overlap", "cuda", "h2d_d2h_overlapped", [1400.0], size_bytes=2**26)]
    df = pd.DataFrame(rows, columns=COLUMNS)
    meas = from_frame(df, device="cuda", machine={"gpu": "Test GPU", "gpu_memory_gib": "24.00", "gpu_sm_count": "82",
                                                 "pcie_link": "PCIe 4.0 x16", "cpu": "Test CPU", "memory_gib": "64.0",
                                                 "date": "2026-01-01T00:00:00+00:00"}, method={})
    assert meas.gpu_ffn_timing == "gpu" and len(meas.transfer) == 8 and meas.overlap.compute_s is not None
    assert measurements_from_dict(json.loads(dumps(meas)), "round trip") == meas
    p = fit_profile(meas, name="gpu-box").profile
    assert p.gpu.name == "Test GPU" and p.gpu.memory_gib == 24.0 and p.gpu.sm_count == 82
    assert p.gpu.peak_tflops == {"bf16": 800.0} and p.gpu.hbm_gbps == 3000.0
    assert p.gpu.kernel_min_us == 2.55 and p.host.launch_overhead_us == 6.5 and p.host.sync_us == 12.0
    assert p.pcie.copy_engines == 2  # H2D and D2H together: 1400 us for two 1300 us copies
    assert p.cpu.cores == 4 and p.cpu.expert_overhead_us == pytest.approx(30.0, rel=0.05)
    assert p.kernels.expert_ffn_gpu["2048x1408xswiglu:bf16"].tokens == [1, 4, 16, 64, 256]
    assert "2048x352xswiglu:bf16" not in p.kernels.expert_ffn_gpu  # probes feed the fit, not the tables
    prov = p.calibration.provenance
    assert prov["pcie.copy_engines"].how == "measured" and prov["gpu.kernel_min_us"].how == "measured"
    borrowed = {k for k, o in prov.items() if o.how == "borrowed"}
    assert all(prov[k].source.startswith("schema default") for k in borrowed)
    assert "gpu.reserved_gib" in borrowed and "host.native_launch_us" in borrowed
