"""Fit a calibrated profile from a measurements file; every figure says where it comes from.

No torch: `simmoe calibrate --from M.json` runs this on any machine. Each figure of the profile is one of
(`calibration.provenance`):

    measured   read off one measurement, or off the machine (names, memory sizes, thread counts)
    fitted     a SciPy fit over measurements (copy latency and bandwidth, efficiencies, launch cost)
    borrowed   from the base profile (`--base`) or, without one, the schema's default
    assumed    a stated modelling choice (a CPU device: pinned copies are memcpys, one copy at a time)

A figure the measurements cannot give and the schema has no default for needs `--base`: nothing is
borrowed unless a base profile was named, and then every borrowed figure is listed.

What the measurements become, by device:

    cuda (a GPU host)
      pcie.copy_tables.*           transfer medians per direction and memory kind, made non-decreasing
      pcie.*_gbps, latency_us      fit t = latency + bytes / bandwidth per kind (latency of pinned H2D)
      pcie.copy_engines            overlap.h2d_d2h_s: 2 when an H2D and a D2H copy overlap by more than half
      gpu.matmul/membw_efficiency  the expert fit's achieved rates / the peaks (gemm, membw rows or --base)
      host.launch_overhead_us      a host launch row, or (gpu_ffn_timing "call") the expert-call fit
      kernels.expert_ffn_gpu       gpu_ffn medians ("gpu" timing); with "call" timing the GPU time of a
                                   call: the median minus the fitted launch cost where the GPU bounds the
                                   call, the fitted roofline where the host does
      cpu.*, expert_ffn_cpu        cpu_ffn at one thread count (the roofline fit; tables of medians)
    cpu (the CPU measured as a device)
      as the host of offloaded experts: the cpu section and expert_ffn_cpu; gpu, pcie, host from --base
      --as-device: also gpu (its GEMM and memory rates, dispatch cost as the smallest kernel), pcie (memcpy
      tables; pinned = pageable), host (dispatch, copy-issue and sync costs), expert_ffn_gpu = the CPU tables
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from simmoe.calibrate.fit import (
    CopyFit,
    CopyTableFit,
    ExpertCallFit,
    FitError,
    RooflineFit,
    call_kernels,
    fit_copy,
    fit_expert_calls,
    fit_roofline,
    kernel_table,
    monotone_table,
    rel_rms,
)
from simmoe.calibrate.measurements import BLOCK_TABLES, COPY_KINDS, Measurements, to_frame
from simmoe.errors import InputError
from simmoe.hw.profile import (
    FIGURE_SECTIONS,
    CpuSpec,
    GpuSpec,
    HostSpec,
    HwProfile,
    PcieSpec,
    figure_paths,
    profile_from_dict,
)

SPECS: dict[str, Any] = {"gpu": GpuSpec, "host": HostSpec, "pcie": PcieSpec, "cpu": CpuSpec}
DEV_PREFIX = {"cuda": "gpu", "cpu": "cpu"}
MIN_TABLE_US = 0.01  # a table entry that is all dispatch keeps this much device time (tables are > 0)
SCHEMA_DEFAULT = "schema default (hwprofiles/README.md)"


@dataclass
class Fits:
    copies: dict[str, CopyFit] = field(default_factory=dict)  # h2d_pinned ... -> latency + bandwidth fit
    tables: dict[str, CopyTableFit] = field(default_factory=dict)  # h2d_pinned ... -> monotone copy table
    experts: dict[tuple[str, str], RooflineFit | ExpertCallFit] = field(default_factory=dict)  # (device, dtype)
    residuals: dict[str, float] = field(default_factory=dict)


@dataclass
class CalibrationResult:
    profile: HwProfile
    measurements: pd.DataFrame  # one row per measured point (measurements.COLUMNS)
    fits: Fits
    figures: dict[str, float]  # headline figures (derive_figures)
    device: str
    models: list[str]
    raw: Measurements | None = None  # the measurements file's content
    threads: int | None = None  # CPU thread count the profile describes
    as_device: bool = False


def _sig(x: float, digits: int = 4) -> float:
    """Round to `digits` significant digits (readable YAML)."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, max(0, digits - 1 - int(math.floor(math.log10(abs(x))))))


def _frac(x: float) -> float:
    return float(min(1.0, max(1e-4, _sig(x))))


# ---- headline figures -------------------------------------------------------------------------------------
def _median(df: pd.DataFrame, kind: str, device: str, name: str | None = None) -> pd.Series | None:
    sub = df[(df["kind"] == kind) & (df["device"] == device)]
    if name is not None:
        sub = sub[sub["name"] == name]
    return sub.iloc[0] if len(sub) else None


def derive_figures(df: pd.DataFrame) -> dict[str, float]:
    """Headline figures from the rows: host costs, bandwidths, GEMM rates, overlap fractions."""
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
    comp = ov.get("compute_alone", ov.get("compute20_alone"))
    if comp is not None and {"copy_alone", "overlapped"} <= set(ov):
        hidden = ov["copy_alone"] + comp - ov["overlapped"]
        fig["gpu.copy_compute_overlap"] = float(np.clip(hidden / min(ov["copy_alone"], comp), 0, 1))
    if {"copy_alone", "d2h_alone", "h2d_d2h_overlapped"} <= set(ov):
        hidden = ov["copy_alone"] + ov["d2h_alone"] - ov["h2d_d2h_overlapped"]
        fig["pcie.h2d_d2h_overlap"] = float(np.clip(hidden / min(ov["copy_alone"], ov["d2h_alone"]), 0, 1))
    return fig


