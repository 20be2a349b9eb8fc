"""Calibration: the SciPy fits recover known coefficients; the CPU calibration runs end to end in quick mode."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pytest
from conftest import assert_clean_error

from simmoe.calibrate import model_shape_key, shape_key
from simmoe.calibrate.fit import FitError, fit_copy, fit_roofline, kernel_table
from simmoe.errors import InputError

try:
    import torch
except ImportError:  # pragma: no cover - the torch extra is optional
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs the torch extra")
needs_gpu = pytest.mark.skipif(torch is None or not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ---- fits ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_copy_recovers_latency_and_bandwidth(seed):
    rng = np.random.default_rng(seed)
    sizes = np.array([2**10 * 4**k for k in range(11)], dtype=float)  # 1 KiB .. 1 GiB
    lat, gbps = 9.5, 24.7
    t = (lat + sizes / (gbps * 1e3)) * (1 + rng.normal(0, 0.02, sizes.size))
    f = fit_copy(sizes, t, name="h2d")
    assert f.gbps == pytest.approx(gbps, rel=0.03)
    assert f.latency_us == pytest.approx(lat, rel=0.08)
    assert 0.005 < f.rel_rms < 0.05  # the residual reports the 2% noise, not zero and not more
    assert f.predict(2**30) == pytest.approx(lat + 2**30 / (gbps * 1e3), rel=0.03)


def test_fit_copy_exact_without_noise():
    sizes = np.array([4096, 65536, 2**20, 2**24, 2**26], dtype=float)
    f = fit_copy(sizes, 10.0 + sizes / 25e3)
    assert f.gbps == pytest.approx(25.0, rel=1e-6)
    assert f.latency_us == pytest.approx(10.0, rel=1e-5)
    assert f.rel_rms < 1e-8


@pytest.mark.parametrize("seed", [0, 1])
def test_fit_roofline_recovers_overhead_compute_and_bandwidth(seed):
    rng = np.random.default_rng(seed)
    c, gflops, gbps = 25.0, 300e3, 2000.0  # us, GFLOP/s, GB/s (an H100-like GPU)
    tokens = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048], dtype=float)
    flops, nbytes = [], []
    for d, f_ in ((4096, 14336), (4096, 3584)):  # an expert and its quarter-width probe
        wbytes = 3 * d * f_ * 2
        flops += list(2 * 3 * d * f_ * tokens)
        nbytes += [wbytes] * tokens.size
    flops, nbytes = np.array(flops), np.array(nbytes, dtype=float)
    t = c + np.maximum(flops / (gflops * 1e3), nbytes / (gbps * 1e3))
    t *= 1 + rng.normal(0, 0.02, t.size)
    fit = fit_roofline(flops, nbytes, t, name="gpu")
    assert fit.gflops == pytest.approx(gflops, rel=0.05)
    assert fit.gbps == pytest.approx(gbps, rel=0.05)
    assert fit.overhead_us == pytest.approx(c, abs=10.0)
    assert fit.rel_rms < 0.05
    assert fit.notes == ()


def test_fit_roofline_reports_an_undetermined_rate_as_a_bound():
    tokens = np.array([64, 128, 256, 512, 1024], dtype=float)
    flops = 2 * 3 * 1024 * 2048 * tokens
    nbytes = np.full(tokens.size, 3 * 1024 * 2048 * 2.0)
    t = 5.0 + flops / 100e3  # every point compute-bound at 100 GFLOP/s
    fit = fit_roofline(flops, nbytes, t, overhead_us=5.0)
    assert fit.gflops == pytest.approx(100.0, rel=1e-3)
    assert any("lower bound" in n for n in fit.notes)
    np.testing.assert_allclose(fit.predict(flops, nbytes), t, rtol=1e-3)


@pytest.mark.parametrize("sizes,times,msg", [
    ([4096, 8192], [5.0, 6.0], "at least 3"),
    ([4096, 4096, 8192], [5.0, 5.0, 6.0], "span less than 16x"),
    ([4096, 65536, 2**20], [5.0, -1.0, 50.0], "> 0"),
    ([4096, 65536, 2**20], [5.0, np.nan, 50.0], "non-finite"),
])
def test_fit_copy_rejects_undeterminable_data(sizes, times, msg):
    with pytest.raises(FitError, match=msg):
        fit_copy(sizes, times)


def test_fit_roofline_needs_two_shapes_for_a_free_overhead():
    flops = [1e6, 2e6, 4e6, 8e6]
    with pytest.raises(FitError, match="same weight bytes"):
        fit_roofline(flops, [1e6] * 4, [10.0, 11.0, 13.0, 17.0])


def test_kernel_table_sorts_and_merges_duplicates():
    tab = kernel_table([4, 1, 4, 2, 4], [40.0, 10.0, 44.0, 20.0, 41.0])
    assert tab == {"tokens": [1, 2, 4], "us": [10.0, 20.0, 41.0]}
    with pytest.raises(FitError):
        kernel_table([0, 1], [1.0, 2.0])


def test_shape_keys():
    from simmoe.models import get_model

    assert shape_key(4096, 14336, "swiglu", "bf16") == "4096x14336xswiglu:bf16"
    assert model_shape_key(get_model("deepseek-v2-lite")) == "2048x1408xswiglu:bf16"


# ---- measuring (torch, CPU) -----------------------------------------------------------------------------------
def _tiny_spec():
    from simmoe.models.spec import ModelSpec

    return ModelSpec(name="tiny-cal", num_layers=2, moe_layers=(0, 1), num_experts=8, top_k=2, d_model=256,
                     expert_d_ff=512, dtype="fp32", expert_dtype="fp32")


@needs_torch
def test_cpu_calibration_quick_end_to_end(tmp_path):
    from simmoe.calibrate.measurements import load_measurements
    from simmoe.calibrate.profile_writer import (
        fit_from_file,
        measurements_path,
        run_calibration,
        write_profile,
    )
    from simmoe.hw.profile import load_profile, origins

    base = load_profile("rtx3090")
    spec = _tiny_spec()
    res = run_calibration([spec], device="cpu", quick=True, base=base, base_label="rtx3090", name="cpu-test",
                          threads=1, progress=False, max_tokens=16)
    p = res.profile
    assert p.source == "calibrated" and p.name == "cpu-test"
    assert p.calibration.machine["device"] == "cpu"
    assert "host of offloaded experts" in p.description
    # Only the CPU is measured: the GPU, PCIe and host sections are the base profile's, and say so.
    assert p.gpu == base.gpu and p.pcie == base.pcie and p.host == base.host
    prov = p.calibration.provenance
    for sec in ("gpu", "host", "pcie"):
        assert prov[sec].how == "borrowed" and "rtx3090" in prov[sec].source
    assert prov["cpu.expert_overhead_us"].how == "fitted" and prov["cpu.cores"].how == "measured"
    assert {how for how, _ in origins(p).values()} <= {"measured", "fitted", "borrowed"}
    key = model_shape_key(spec)
    table = p.kernels.expert_ffn_cpu[key]
    assert table.tokens == [1, 2, 4, 8, 16]
    assert all(us > 0 for us in table.us)
    assert p.cpu.cores == 1 and p.cpu.memory_gbps > 0 and p.cpu.peak_gflops > 0
    assert set(p.calibration.residuals) >= {"cpu.expert_ffn:fp32", f"cpu.expert_ffn:{key}"}
    df = res.measurements
    assert set(df["kind"]) == {"host", "membw", "gemm", "copy", "expert_ffn", "expert_probe"}
    assert set(df[df["kind"] == "host"]["name"]) == {"dispatch", "copy_issue", "sync"}
    assert (df["median_us"] > 0).all() and (df["min_us"] <= df["median_us"]).all()

    yaml_path, json_path = write_profile(p, res.raw, tmp_path / "cpu-test.yaml")
    assert json_path == measurements_path(yaml_path) == tmp_path / "cpu-test.json"
    back = load_profile(yaml_path)
    assert back.kernels.expert_ffn_cpu[key].tokens == table.tokens
    assert back.calibration.measurements == "cpu-test.json"
    assert load_measurements(json_path) == res.raw
    assert sorted(x.name for x in tmp_path.iterdir()) == ["cpu-test.json", "cpu-test.yaml"]  # no temporaries
    # measuring and fitting are split: fitting the written measurements again gives the same profile
    again = fit_from_file(json_path, name="cpu-test", base=base, base_label="rtx3090")
    assert again.profile.model_dump(exclude={"calibration"}) == p.model_dump(exclude={"calibration"})
    assert again.profile.calibration.provenance == p.calibration.provenance


@needs_torch
def test_calibrate_api_returns_profile_and_measurements():
    from simmoe.calibrate import calibrate
    from simmoe.hw.profile import load_profile

    with pytest.raises(InputError, match="base profile"):
        calibrate([_tiny_spec()], device="cpu", quick=True)
    with pytest.raises(InputError, match="--device cpu"):
        calibrate([_tiny_spec()], device="cuda", as_device=True, quick=True)
    prof, df = calibrate([_tiny_spec()], device="cpu", quick=True, base=load_profile("t4"), threads=1,
                         progress=False)
    assert prof.source == "calibrated" and len(df) > 5


@needs_torch
def test_calibrate_cli_cpu_quick(simmoe_cli, tmp_path):
    out = tmp_path / "box.yaml"
    r = simmoe_cli("calibrate", "--device", "cpu", "--base", "rtx3090", "--quick", "--max-tokens", "4",
                   "--threads", "1", "--model", "olmoe-1b-7b", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "BORROWED from rtx3090" in r.stdout and "2048x1024xswiglu:bf16" in r.stdout
    assert "borrowed (rtx3090 (datasheet)): gpu, host, pcie" in r.stdout  # listed, not silent
    from simmoe.hw.profile import load_profile

    p = load_profile(out)
    assert p.kernels.expert_ffn_cpu["2048x1024xswiglu:bf16"].tokens == [1, 2, 4]
    assert (tmp_path / "box.json").is_file()


@needs_torch
def test_calibrate_cli_cpu_as_device_with_thread_tables_and_from(simmoe_cli, tmp_path):
    """The CPU as the compute device: its own rates, memcpy as the link, dispatch as the launch cost, expert
    tables per thread count; `--from` on the written measurements reproduces the profile byte for byte."""
    from simmoe.calibrate.measurements import load_measurements
    from simmoe.hw.profile import load_profile

    out = tmp_path / "cpu-dev.yaml"
    r = simmoe_cli("calibrate", "--device", "cpu", "--as-device", "--quick", "--max-tokens", "4", "--threads",
                   "1", "2", "--model", "olmoe-1b-7b", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "at 1 threads (in the profile)" in r.stdout and "at 2 threads, us by tokens" in r.stdout
    p = load_profile(out)
    key = "2048x1024xswiglu:bf16"
    assert "(CPU as the compute device)" in p.gpu.name and p.gpu.sm_count is None
    # the device's time of a call is the call's minus its 5 ops' dispatch: the simulator adds the launches
    L = p.host.launch_overhead_us
    assert L > 0 and p.gpu.kernel_min_us == 0  # each op pays the dispatch as its launch
    dev, cpu = p.kernels.expert_ffn_gpu[key], p.kernels.expert_ffn_cpu[key]
    assert dev.tokens == cpu.tokens
    assert dev.us == pytest.approx([max(c - 5 * L, 0.01) for c in cpu.us], rel=1e-5, abs=5e-3)
    # the dense blocks of the model, each with its origin
    k = p.kernels
    assert list(k.attention_gpu) == ["attn:2048x16x16x128:bf16"] and k.attention_gpu["attn:2048x16x16x128:bf16"].context
    assert list(k.router_gpu) == ["router:2048x64x8:bf16"] and list(k.head_gpu) == ["head:2048x50304:bf16"]
    assert list(k.gather_gpu) == ["gather:2048:bf16"] and k.gather_gpu["gather:2048:bf16"].tokens == [1, 2, 4]
    assert "minus its 11 ops' dispatch" in p.calibration.provenance["kernels.attention_gpu.attn:2048x16x16x128:bf16"].source
    assert p.host.copy_issue_us > 0 and p.host.sync_us > 0
    assert set(p.pcie.copy_tables) == {"h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable"}
    assert p.pcie.copy_tables["h2d_pinned"] == p.pcie.copy_tables["h2d_pageable"]
    prov = p.calibration.provenance
    assert prov["pcie.copy_tables.h2d_pageable"].how == "measured"
    assert prov["pcie.copy_tables.h2d_pinned"].how == "assumed"
    assert prov["host.launch_overhead_us"].how == "measured" and prov["gpu.hbm_gbps"].how == "measured"
    assert prov["gpu.peak_tflops.bf16"].how == "measured"
    assert not any(o.how == "borrowed" and "schema" not in o.source for o in prov.values())  # no --base
    meas = load_measurements(tmp_path / "cpu-dev.json")
    assert meas.device == "cpu" and {row.threads for row in meas.cpu_ffn} == {1, 2}

    again = tmp_path / "again"
    again.mkdir()
    r2 = simmoe_cli("calibrate", "--from", tmp_path / "cpu-dev.json", "--as-device", "--threads", "1",
                    "--out", again / "cpu-dev.yaml")
    assert r2.returncode == 0, r2.stderr
    assert (again / "cpu-dev.yaml").read_text() == out.read_text()
    assert (again / "cpu-dev.json").read_text() == (tmp_path / "cpu-dev.json").read_text()
    # the 2-thread tables make a 2-thread profile from the same file
    r3 = simmoe_cli("calibrate", "--from", tmp_path / "cpu-dev.json", "--as-device", "--threads", "2",
                    "--out", again / "cpu-dev-2t.yaml")
    assert r3.returncode == 0, r3.stderr
    p2 = load_profile(again / "cpu-dev-2t.yaml")
    assert p2.cpu.cores == 2
    assert p2.kernels.expert_ffn_cpu[key] != p.kernels.expert_ffn_cpu[key]


@pytest.mark.parametrize("args,needles", [
    (["--device", "cpu", "--out", "{d}/x.yaml"], ["--base", "--as-device"]),
    (["--device", "cuda", "--as-device", "--out", "{d}/x.yaml"], ["--as-device", "--device cpu"]),
    (["--device", "cpu", "--as-device", "--threads", "0", "--out", "{d}/x.yaml"], ["--threads"]),
    (["--device", "cpu", "--base", "rtx3090", "--out", "{d}/x.json"], ["--out", ".yaml"]),
    (["--device", "cpu", "--base", "rtx3090", "--model", "nope", "--out", "{d}/x.yaml"], ["unknown model"]),
    (["--device", "cpu", "--base", "rtx3090", "--max-tokens", "1", "--out", "{d}/x.yaml"], ["--max-tokens"]),
    (["--device", "cpu", "--base", "rtx3090", "--out", "{d}/missing/x.yaml"], ["does not exist"]),
])
def test_calibrate_cli_bad_input(simmoe_cli, tmp_path, args, needles):
    r = simmoe_cli("calibrate", *[a.format(d=tmp_path) for a in args])
    assert_clean_error(r, *needles)
    assert list(tmp_path.iterdir()) == []


def test_calibrate_without_torch_is_one_clear_error(monkeypatch, tmp_path):
    from simmoe.cli import calibrate_cmd

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    parser = argparse.ArgumentParser()
    calibrate_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["calibrate", "--device", "cpu", "--base", "rtx3090", "--out", str(tmp_path / "x.yaml")])
    with pytest.raises(InputError, match=r"install the torch extra: pip install -e '\.\[torch\]'"):
        args.func(args)


# ---- GPU ----------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@needs_gpu
def test_gpu_calibration_quick(tmp_path):
    from simmoe.calibrate.profile_writer import run_calibration, write_profile
    from simmoe.hw.profile import load_profile

    res = run_calibration(["deepseek-v2-lite"], device="cuda", quick=True, threads=2, progress=False,
                          base=None)
    p = res.profile
    assert p.source == "calibrated"
    assert p.calibration.machine["measured"] == "host, kernel_min, membw, gemm, transfer, gpu_ffn, cpu_ffn, overlap"
    assert set(p.pcie.copy_tables) == {"h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable"}
    for nm in ("h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable"):
        assert res.fits.copies[nm].gbps > 0.5
    assert p.pcie.h2d_pinned_gbps > p.pcie.h2d_pageable_gbps * 0.8
    assert "2048x1408xswiglu:bf16" in p.kernels.expert_ffn_gpu
    assert 0 <= res.figures["gpu.copy_compute_overlap"] <= 1
    assert set(res.measurements["kind"]) >= {"copy", "host", "overlap", "expert_ffn"}
    assert p.calibration.provenance["host.launch_overhead_us"].how == "measured"
    write_profile(p, res.raw, tmp_path / "gpu.yaml")
    load_profile(tmp_path / "gpu.yaml")


@needs_torch
def test_calibration_leaves_subnormal_floats_alone():
    """Measuring flushes denormals (faster CPU kernels); the process's floating-point state is restored after."""
    from simmoe.calibrate.profile_writer import run_calibration
    from simmoe.hw.profile import load_profile

    run_calibration([_tiny_spec()], device="cpu", quick=True, base=load_profile("t4"), threads=1, progress=False,
                    max_tokens=2)
    assert np.nextafter(0.0, 1.0) > 0.0  # 5e-324 is not flushed to zero
    assert float(torch.tensor([1e-310], dtype=torch.float64)[0]) > 0.0
