"""Run a calibration, turn measurements + fits into an `HwProfile`, write it as YAML with a CSV beside it.

What each profile field becomes (device "cuda"; with device "cpu" only the CPU part and expert_ffn_cpu
are measured and everything else is copied from the base profile):

    pcie.{h2d,d2h}_{pinned,pageable}_gbps   copy fit: t = latency + bytes / bandwidth, per direction/memory
    pcie.latency_us                         latency of the pinned H2D fit (the expert-fetch path)
    pcie.copy_engines                       2 when an H2D and a D2H copy overlap by more than half, else 1
    pcie.link                               nvidia-smi's current link
    host.launch_overhead_us / copy_issue_us host time of N eager launches / async copies without sync, / N
    host.sync_us                            a .item() read-back
    gpu.name, memory_gib, sm_count          torch.cuda device properties
    gpu.peak_tflops, hbm_gbps               base profile's datasheet figures; without a base, measured
                                            (a large GEMM; a device-to-device copy)
    gpu.matmul_efficiency, membw_efficiency roofline fit of the GPU expert FFN over token counts and shapes:
                                            achieved rate / peak (a peak below the fit is raised to it)
    gpu.kernel_min_us                       GPU time of a 1-element add
    cpu.name, cores, memory_gib             /proc (cores = threads used)
    cpu.memory_gbps                         a large tensor copy (bytes read + written / time)
    cpu.peak_gflops                         a large square matmul at the experts' precision
    cpu.matmul_efficiency, membw_efficiency roofline fit of the CPU expert FFN, as for the GPU
    cpu.expert_overhead_us                  that fit's per-call overhead
    kernels.expert_ffn_{gpu,cpu}            measured medians per token count, keyed by shape_key()
    calibration.residuals                   relative RMS residual of each fit (and per expert shape)
"""

from __future__ import annotations

import datetime as _dt
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simmoe.calibrate import compute_dtype, model_shape_key
from simmoe.calibrate.fit import CopyFit, RooflineFit, fit_copy, fit_roofline, kernel_table
from simmoe.calibrate.machine import machine_facts, memory_gib, physical_cores
from simmoe.errors import InputError
from simmoe.fileio import atomic_path
from simmoe.hw.profile import HwProfile, dump_profile, load_profile, profile_from_dict
from simmoe.models import get_model
from simmoe.models.spec import ModelSpec

COPY_NAMES = ("h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable")
DEV_PREFIX = {"cuda": "gpu", "cpu": "cpu"}


@dataclass
class Fits:
    copies: dict[str, CopyFit] = field(default_factory=dict)  # h2d_pinned ... -> fit
    experts: dict[tuple[str, str], RooflineFit] = field(default_factory=dict)  # (device, dtype) -> fit
    residuals: dict[str, float] = field(default_factory=dict)


@dataclass
class CalibrationResult:
    profile: HwProfile
    measurements: pd.DataFrame
    fits: Fits
    figures: dict[str, float]  # derived headline figures (see derive_figures)
    device: str
    models: list[str]