# ---- the profile under construction ------------------------------------------------------------------------
class _Draft:
    """Profile sections as plain data plus the origin of every figure put in."""

    def __init__(self, base: HwProfile | None, base_label: str) -> None:
        self.d: dict[str, Any] = {"gpu": {}, "host": {}, "pcie": {}, "cpu": {}, "kernels": {}}
        self.prov: dict[str, dict[str, str]] = {}
        self.base = base
        self.base_dump = base.model_dump() if base is not None else None
        self.base_label = f"{base_label or (base.name if base else '')} ({base.source})" if base else ""
        self.missing: list[str] = []

    def put(self, path: str, value: Any, how: str, source: str) -> None:
        sec, _, key = path.partition(".")
        if key:
            self.d.setdefault(sec, {})[key] = value
        else:
            self.d[sec] = value
        self.prov[path] = {"how": how, "source": source}

    def note(self, path: str, how: str, source: str) -> None:
        """The origin of a figure placed by hand (a table, a peak_tflops entry)."""
        self.prov[path] = {"how": how, "source": source}

    def borrow(self, path: str) -> None:
        """From the base profile, else the schema default; a required figure with neither is missing."""
        sec, _, key = path.partition(".")
        if self.base_dump is not None:
            src = self.base_dump[sec] if not key else self.base_dump[sec][key]
            if src is None:
                return
            self.put(path, src, "borrowed", self.base_label)
            return
        f = SPECS[sec].model_fields[key]
        if f.is_required():
            self.missing.append(path)
        elif f.default is not None:
            self.put(path, f.default, "borrowed", SCHEMA_DEFAULT)

    def borrow_missing(self, section: str, skip: Sequence[str] = ()) -> None:
        for key in SPECS[section].model_fields:
            if key not in self.d[section] and key not in skip and f"{section}.{key}" not in self.missing:
                self.borrow(f"{section}.{key}")


def _fact(meas: Measurements, *keys: str) -> str | None:
    for k in keys:
        v = meas.machine.get(k)
        if v is not None and str(v).strip():
            return str(v).strip()
    return None


def _gpu_name(text: str) -> str:
    return re.split(r"\s*[(,]", text, maxsplit=1)[0].strip() or text  # "NVIDIA H100 80GB HBM3 (81559 MiB), ..."


def _gpu_memory_gib(meas: Measurements) -> float | None:
    v = _fact(meas, "gpu_memory_gib")
    if v is not None:
        return float(v)
    m = re.search(r"\((\d+(?:\.\d+)?)\s*MiB\)", _fact(meas, "gpu") or "")
    return float(m.group(1)) / 1024 if m else None


def _thread_counts(df: pd.DataFrame) -> list[int]:
    sub = df[(df["device"] == "cpu") & (df["kind"] == "expert_ffn")]
    return sorted(int(t) for t in sub["threads"].unique())


# ---- fitting ----------------------------------------------------------------------------------------------
def _fit_copies(df: pd.DataFrame, fits: Fits) -> None:
    cp = df[df["kind"] == "copy"]
    for kind in COPY_KINDS:
        sub = cp[cp["name"] == kind]
        if len(sub) >= 2:
            t = monotone_table(sub["size_bytes"], sub["median_us"], name=f"pcie.{kind}:table")
            fits.tables[kind] = t
            fits.residuals[t.name] = _sig(t.rel_rms, 3)
        sizes = sub["size_bytes"].to_numpy(dtype=float)
        if len(sub) >= 3 and sizes.max() >= 16 * sizes.min():
            f = fit_copy(sub["size_bytes"], sub["median_us"], name=f"pcie.{kind}")
            fits.copies[kind] = f
            fits.residuals[f.name] = _sig(f.rel_rms, 3)


def _fit_roofline_group(sub: pd.DataFrame, name: str, fits: Fits, key: tuple[str, str]) -> RooflineFit:
    f = fit_roofline(sub["flops"], sub["bytes"], sub["median_us"], name=name)
    fits.experts[key] = f
    fits.residuals[name] = _sig(f.rel_rms, 3)
    prefix = name.split(".", 1)[0]
    for shape, s in sub[sub["kind"] == "expert_ffn"].groupby("name", sort=False):
        pred = f.predict(s["flops"].to_numpy(), s["bytes"].to_numpy())
        fits.residuals[f"{prefix}.expert_ffn:{shape}"] = _sig(rel_rms(pred, s["median_us"].to_numpy()), 3)
    return f


def _kernels_of(names: pd.Series) -> np.ndarray:
    return np.array([call_kernels(str(k).split(":")[0].split("x", 2)[2]) for k in names], dtype=float)


def _block_tables(draft: _Draft, df: pd.DataFrame, device: str, threads: int | None, dispatch_us: float) -> None:
    """The dense blocks' tables (kernels.attention_gpu, ...) from `block` rows of the compute device; on a CPU
    device (`dispatch_us` > 0) each block's ops' dispatch is taken out (the simulator adds the runtime's)."""
    rows = df[(df["kind"] == "block") & (df["device"] == device)]
    if device == "cpu":
        rows = rows[rows["threads"] == (threads or 0)]
    for key, s in rows.groupby("name", sort=False):
        section = BLOCK_TABLES[str(key).split(":", 1)[0]]
        us = s["median_us"].to_numpy()
        src = "block medians (GPU time only)" if device == "cuda" else f"block medians at {threads} threads"
        if dispatch_us:
            ops = int(s["ops"].iloc[0])
            us = np.maximum(us - s["ops"].to_numpy() * dispatch_us, MIN_TABLE_US)
            src += f" (perf_counter around the call) minus its {ops} ops' dispatch ({dispatch_us:.4g} us each)"
        if section == "attention_gpu":
            table, filled = _attention_table(s["tokens"].to_numpy(), s["context"].to_numpy(), us)
            if filled:
                src += (f"; {filled} cells beyond a context's largest measured token count extrapolated along "
                        "its row")
        else:
            table = kernel_table(s["tokens"], us)
        draft.d["kernels"].setdefault(section, {})[str(key)] = table
        draft.note(f"kernels.{section}.{key}", "measured", src)


def _attention_table(tokens: np.ndarray, context: np.ndarray, us: np.ndarray) -> tuple[dict[str, list], int]:
    """An AttentionTable mapping from measured points (rows by context); a context measured at fewer token
    counts than another (its cache would not fit) is extended along its own row. Returns (table, cells filled)."""
    from simmoe.engine.costs import kernel_table_us
    from simmoe.hw.profile import KernelTable

    ctxs = sorted({int(c) for c in context})
    toks = sorted({int(t) for t in tokens})
    rows, filled = [], 0
    for c in ctxs:
        at = context == c
        t = KernelTable.model_validate(kernel_table(tokens[at], us[at]))
        rows.append([max(round(kernel_table_us(t, n), 3), MIN_TABLE_US) if n not in t.tokens
                     else t.us[t.tokens.index(n)] for n in toks])
        filled += sum(n not in t.tokens for n in toks)
    return {"tokens": toks, "context": ctxs, "us": rows}, filled


def _fit_calls_group(sub: pd.DataFrame, name: str, fits: Fits, key: tuple[str, str]) -> ExpertCallFit:
    n = _kernels_of(sub["name"])
    f = fit_expert_calls(sub["flops"], sub["bytes"], n, sub["median_us"], name=name)
    fits.experts[key] = f
    fits.residuals[name] = _sig(f.rel_rms, 3)
    for shape, s in sub[sub["kind"] == "expert_ffn"].groupby("name", sort=False):
        pred = f.predict(s["flops"].to_numpy(), s["bytes"].to_numpy(), _kernels_of(s["name"]))
        fits.residuals[f"gpu.expert_ffn:{shape}"] = _sig(rel_rms(pred, s["median_us"].to_numpy()), 3)
    return f


def _call_tables(sub: pd.DataFrame, f: ExpertCallFit) -> tuple[dict[str, dict[str, list]], dict[str, str]]:
    """GPU time of one call per shape and token count, from calls timed with the host's launch gaps."""
    tables, sources = {}, {}
    for shape, s in sub[sub["kind"] == "expert_ffn"].groupby("name", sort=False):
        fl, by, t = s["flops"].to_numpy(), s["bytes"].to_numpy(), s["median_us"].to_numpy()
        n = _kernels_of(s["name"])
        d_fit = f.gpu_us(fl, by)
        from_meas = f.gpu_bound(fl, by, n) & (t - f.launch_us > 0)
        us = np.where(from_meas, t - f.launch_us, d_fit)
        tables[shape] = kernel_table(s["tokens"], us)
        k = int(from_meas.sum())
        sources[shape] = (f"gpu_ffn call times ({len(t)} token counts): {k} GPU-bound points = median minus the "
                          f"fitted launch cost ({f.launch_us:.3g} us), {len(t) - k} host-bound points = the "
                          f"fitted GPU roofline ({f.gflops / 1e3:.4g} TFLOP/s, {f.gbps:.4g} GB/s; their call time "
                          f"is {int(n[0])} launches)")
    return tables, sources