def _sig(x: float, digits: int = 4) -> float:
    """Round to `digits` significant digits (readable YAML)."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, max(0, digits - 1 - int(math.floor(math.log10(abs(x))))))


def _frac(x: float) -> float:
    return float(min(1.0, max(1e-4, _sig(x))))


# ---- fitting ----------------------------------------------------------------------------------------------
def fit_measurements(df: pd.DataFrame) -> Fits:
    """Copy fits per direction/memory kind and a roofline fit per (device, expert dtype)."""
    fits = Fits()
    cp = df[df["kind"] == "copy"]
    for name in COPY_NAMES:
        sub = cp[cp["name"] == name]
        if len(sub):
            f = fit_copy(sub["size_bytes"], sub["median_us"], name=f"pcie.{name}")
            fits.copies[name] = f
            fits.residuals[f.name] = _sig(f.rel_rms, 3)
    ex = df[df["kind"].isin(["expert_ffn", "expert_probe"])]
    for (device, dtype), sub in ex.groupby(["device", "dtype"], sort=False):
        name = f"{DEV_PREFIX[device]}.expert_ffn:{dtype}"
        f = fit_roofline(sub["flops"], sub["bytes"], sub["median_us"], name=name)
        fits.experts[(device, dtype)] = f
        fits.residuals[name] = _sig(f.rel_rms, 3)
        main = sub[sub["kind"] == "expert_ffn"]
        for key, s in main.groupby("name", sort=False):
            pred = f.predict(s["flops"].to_numpy(), s["bytes"].to_numpy())
            r = float(np.sqrt(np.mean((pred / s["median_us"].to_numpy() - 1) ** 2)))
            fits.residuals[f"{DEV_PREFIX[device]}.expert_ffn:{key}"] = _sig(r, 3)
    return fits


def _median(df: pd.DataFrame, kind: str, device: str, name: str | None = None) -> pd.Series | None:
    sub = df[(df["kind"] == kind) & (df["device"] == device)]
    if name is not None:
        sub = sub[sub["name"] == name]
    return sub.iloc[0] if len(sub) else None


def derive_figures(df: pd.DataFrame) -> dict[str, float]:
    """Headline figures from the raw rows: host costs, bandwidths, GEMM rates, overlap fractions."""
    fig: dict[str, float] = {}
    for dev in ("cpu", "cuda"):
        p = DEV_PREFIX[dev]
        for name in ("dispatch", "launch", "copy_issue", "sync"):
            r = _median(df, "host", dev, name)
            if r is not None:
                fig[f"{p}.{name}_us"] = float(r["median_us"])
        r = _median(df, "membw", dev)
        if r is not None:
            fig[f"{p}.membw_gbps"] = float(r["bytes"] / (r["median_us"] * 1e3))
        for _, r in df[(df["kind"] == "gemm") & (df["device"] == dev)].iterrows():
            fig[f"{p}.gemm_gflops:{r['dtype']}"] = float(r["flops"] / (r["median_us"] * 1e3))
    r = _median(df, "kernel_min", "cuda")
    if r is not None:
        fig["gpu.kernel_min_us"] = float(r["median_us"])
    ov = {r["name"]: float(r["median_us"]) for _, r in df[df["kind"] == "overlap"].iterrows()}
    if {"copy_alone", "compute_alone", "serial", "overlapped"} <= set(ov):
        hidden = ov["serial"] - ov["overlapped"]
        fig["gpu.copy_compute_overlap"] = float(np.clip(hidden / min(ov["copy_alone"], ov["compute_alone"]), 0, 1))
    if {"h2d_alone", "d2h_alone", "h2d_d2h_overlapped"} <= set(ov):
        hidden = ov["h2d_alone"] + ov["d2h_alone"] - ov["h2d_d2h_overlapped"]
        fig["pcie.h2d_d2h_overlap"] = float(np.clip(hidden / min(ov["h2d_alone"], ov["d2h_alone"]), 0, 1))
    return fig


# ---- assembling the profile -------------------------------------------------------------------------------
def _peak_key(peaks: dict[str, float], dtype: str) -> str:
    # Same fallback as HwProfile.peak_flops: the dtype, then bf16, then fp16, then the largest.
    for k in (dtype, "bf16", "fp16"):
        if k in peaks:
            return k
    return max(peaks, key=peaks.__getitem__)


def _tables(df: pd.DataFrame, device: str) -> dict[str, dict[str, list]]:
    sub = df[(df["kind"] == "expert_ffn") & (df["device"] == device)]
    return {key: kernel_table(s["tokens"], s["median_us"]) for key, s in sub.groupby("name", sort=False)}


def build_profile(
    *,
    name: str,
    device: str,
    df: pd.DataFrame,
    fits: Fits,
    figures: dict[str, float],
    facts: dict[str, str],
    models: Sequence[ModelSpec],
    threads: int,
    base: HwProfile | None = None,
    base_label: str = "",
    quick: bool = False,
    date: str | None = None,
    gpu_props: dict[str, Any] | None = None,
) -> HwProfile:
    """The calibrated profile: measured parts from `df`/`fits`, the rest from `base`.

    `gpu_props` (device cuda): {"name", "memory_gib", "sm_count"} of the measured GPU (measure.gpu_properties).
    """
    if device == "cpu" and base is None:
        raise InputError("--base", None, "a CPU-only calibration needs a base profile for the GPU, PCIe and "
                         "host figures (e.g. --base rtx3090)")
    date = date or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    d: dict[str, Any] = base.model_dump() if base is not None else {}
    base_label = base_label or (base.name if base is not None else "")
    primary = compute_dtype(models[0])
    notes: list[str] = []

    # CPU: always measured.
    cfit = fits.experts[("cpu", primary)]
    peak = max(figures.get(f"cpu.gemm_gflops:{primary}", cfit.gflops), cfit.gflops)
    membw = max(figures.get("cpu.membw_gbps", cfit.gbps), cfit.gbps)
    d["cpu"] = {
        "name": facts.get("cpu", "unknown CPU"),
        "cores": int(threads),
        "memory_gib": _sig(memory_gib()),
        "memory_gbps": _sig(membw),
        "peak_gflops": _sig(peak),
        "matmul_efficiency": _frac(cfit.gflops / peak),
        "membw_efficiency": _frac(cfit.gbps / membw),
        "expert_overhead_us": _sig(cfit.overhead_us),
    }
    notes += [f"CPU fit: {n}" for n in cfit.notes]
    kernels = dict(d.get("kernels") or {})
    kernels["expert_ffn_cpu"] = _tables(df, "cpu")

    if device == "cuda":
        if not gpu_props:
            raise ValueError("build_profile: device cuda needs gpu_props")
        gfit = fits.experts[("cuda", primary)]
        g = dict(d.get("gpu") or {})
        if base is None:
            peaks = {k.split(":", 1)[1]: _sig(v / 1e3) for k, v in figures.items() if k.startswith("gpu.gemm_gflops:")}
            hbm = figures["gpu.membw_gbps"]
        else:
            peaks = dict(g["peak_tflops"])
            hbm = g["hbm_gbps"]
        pk = _peak_key(peaks, primary) if peaks else primary
        peaks[pk] = _sig(max(peaks.get(pk, 0.0), gfit.gflops / 1e3))
        hbm = max(hbm, gfit.gbps)
        g.update({
            "name": str(gpu_props["name"]),
            "memory_gib": _sig(gpu_props["memory_gib"]),
            "hbm_gbps": _sig(hbm),
            "peak_tflops": peaks,
            "matmul_efficiency": _frac(gfit.gflops / 1e3 / peaks[pk]),
            "membw_efficiency": _frac(gfit.gbps / hbm),
            "kernel_min_us": _sig(figures.get("gpu.kernel_min_us", g.get("kernel_min_us", 3.0))),
            "sm_count": int(gpu_props["sm_count"]) if gpu_props.get("sm_count") else None,
        })
        if g.get("reserved_gib", 0.75) >= g["memory_gib"]:
            g["reserved_gib"] = _sig(0.1 * g["memory_gib"])
        d["gpu"] = g
        notes += [f"GPU fit: {n}" for n in gfit.notes]
        h = dict(d.get("host") or {})
        for fld, key in (("launch_overhead_us", "gpu.launch_us"), ("copy_issue_us", "gpu.copy_issue_us"),
                         ("sync_us", "gpu.sync_us")):
            if key in figures:
                h[fld] = _sig(figures[key])
        d["host"] = h
        pc = dict(d.get("pcie") or {})
        for nm, f in fits.copies.items():
            pc[f"{nm}_gbps"] = _sig(f.gbps)
        if "h2d_pinned" in fits.copies:
            pc["latency_us"] = _sig(fits.copies["h2d_pinned"].latency_us)
        if "pcie.h2d_d2h_overlap" in figures:
            pc["copy_engines"] = 2 if figures["pcie.h2d_d2h_overlap"] > 0.5 else 1
        if facts.get("pcie_link"):
            pc["link"] = facts["pcie_link"]
        d["pcie"] = pc
        kernels["expert_ffn_gpu"] = _tables(df, "cuda")

    d["kernels"] = kernels
    d["name"] = name
    d["source"] = "calibrated"
    d.setdefault("references", [])
    measured = "gpu, pcie, host, cpu" if device == "cuda" else "cpu"
    facts = dict(facts)
    facts.update({"measured": measured, "mode": "quick" if quick else "full", "threads": str(threads),
                  "expert_dtype_timed": primary})
    if base is not None:
        facts["base_profile"] = f"{base_label} ({base.source})"
        facts["from_base"] = ("gpu.peak_tflops, gpu.hbm_gbps, host.kernels_per_*, nvme"
                              if device == "cuda" else "gpu, pcie, host, nvme, kernels.expert_ffn_gpu")
    shapes = ", ".join(dict.fromkeys(model_shape_key(m) for m in models))
    if device == "cpu":
        desc = (f"CPU-ONLY calibration (no GPU on this machine) on {facts.get('cpu', 'CPU')}, {threads} threads, "
                f"{date}: measured the CPU (expert FFN for {shapes}; memory bandwidth; GEMM peak; per-call "
                f"overhead). GPU, PCIe and host figures are NOT measured: copied from base profile "
                f"{base_label!r} ({base.source if base else ''}).")
    else:
        desc = (f"Calibrated on {facts.get('gpu', 'GPU')} + {facts.get('cpu', 'CPU')}, {date}: measured GPU "
                f"(expert FFN for {shapes}; GEMM; HBM; kernel minimum), PCIe copies, host launch costs and the "
                f"CPU ({threads} threads).")
        desc += (f" GPU peaks are datasheet figures from base profile {base_label!r}; efficiencies are measured "
                 f"against them." if base is not None else
                 " No base profile: GPU peak FLOP/s and HBM bandwidth are measured achieved values.")
        if "gpu.copy_compute_overlap" in figures:
            desc += f" Copy/compute overlap measured at {figures['gpu.copy_compute_overlap']:.0%}."
    if quick:
        desc += " Quick mode: few sizes and token counts (1..64); use a full run for production."
    if notes:
        desc += " Notes: " + "; ".join(notes) + "."
    d["description"] = desc
    d["calibration"] = {"date": date, "machine": facts, "residuals": dict(fits.residuals), "measurements": ""}
    return profile_from_dict(d, f"calibrated profile {name!r}")


# ---- running ----------------------------------------------------------------------------------------------
def run_calibration(
    models: Sequence[str | ModelSpec],
    *,
    device: str = "cuda",
    quick: bool = False,
    base: HwProfile | None = None,
    base_label: str = "",
    name: str = "calibrated",
    threads: int | None = None,
    progress: bool = True,
    max_tokens: int | None = None,
) -> CalibrationResult:
    """Measure (GPU part when device is cuda, CPU part always), fit, assemble. Needs torch."""
    import torch
    from tqdm import tqdm

    from simmoe.calibrate import measure
    from simmoe.calibrate.machine import last_level_cache_bytes

    if device not in ("cuda", "cpu"):
        raise InputError("--device", None, f"must be cuda or cpu, got {device!r}")
    if not models:
        raise InputError("--model", None, "no model given")
    specs = [m if isinstance(m, ModelSpec) else get_model(m, source="--model") for m in models]
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", None, "cuda requested but torch sees no GPU (use --device cpu)")
    if device == "cpu" and base is None:
        raise InputError("--base", None, "a CPU-only calibration needs a base profile for the GPU, PCIe and "
                         "host figures (e.g. --base rtx3090)")
    threads = int(threads or physical_cores())
    st = measure.settings(quick, llc_bytes=last_level_cache_bytes(),
                          gpu_l2_bytes=measure.gpu_l2_bytes() if device == "cuda" else 0,
                          memory_bytes=int(memory_gib() * 2**30), max_tokens=max_tokens)
    steps = (measure.plan_gpu(specs, st) if device == "cuda" else []) + measure.plan_cpu(specs, st, threads)
    rows: list[dict[str, Any]] = []
    saved_threads = torch.get_num_threads()
    try:
        with tqdm(total=len(steps), file=sys.stderr, unit="step", disable=not progress, leave=False,
                  dynamic_ncols=True) as bar:
            for step in steps:
                bar.set_description(step.label)
                rows += step.run()
                if device == "cuda":
                    torch.cuda.empty_cache()  # the step's buffers are gone: give their memory back
                bar.update(1)
    finally:
        torch.set_num_threads(saved_threads)
    df = pd.DataFrame(rows, columns=measure.COLUMNS)
    fits = fit_measurements(df)
    figures = derive_figures(df)
    facts = machine_facts(device, threads)
    profile = build_profile(name=name, device=device, df=df, fits=fits, figures=figures, facts=facts,
                            models=specs, threads=threads, base=base, base_label=base_label, quick=quick,
                            gpu_props=measure.gpu_properties() if device == "cuda" else None)
    return CalibrationResult(profile, df, fits, figures, device, [m.name for m in specs])


def measurements_path(out: str | Path) -> Path:
    """The CSV beside a profile: hwprofiles/NAME.yaml -> hwprofiles/NAME.csv."""
    return Path(out).with_suffix(".csv")


def write_profile(profile: HwProfile, measurements: pd.DataFrame, out: str | Path) -> tuple[Path, Path]:
    """Write the profile YAML and its measurements CSV, both atomically; returns (yaml path, csv path).

    The YAML is re-loaded with load_profile before either file is renamed into place.
    """
    out = Path(out)
    if out.suffix not in (".yaml", ".yml"):
        raise InputError(out, None, "the output profile must end in .yaml or .yml")
    csv_path = measurements_path(out)
    if profile.calibration is not None:
        cal = profile.calibration.model_copy(update={"measurements": csv_path.name})
        profile = profile.model_copy(update={"calibration": cal})
    header = (f"# {profile.name}: written by `simmoe calibrate`; raw measurements in {csv_path.name}.\n"
              "# Schema: hwprofiles/README.md. Re-run the calibration rather than editing fitted figures.\n")
    with atomic_path(csv_path) as tmp_csv, atomic_path(out) as tmp_yaml:
        measurements.to_csv(tmp_csv, index=False, float_format="%.6g")
        tmp_yaml.write_text(header + dump_profile(profile))
        load_profile(tmp_yaml)  # what we write must load
    return out, csv_path


def format_summary(res: CalibrationResult, paths: tuple[Path, Path] | None = None) -> str:
    """Human-readable result for stdout."""
    p, fig = res.profile, res.figures
    lines = []
    if res.device == "cpu":
        base = (p.calibration.machine.get("base_profile", "?") if p.calibration else "?")
        lines.append(f"CPU-ONLY calibration: no GPU measured; GPU, PCIe and host figures come from base "
                     f"profile {base}.")
    lines.append(f"CPU {p.cpu.name}, {p.cpu.cores} threads:")
    if "cpu.dispatch_us" in fig:
        lines.append(f"  eager op dispatch        {fig['cpu.dispatch_us']:10.2f} us per call")
    lines.append(f"  memory bandwidth (copy)  {fig.get('cpu.membw_gbps', float('nan')):10.2f} GB/s")
    for k, v in fig.items():
        if k.startswith("cpu.gemm_gflops:"):
            lines.append(f"  GEMM peak {k.split(':', 1)[1]:<14} {v:10.2f} GFLOP/s")
    lines.append(f"  expert fit: overhead {p.cpu.expert_overhead_us:g} us, compute "
                 f"{p.cpu.peak_gflops * p.cpu.matmul_efficiency:.4g} GFLOP/s, stream "
                 f"{p.cpu.memory_gbps * p.cpu.membw_efficiency:.4g} GB/s")
    for key, t in p.kernels.expert_ffn_cpu.items():
        cells = ", ".join(f"{n}:{us:.4g}" for n, us in zip(t.tokens, t.us, strict=True))
        lines.append(f"  expert {key} us by tokens: {cells}")
    if res.device == "cuda":
        lines.append(f"GPU {p.gpu.name}:")
        for k, label in (("gpu.launch_us", "kernel launch (host)"), ("gpu.copy_issue_us", "copy issue (host)"),
                         ("gpu.sync_us", "sync read-back (host)"), ("gpu.kernel_min_us", "shortest kernel")):
            if k in fig:
                lines.append(f"  {label:<24} {fig[k]:10.2f} us")
        for nm, f in res.fits.copies.items():
            lines.append(f"  {nm:<24} {f.gbps:10.2f} GB/s  latency {f.latency_us:.2f} us")
        if "gpu.copy_compute_overlap" in fig:
            lines.append(f"  copy/compute overlap     {fig['gpu.copy_compute_overlap']:10.0%}")
        if "pcie.h2d_d2h_overlap" in fig:
            lines.append(f"  H2D/D2H overlap          {fig['pcie.h2d_d2h_overlap']:10.0%}  "
                         f"(copy_engines {p.pcie.copy_engines})")
        for key, t in p.kernels.expert_ffn_gpu.items():
            cells = ", ".join(f"{n}:{us:.4g}" for n, us in zip(t.tokens, t.us, strict=True))
            lines.append(f"  expert {key} us by tokens: {cells}")
    lines.append("fit residuals (relative RMS):")
    for k, v in res.fits.residuals.items():
        lines.append(f"  {k:<44} {v:8.2%}")
    for fit in res.fits.experts.values():
        for n in fit.notes:
            lines.append(f"  note ({fit.name}): {n}")
    if paths:
        lines.append(f"wrote {paths[0]} and {paths[1]}")
    return "\n".join(lines)