# ---- assembling -------------------------------------------------------------------------------------------
def fit_profile(
    meas: Measurements,
    *,
    name: str,
    base: HwProfile | None = None,
    base_label: str = "",
    as_device: bool = False,
    threads: int | None = None,
    measurements_name: str = "",
    source: str = "measurements",
) -> CalibrationResult:
    """The calibrated profile of the machine `meas` was taken on (nothing is measured here).

    `threads` picks the CPU thread count whose expert tables the profile uses (default: the largest measured).
    Raises InputError for combinations the measurements cannot support (naming the option or the file) and
    FitError when the data cannot determine a fit.
    """
    df = to_frame(meas)
    device = meas.device
    if as_device and device != "cpu":
        raise InputError("--as-device", None, "describes a CPU as the compute device: it needs CPU measurements "
                         f"(--device cpu), but {source} are of a {device} device")
    if device == "cpu" and not as_device and base is None:
        raise InputError("--base", None, "CPU measurements describe the host of offloaded experts only: give "
                         "--base PROFILE for the GPU, PCIe and host figures (borrowed, and listed as such), or "
                         "--as-device to describe the CPU as the compute device")
    date = _fact(meas, "date")
    if date is None:
        raise InputError(source, "machine.date", "missing: when were these measurements taken?")
    counts = _thread_counts(df)
    if threads is not None and threads not in counts:
        raise InputError("--threads", None, f"{source} have CPU expert rows at "
                         f"{', '.join(map(str, counts)) or 'no'} thread count(s), not {threads}")
    nthreads = threads if threads is not None else (max(counts) if counts else None)

    fits = Fits()
    draft = _Draft(base, base_label)
    notes: list[str] = []
    ex = df[df["kind"].isin(["expert_ffn", "expert_probe"])]
    gpu_ex = ex[ex["device"] == "cuda"]
    cpu_ex = ex[(ex["device"] == "cpu") & (ex["threads"] == (nthreads or 0))]
    dev_ex = gpu_ex if device == "cuda" else cpu_ex
    primary = str(dev_ex["dtype"].iloc[0]) if len(dev_ex) else ""
    cpu_dtypes = list(dict.fromkeys(cpu_ex["dtype"]))
    cpu_primary = primary if primary in cpu_dtypes else (cpu_dtypes[0] if cpu_dtypes else "")
    figures = derive_figures(df)

    # -- CPU (as the host of offloaded experts) ----------------------------------------------------------------
    cfit: RooflineFit | None = None
    if len(cpu_ex):
        for dt, sub in cpu_ex.groupby("dtype", sort=False):
            f = _fit_roofline_group(sub, f"cpu.expert_ffn:{dt}", fits, ("cpu", str(dt)))
            if dt == cpu_primary:
                cfit = f
    _cpu_section(draft, meas, df, cfit, cpu_primary, nthreads, figures, notes)
    if len(cpu_ex):
        tabs = {k: kernel_table(s["tokens"], s["median_us"])
                for k, s in cpu_ex[cpu_ex["kind"] == "expert_ffn"].groupby("name", sort=False)}
        src = f"cpu_ffn medians at {nthreads} threads"
        for k in tabs:
            draft.note(f"kernels.expert_ffn_cpu.{k}", "measured", src)
        draft.d["kernels"]["expert_ffn_cpu"] = tabs
    elif base is not None and base.kernels.expert_ffn_cpu:
        draft.d["kernels"]["expert_ffn_cpu"] = draft.base_dump["kernels"]["expert_ffn_cpu"]  # type: ignore[index]
        draft.note("kernels.expert_ffn_cpu", "borrowed", draft.base_label)

    # -- the compute device, the link, the host thread --------------------------------------------------------
    if device == "cuda":
        _fit_copies(df, fits)
        _cuda_sections(draft, meas, df, gpu_ex, primary, fits, figures, notes)
    elif as_device:
        _fit_copies(df, fits)
        _cpu_device_sections(draft, meas, df, cpu_ex, cfit, cpu_primary, nthreads, fits, figures, notes)
    else:
        for sec in ("gpu", "host", "pcie"):
            draft.put(sec, draft.base_dump[sec], "borrowed", draft.base_label)  # type: ignore[index]
        if base is not None and base.kernels.expert_ffn_gpu:
            draft.d["kernels"]["expert_ffn_gpu"] = draft.base_dump["kernels"]["expert_ffn_gpu"]  # type: ignore[index]
            draft.note("kernels.expert_ffn_gpu", "borrowed", draft.base_label)

    whole = {p for p in draft.prov if "." not in p}  # sections borrowed as a whole
    for sec in ("gpu", "host", "pcie", "cpu"):
        if sec not in whole:
            # a GPU base's SM count does not describe a CPU device
            draft.borrow_missing(sec, skip=("sm_count",) if as_device else ())
    if draft.missing:
        raise InputError("--base", None, f"{source} give no {', '.join(draft.missing)} and the schema has no "
                         "default: give --base PROFILE to borrow them (they will be listed as borrowed)")
    g = draft.d["gpu"]
    if "gpu" not in whole and g["reserved_gib"] >= g["memory_gib"]:
        draft.put("gpu.reserved_gib", _sig(0.1 * g["memory_gib"]), "assumed",
                  f"10% of memory_gib (the borrowed {g['reserved_gib']:g} GiB is not below it)")
    if base is not None and not as_device:  # a GPU machine's NVMe tier and price do not describe a CPU device
        if base.nvme is not None:
            draft.put("nvme", draft.base_dump["nvme"], "borrowed", draft.base_label)  # type: ignore[index]
        if base.price_usd_per_hour is not None:
            draft.put("price_usd_per_hour", base.price_usd_per_hour, "borrowed", draft.base_label)
            draft.d["price_source"] = base.price_source
    _checks(meas, fits, draft, figures)

    d = draft.d
    d["name"] = name
    d["source"] = "calibrated"
    d["references"] = ([f"raw measurements: calibration.measurements (taken {date})"]
                       + (list(base.references) if base is not None else []))
    facts = {k: str(v) for k, v in meas.machine.items()}
    facts.update({"measured": ", ".join(s for s in ("host", "kernel_min", "membw", "gemm", "transfer", "gpu_ffn",
                                                    "cpu_ffn", "blocks", "overlap") if getattr(meas, s)),
                  "device": device + (" (as the compute device)" if as_device else "")})
    if nthreads:
        facts["threads"] = str(nthreads)
    if base is not None:
        facts["base_profile"] = draft.base_label
    d["description"] = _describe(meas, draft, device, as_device, nthreads, figures, notes, date)
    d["calibration"] = {"date": date, "machine": facts, "residuals": dict(fits.residuals),
                        "measurements": measurements_name, "provenance": draft.prov}
    profile = profile_from_dict(d, f"calibrated profile {name!r}")
    # provenance in the order of the profile's own fields (YAML readers look things up top-down)
    _, leaves = figure_paths({k: getattr(profile, k) for k in FIGURE_SECTIONS})
    rank = {leaf: i for i, leaf in enumerate(leaves)}

    def first_leaf(key: str) -> int:
        return min((i for leaf, i in rank.items() if leaf == key or leaf.startswith(key + ".")), default=len(rank))

    d["calibration"]["provenance"] = dict(sorted(draft.prov.items(), key=lambda kv: first_leaf(kv[0])))
    profile = profile_from_dict(d, f"calibrated profile {name!r}")
    models = list(dict.fromkeys(m for m in df["model"] if m))
    return CalibrationResult(profile, df, fits, figures, device, models, meas, nthreads, as_device)


def _put_or_borrow(draft: _Draft, path: str, value: Any, how: str, source: str) -> None:
    if value is None:
        draft.borrow(path)
    else:
        draft.put(path, value, how, source)


def _cpu_section(draft: _Draft, meas: Measurements, df: pd.DataFrame, cfit: RooflineFit | None, dtype: str,
                 threads: int | None, figures: dict[str, float], notes: list[str]) -> None:
    if cfit is None:
        if draft.base is None:
            draft.missing.append("cpu (no cpu_ffn rows)")
        else:
            draft.put("cpu", draft.base_dump["cpu"], "borrowed", draft.base_label)  # type: ignore[index]
        return
    cpu = _fact(meas, "cpu")
    _put_or_borrow(draft, "cpu.name", cpu, "measured", "machine.cpu")
    draft.put("cpu.cores", int(threads or 1), "measured", "the threads the cpu_ffn rows were timed with")
    mem = _fact(meas, "memory_gib", "host_memory_gib")
    _put_or_borrow(draft, "cpu.memory_gib", _sig(float(mem)) if mem else None, "measured", "machine memory")
    notes += [f"CPU fit: {n}" for n in cfit.notes]
    for key, fig, what in (("peak_gflops", f"cpu.gemm_gflops:{dtype}", "gemm"),
                           ("memory_gbps", "cpu.membw_gbps", "membw")):
        if fig in figures:
            peak, how, src = figures[fig], "measured", f"{what} row (cpu)"
        elif draft.base is not None:
            peak, how, src = getattr(draft.base.cpu, key), "borrowed", draft.base_label
        else:
            draft.missing.append(f"cpu.{key}")
            continue
        draft.put(f"cpu.{key}", _sig(peak), how, src)
    src = f"roofline fit of cpu_ffn ({dtype}, {threads} threads, {cfit.n_points} points; residual " \
          f"cpu.expert_ffn:{dtype})"
    for key, peak_key, rate, unit in (("matmul_efficiency", "peak_gflops", cfit.gflops, "GFLOP/s"),
                                      ("membw_efficiency", "memory_gbps", cfit.gbps, "GB/s")):
        if peak_key in draft.d["cpu"]:
            draft.put(f"cpu.{key}", *_efficiency(rate, draft.d["cpu"][peak_key], f"cpu.{peak_key}", unit, src,
                                                 notes))
    draft.put("cpu.expert_overhead_us", _sig(cfit.overhead_us), "fitted", src)


def _efficiency(rate: float, peak: float, peak_name: str, unit: str, src: str,
                notes: list[str]) -> tuple[float, str, str]:
    """(value, how, source) of an efficiency = a fit's achieved rate / a peak, clipped to 1 (the peak is kept:
    a fitted rate above it is one the data only bound, or the peak was measured too low)."""
    text = f"{src}: achieved {rate:.4g} {unit} / {peak_name} {peak:.4g}"
    if rate > peak:
        notes.append(f"the achieved {rate:.4g} {unit} of {src.split(' (')[0]} exceeds {peak_name} ({peak:.4g}): "
                     "efficiency clipped to 1")
        text += " (above the peak: clipped to 1)"
    return _frac(rate / peak), "fitted", text


def _peaks(draft: _Draft, figures: dict[str, float], prefix: str, what: str) -> dict[str, float] | None:
    measured = {k.split(":", 1)[1]: _sig(v / 1e3) for k, v in figures.items() if k.startswith(f"{prefix}.gemm_gflops:")}
    if measured:
        for dt in measured:
            draft.note(f"gpu.peak_tflops.{dt}", "measured", f"gemm row ({what}, {dt})")
        return measured
    if draft.base is not None:
        peaks = dict(draft.base.gpu.peak_tflops)
        for dt in peaks:
            draft.note(f"gpu.peak_tflops.{dt}", "borrowed", draft.base_label)
        return peaks
    draft.missing.append("gpu.peak_tflops")
    return None


def _peak_key(peaks: dict[str, float], dtype: str) -> str:
    for k in (dtype, "bf16", "fp16"):  # HwProfile.peak_flops's fallback
        if k in peaks:
            return k
    return max(peaks, key=peaks.__getitem__)


def _efficiencies(draft: _Draft, rate_gflops: float, rate_gbps: float, dtype: str, hbm: float | None,
                  hbm_how: tuple[str, str], peaks: dict[str, float] | None, src: str, notes: list[str]) -> None:
    """gpu.peak_tflops, hbm_gbps and the two efficiencies from a fit's achieved rates."""
    if peaks is not None:
        pk = _peak_key(peaks, dtype)
        draft.d["gpu"]["peak_tflops"] = peaks
        draft.put("gpu.matmul_efficiency", *_efficiency(rate_gflops / 1e3, peaks[pk], f"gpu.peak_tflops.{pk}",
                                                        "TFLOP/s", src, notes))
    if hbm is not None:
        draft.put("gpu.hbm_gbps", _sig(hbm), *hbm_how)
        draft.put("gpu.membw_efficiency", *_efficiency(rate_gbps, draft.d["gpu"]["hbm_gbps"], "gpu.hbm_gbps", "GB/s",
                                                       src, notes))


def _pcie_from_fits(draft: _Draft, fits: Fits, kinds: Sequence[str]) -> None:
    for kind in kinds:
        f = fits.copies.get(kind)
        if f is None:
            draft.borrow(f"pcie.{kind}_gbps")
        else:
            draft.put(f"pcie.{kind}_gbps", _sig(f.gbps), "fitted",
                      f"transfer {kind}: t = latency + bytes / bandwidth over {f.n_points} sizes (residual pcie.{kind})")


def _cuda_sections(draft: _Draft, meas: Measurements, df: pd.DataFrame, gpu_ex: pd.DataFrame, primary: str,
                   fits: Fits, figures: dict[str, float], notes: list[str]) -> None:
    b = draft.base
    # gpu: what the machine says, peaks measured or borrowed, efficiencies fitted from the expert rows
    gname = _fact(meas, "gpu")
    _put_or_borrow(draft, "gpu.name", _gpu_name(gname) if gname else None, "measured", "machine.gpu")
    mem = _gpu_memory_gib(meas)
    _put_or_borrow(draft, "gpu.memory_gib", _sig(mem) if mem else None, "measured", "machine.gpu memory")
    sm = _fact(meas, "gpu_sm_count")
    _put_or_borrow(draft, "gpu.sm_count", int(sm) if sm else None, "measured", "machine.gpu_sm_count")
    peaks = _peaks(draft, figures, "gpu", "cuda")
    if "gpu.membw_gbps" in figures:
        hbm, hbm_how = figures["gpu.membw_gbps"], ("measured", "membw row (cuda)")
    elif b is not None:
        hbm, hbm_how = b.gpu.hbm_gbps, ("borrowed", draft.base_label)
    else:
        hbm, hbm_how = None, ("", "")
        draft.missing.append("gpu.hbm_gbps")
    launch = None
    tables: dict[str, dict[str, list]] = {}
    sources: dict[str, str] = {}
    for dt, sub in gpu_ex.groupby("dtype", sort=False):
        if meas.gpu_ffn_timing == "call":
            f = _fit_calls_group(sub, f"gpu.expert_calls:{dt}", fits, ("cuda", str(dt)))
            t, s = _call_tables(sub, f)
            tables.update(t)
            sources.update(s)
        else:
            f = _fit_roofline_group(sub, f"gpu.expert_ffn:{dt}", fits, ("cuda", str(dt)))
            for k, s in sub[sub["kind"] == "expert_ffn"].groupby("name", sort=False):
                tables[k] = kernel_table(s["tokens"], s["median_us"])
                sources[k] = "gpu_ffn medians (GPU time only)"
        notes += [f"GPU fit ({dt}): {n}" for n in f.notes]
        if dt != primary:
            continue
        rates_known = not (isinstance(f, ExpertCallFit) and f.n_gpu_bound == 0)
        if rates_known:
            _efficiencies(draft, f.gflops, f.gbps, primary, hbm, hbm_how, peaks, f"fit {f.name}", notes)
        if isinstance(f, ExpertCallFit):
            launch = f
    if "gpu.hbm_gbps" not in draft.prov and hbm is not None:
        draft.put("gpu.hbm_gbps", _sig(hbm), *hbm_how)
    if "peak_tflops" not in draft.d["gpu"] and peaks is not None:
        draft.d["gpu"]["peak_tflops"] = peaks
    if "gpu.kernel_min_us" in figures:
        draft.put("gpu.kernel_min_us", _sig(figures["gpu.kernel_min_us"]), "measured", "kernel_min row")
    for k in tables:
        draft.note(f"kernels.expert_ffn_gpu.{k}", "measured" if meas.gpu_ffn_timing == "gpu" else "fitted",
                   sources[k])
    draft.d["kernels"]["expert_ffn_gpu"] = tables
    _block_tables(draft, df, "cuda", None, 0.0)
    if b is not None:
        draft.borrow("gpu.unified_memory")
        draft.borrow("gpu.executes_on_host")
    else:
        draft.put("gpu.unified_memory", False, "assumed", "a discrete GPU: the transfer rows cross a link")
        draft.put("gpu.executes_on_host", False, "assumed", "a GPU runs kernels the host queued")

    # host: measured rows, else the launch cost the expert-call fit found
    if "gpu.launch_us" in figures:
        draft.put("host.launch_overhead_us", _sig(figures["gpu.launch_us"]), "measured", "host launch row (cuda)")
    elif launch is not None:
        draft.put("host.launch_overhead_us", _sig(launch.launch_us), "fitted",
                  f"fit {launch.name}: host-bound calls take kernels x launch (residual {launch.name})")
    for key, fig in (("copy_issue_us", "gpu.copy_issue_us"), ("sync_us", "gpu.sync_us")):
        if fig in figures:
            draft.put(f"host.{key}", _sig(figures[fig]), "measured", f"host {key[:-3]} row (cuda)")

    # pcie: copy fits and tables
    _pcie_from_fits(draft, fits, COPY_KINDS)
    if "h2d_pinned" in fits.copies:
        draft.put("pcie.latency_us", _sig(fits.copies["h2d_pinned"].latency_us), "fitted",
                  "latency of the transfer h2d_pinned fit (the expert-fetch path)")
    link = _fact(meas, "pcie_link", "link")
    if link:
        draft.put("pcie.link", link, "measured", "machine link")
    if "pcie.h2d_d2h_overlap" in figures:
        draft.put("pcie.copy_engines", 2 if figures["pcie.h2d_d2h_overlap"] > 0.5 else 1, "measured",
                  f"overlap: an H2D and a D2H copy together hide {figures['pcie.h2d_d2h_overlap']:.0%} of the shorter")
    tabs = {}
    for kind, t in fits.tables.items():
        tabs[kind] = t.as_table()
        draft.note(f"pcie.copy_tables.{kind}", "measured", f"transfer {kind} medians at {len(t.us)} sizes, made "
                   f"non-decreasing (residual pcie.{kind}:table)")
    draft.d["pcie"]["copy_tables"] = tabs


def _cpu_device_sections(draft: _Draft, meas: Measurements, df: pd.DataFrame, cpu_ex: pd.DataFrame,
                         cfit: RooflineFit | None, dtype: str, threads: int | None, fits: Fits,
                         figures: dict[str, float], notes: list[str]) -> None:
    cpu = _fact(meas, "cpu") or "CPU"
    draft.put("gpu.name", f"{cpu} (CPU as the compute device)", "measured", "machine.cpu")
    mem = _fact(meas, "memory_gib", "host_memory_gib")
    _put_or_borrow(draft, "gpu.memory_gib", _sig(float(mem)) if mem else None, "measured", "machine memory")
    peaks = _peaks(draft, figures, "cpu", "cpu")
    if "cpu.membw_gbps" in figures:
        hbm, hbm_how = figures["cpu.membw_gbps"], ("measured", "membw row (cpu)")
    else:
        hbm, hbm_how = None, ("", "")
        draft.missing.append("gpu.hbm_gbps (a membw row)")
    if cfit is not None:
        _efficiencies(draft, cfit.gflops, cfit.gbps, dtype, hbm, hbm_how, peaks, f"fit cpu.expert_ffn:{dtype}",
                      notes)
    elif peaks is not None:
        draft.d["gpu"]["peak_tflops"] = peaks
    if "gpu.hbm_gbps" not in draft.prov and hbm is not None:
        draft.put("gpu.hbm_gbps", _sig(hbm), *hbm_how)
    if "cpu.dispatch_us" in figures:
        draft.put("gpu.kernel_min_us", 0.0, "assumed",
                  "the host dispatch row's op (an add of 16 floats) is all dispatch: each op pays it as its launch "
                  "(host.launch_overhead_us) and has no further minimum")
    draft.put("gpu.unified_memory", False, "assumed",
              "the executor copies experts into its slot pool with memcpy, as over a link")
    draft.put("gpu.executes_on_host", True, "assumed",
              "the CPU is the device: the host thread runs each op itself (torch on the CPU is synchronous)")
    # the device's time of a call: the simulator adds the runtime's launches (each the dispatch cost) to it
    dispatch = figures.get("cpu.dispatch_us", 0.0)
    tabs = {}
    for k, s in cpu_ex[cpu_ex["kind"] == "expert_ffn"].groupby("name", sort=False):
        n = _kernels_of(s["name"])
        tabs[k] = kernel_table(s["tokens"], np.maximum(s["median_us"].to_numpy() - n * dispatch, MIN_TABLE_US))
        draft.note(f"kernels.expert_ffn_gpu.{k}", "measured",
                   f"cpu_ffn medians at {threads} threads (perf_counter around the call) minus its {int(n[0])} "
                   f"ops' dispatch ({dispatch:.4g} us each, the host dispatch row)")
    draft.d["kernels"]["expert_ffn_gpu"] = tabs
    _block_tables(draft, df, "cpu", threads, dispatch)

    for key, fig, what in (("launch_overhead_us", "cpu.dispatch_us", "dispatch"),
                           ("copy_issue_us", "cpu.copy_issue_us", "copy_issue"), ("sync_us", "cpu.sync_us", "sync")):
        if fig in figures:
            draft.put(f"host.{key}", _sig(figures[fig]), "measured", f"host {what} row (cpu)")

    pageable = [k for k in COPY_KINDS if k.endswith("pageable")]
    _pcie_from_fits(draft, fits, pageable)
    for kind in pageable:
        pin = kind.replace("pageable", "pinned")
        if kind in fits.copies:
            draft.put(f"pcie.{pin}_gbps", draft.d["pcie"][f"{kind}_gbps"], "assumed",
                      f"a CPU has no pinned memory: pinned copies are the same memcpy (pcie.{kind}_gbps)")
    if "h2d_pageable" in fits.copies:
        draft.put("pcie.latency_us", _sig(fits.copies["h2d_pageable"].latency_us), "fitted",
                  "latency of the transfer h2d_pageable (memcpy) fit")
    draft.put("pcie.link", "memcpy (CPU as the compute device)", "assumed", "no link: copies are memcpys")
    draft.put("pcie.copy_engines", 1, "assumed", "a memcpy runs on the host's threads, one copy at a time")
    tabs2 = {}
    for kind, t in fits.tables.items():
        pin = kind.replace("pageable", "pinned")
        tabs2[kind] = tabs2[pin] = t.as_table()
        draft.note(f"pcie.copy_tables.{kind}", "measured", f"memcpy ({kind} rows) at {len(t.us)} sizes, made "
                   f"non-decreasing (residual pcie.{kind}:table)")
        draft.note(f"pcie.copy_tables.{pin}", "assumed", f"a CPU has no pinned memory: the {kind} memcpy table")
    draft.d["pcie"]["copy_tables"] = dict(sorted(tabs2.items(), key=lambda kv: COPY_KINDS.index(kv[0])))


def _checks(meas: Measurements, fits: Fits, draft: _Draft, figures: dict[str, float]) -> None:
    """Held-out comparisons: measurements no fit used, against what the profile predicts (|pred/meas - 1|)."""
    from simmoe.engine.costs import copy_table_us
    from simmoe.hw.profile import CopyTable, KernelTable

    ov = meas.overlap
    if ov is None:
        return
    tab = draft.d["pcie"].get("copy_tables", {}).get("h2d_pinned")
    if tab:
        pred = copy_table_us(CopyTable(**tab), ov.bytes)
        fits.residuals["check:pcie.copy_tables.h2d_pinned@overlap.copy_s"] = _sig(abs(pred / (ov.copy_s.median * 1e6) - 1), 3)
    if ov.compute20_s is not None:
        # 20 back-to-back calls at 64 tokens of the expert whose weights are `bytes`: the host runs ahead,
        # so each call takes its GPU time, which the GPU table should give.
        for r in meas.gpu_ffn:
            mats = 3 if r.activation in ("swiglu", "geglu") else 2
            if not r.probe and mats * r.d_model * r.d_ff * {"bf16": 2, "fp16": 2, "fp32": 4}[r.dt] == ov.bytes:
                from simmoe.engine.costs import kernel_table_us
                from simmoe.hw.kernel_keys import shape_key

                t = draft.d["kernels"].get("expert_ffn_gpu", {}).get(shape_key(r.d_model, r.d_ff, r.activation, r.dt))
                if t:
                    pred = kernel_table_us(KernelTable(**t), 64)
                    fits.residuals["check:kernels.expert_ffn_gpu@overlap.compute20_s"] = _sig(
                        abs(pred / (ov.compute20_s.median * 1e6 / 20) - 1), 3)
                break


def _describe(meas: Measurements, draft: _Draft, device: str, as_device: bool, threads: int | None,
              figures: dict[str, float], notes: list[str], date: str) -> str:
    what = "CPU as the compute device" if as_device else ("CPU as the host of offloaded experts" if device == "cpu"
                                                         else "GPU host")
    desc = (f"Calibrated from measurements of {date} ({what}): {meas.machine.get('gpu', '') or meas.machine.get('cpu', '')}"
            .rstrip(": ") + ".")
    sections = [s for s in ("host", "kernel_min", "membw", "gemm", "transfer", "gpu_ffn", "cpu_ffn", "overlap")
                if getattr(meas, s)]
    desc += f" Measured: {', '.join(sections)}"
    if threads:
        desc += f" (CPU experts at {threads} threads)"
    desc += "."
    if draft.base is not None:
        desc += f" Figures the measurements cannot give are borrowed from {draft.base_label}."
    desc += " calibration.provenance says where each figure comes from."
    if "gpu.copy_compute_overlap" in figures:
        desc += f" A copy on a second stream overlapped compute by {figures['gpu.copy_compute_overlap']:.0%}."
    if str(meas.machine.get("calibrate_mode", "")) == "quick":
        desc += " Quick mode: few sizes and token counts; use a full run for production."
    if notes:
        desc += " Notes: " + "; ".join(notes) + "."
    return desc


__all__ = ["CalibrationResult", "Fits", "FitError", "derive_figures", "fit_profile"]
