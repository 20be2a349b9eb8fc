"""Run a calibration (measure, then fit), write the profile YAML with its measurements file beside it.

Measuring (`run_calibration`, needs torch) produces the rows of `measure.py`; they become a measurements
file (`measurements.py`, the format `simmoe calibrate --from` reads), which `assemble.fit_profile` turns into
the profile, stating where every figure comes from. `fit_from_file` is the `--from` path: the same fit on
measurements taken elsewhere. Nothing is written until `write_profile`, which writes NAME.yaml and NAME.json
atomically.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simmoe.calibrate.assemble import CalibrationResult, Fits, derive_figures, fit_profile
from simmoe.calibrate.machine import machine_facts, memory_gib, physical_cores
from simmoe.calibrate.measurements import Measurements, dumps, from_frame, load_measurements
from simmoe.errors import InputError
from simmoe.fileio import atomic_path
from simmoe.hw.profile import HwProfile, dump_profile, load_profile
from simmoe.hw.provenance import origin_lines
from simmoe.models import get_model
from simmoe.models.spec import ModelSpec

logger = logging.getLogger(__name__)

__all__ = ["CalibrationResult", "Fits", "derive_figures", "fit_from_file", "format_summary", "measurements_path",
           "run_calibration", "write_profile"]


# ---- running ----------------------------------------------------------------------------------------------
def run_calibration(
    models: Sequence[str | ModelSpec],
    *,
    device: str = "cuda",
    quick: bool = False,
    base: HwProfile | None = None,
    base_label: str = "",
    name: str = "calibrated",
    threads: int | Sequence[int] | None = None,
    progress: bool = True,
    max_tokens: int | None = None,
    as_device: bool = False,
) -> CalibrationResult:
    """Measure this machine (GPU, PCIe, host and CPU on cuda; the CPU, its memcpy and dispatch on cpu) and fit
    the profile. `threads`: the CPU thread counts to time experts at (the first is the one the profile
    describes; default: the physical cores). Needs torch."""
    import torch

    from simmoe.calibrate import measure
    from simmoe.calibrate.machine import last_level_cache_bytes
    from simmoe.progress import bar as progress_bar

    if device not in ("cuda", "cpu"):
        raise InputError("--device", None, f"must be cuda or cpu, got {device!r}")
    if not models:
        raise InputError("--model", None, "no model given")
    specs = [m if isinstance(m, ModelSpec) else get_model(m, source="--model") for m in models]
    if as_device and device != "cpu":
        raise InputError("--as-device", None, "describes the CPU as the compute device: use it with --device cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", None, "cuda requested but torch sees no GPU (use --device cpu)")
    if device == "cpu" and base is None and not as_device:
        raise InputError("--base", None, "a CPU calibration describes the host of offloaded experts: give a base "
                         "profile for the GPU, PCIe and host figures (e.g. --base rtx3090; they are listed as "
                         "borrowed), or --as-device to describe the CPU as the compute device")
    counts = [int(t) for t in ([threads] if isinstance(threads, int) else (threads or [physical_cores()]))]
    mem = int(memory_gib() * 2**30)
    st = measure.settings(quick, llc_bytes=last_level_cache_bytes(),
                          gpu_l2_bytes=measure.gpu_l2_bytes() if device == "cuda" else 0,
                          memory_bytes=mem, max_tokens=max_tokens)
    steps = (measure.plan_gpu(specs, st) if device == "cuda" else [])
    # a GPU host times its own copies; the CPU's dense blocks only matter where it is the device
    steps += measure.plan_cpu(specs, st, counts, mem, memcpy=device == "cpu", blocks=as_device)
    rows: list[dict[str, Any]] = []
    saved_threads = torch.get_num_threads()
    try:
        with progress_bar(total=len(steps), enabled=progress, unit="step", leave=False,
                          dynamic_ncols=True) as bar:
            for i, step in enumerate(steps, 1):
                logger.info(f"calibrate: step {i} of {len(steps)}: {step.label}")  # -v: the bar's steps in a log
                bar.set_description(step.label)
                rows += step.run()
                if device == "cuda":
                    torch.cuda.empty_cache()  # the step's buffers are gone: give their memory back
                bar.update(1)
    finally:
        torch.set_num_threads(saved_threads)
        # measure.set_cpu_threads flushes denormals (processor state, process-wide): back to torch's default,
        # or later numpy/hypothesis code in this process cannot represent subnormal floats
        torch.set_flush_denormal(False)
    import pandas as pd

    df = pd.DataFrame(rows, columns=measure.COLUMNS)
    facts: dict[str, Any] = dict(machine_facts(device, counts[0]))
    if device == "cuda":
        props = measure.gpu_properties()
        facts.update(gpu=str(props["name"]), gpu_memory_gib=f"{props['memory_gib']:.2f}",
                     gpu_sm_count=str(props["sm_count"]))
    facts["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    facts["calibrate_mode"] = "quick" if quick else "full"
    method = {k: v for k, v in measure.METHOD.items()
              if device == "cuda" or k in ("host", "membw", "gemm", "transfer", "cpu_ffn")
              or (k == "block" and as_device)}
    meas = from_frame(df, device=device, machine=facts, method=method)
    return fit_profile(meas, name=name, base=base, base_label=base_label, as_device=as_device, threads=counts[0],
                       source="the measurements")


def fit_from_file(path: str | Path, *, name: str, base: HwProfile | None = None, base_label: str = "",
                  as_device: bool = False, threads: int | None = None) -> CalibrationResult:
    """`simmoe calibrate --from PATH`: fit a profile from a measurements file (no torch, any machine)."""
    meas = load_measurements(path)
    return fit_profile(meas, name=name, base=base, base_label=base_label, as_device=as_device, threads=threads,
                       source=str(path))


def measurements_path(out: str | Path) -> Path:
    """The measurements file beside a profile: hwprofiles/NAME.yaml -> hwprofiles/NAME.json."""
    return Path(out).with_suffix(".json")


def write_profile(profile: HwProfile, measurements: Measurements, out: str | Path) -> tuple[Path, Path]:
    """Write the profile YAML and its measurements JSON, both atomically; returns (yaml path, json path).

    The YAML is re-loaded with load_profile before either file is renamed into place.
    """
    out = Path(out)
    if out.suffix not in (".yaml", ".yml"):
        raise InputError(out, None, "the output profile must end in .yaml or .yml")
    json_path = measurements_path(out)
    if profile.calibration is not None:
        cal = profile.calibration.model_copy(update={"measurements": json_path.name})
        profile = profile.model_copy(update={"calibration": cal})
    header = (f"# {profile.name}: written by `simmoe calibrate`; raw measurements in {json_path.name} "
              f"(`simmoe calibrate --from {json_path.name}` fits it again).\n"
              "# Schema: hwprofiles/README.md. calibration.provenance says where each figure comes from; re-run\n"
              "# the calibration rather than editing fitted figures.\n")
    text = dumps(measurements)
    with atomic_path(json_path) as tmp_json, atomic_path(out) as tmp_yaml:
        tmp_json.write_text(text, encoding="utf-8")
        tmp_yaml.write_text(header + dump_profile(profile), encoding="utf-8")
        load_profile(tmp_yaml)  # what we write must load
    return out, json_path


def _gbps_at(table: Any, size: int) -> str:
    from simmoe.engine.costs import copy_table_us

    return f"{size / (copy_table_us(table, size) * 1e3):.3g}"


def format_summary(res: CalibrationResult, paths: tuple[Path, Path] | None = None) -> str:
    """Human-readable result for stdout: the figures, the tables, where each figure comes from, residuals."""
    p, fig = res.profile, res.figures
    lines = []
    if res.device == "cpu" and not res.as_device:
        base = p.calibration.machine.get("base_profile", "?") if p.calibration else "?"
        lines.append(f"CPU calibration (host of offloaded experts): the GPU, PCIe and host figures are BORROWED "
                     f"from {base}, not measured.")
    elif res.as_device:
        lines.append("CPU calibrated as the compute device: its GEMM and memory rates, its expert tables, memcpy "
                     "as the link, its dispatch cost as the launch cost.")
    lines.append(f"CPU {p.cpu.name}, {p.cpu.cores} threads:")
    for k, label in (("cpu.dispatch_us", "eager op dispatch"), ("cpu.copy_issue_us", "small copy call"),
                     ("cpu.sync_us", ".item() read-back")):
        if k in fig:
            lines.append(f"  {label:<24} {fig[k]:10.2f} us per call")
    if "cpu.membw_gbps" in fig:
        lines.append(f"  memory bandwidth (copy)  {fig['cpu.membw_gbps']:10.2f} GB/s")
    for k, v in fig.items():
        if k.startswith("cpu.gemm_gflops:"):
            lines.append(f"  GEMM peak {k.split(':', 1)[1]:<14} {v:10.2f} GFLOP/s")
    lines.append(f"  expert fit: overhead {p.cpu.expert_overhead_us:g} us, compute "
                 f"{p.cpu.peak_gflops * p.cpu.matmul_efficiency:.4g} GFLOP/s, stream "
                 f"{p.cpu.memory_gbps * p.cpu.membw_efficiency:.4g} GB/s")
    cpu = res.measurements[(res.measurements["kind"] == "expert_ffn") & (res.measurements["device"] == "cpu")]
    for (threads, key), s in cpu.groupby(["threads", "name"], sort=True):
        s = s.sort_values("tokens")
        cells = ", ".join(f"{n}:{us:.4g}" for n, us in zip(s["tokens"], s["median_us"], strict=True))
        mark = " (in the profile)" if int(threads) == res.threads else ""
        lines.append(f"  expert {key} at {threads} threads{mark}, us by tokens: {cells}")
    if res.device == "cuda" or res.as_device:
        lines.append(f"{'GPU' if res.device == 'cuda' else 'Device'} {p.gpu.name}:")
        for k, label in (("gpu.launch_us", "kernel launch (host)"), ("gpu.copy_issue_us", "copy issue (host)"),
                         ("gpu.sync_us", "sync read-back (host)"), ("gpu.kernel_min_us", "shortest kernel")):
            if k in fig:
                lines.append(f"  {label:<24} {fig[k]:10.2f} us")
        lines.append(f"  launch cost in the profile {p.host.launch_overhead_us:8.2f} us per kernel")
        for nm, f in res.fits.copies.items():
            lines.append(f"  {nm:<24} {f.gbps:10.2f} GB/s  latency {f.latency_us:.2f} us (one-number fit, "
                         f"residual {f.rel_rms:.1%})")
        for kind, t in p.pcie.copy_tables.items():
            sizes = [s for s in (2**16, 2**20, 2**24, 2**26, 2**28, 2**30) if t.bytes[0] <= s <= t.bytes[-1]]
            cells = ", ".join(f"{s >> 10} KiB:{_gbps_at(t, s)}" if s < 2**20 else f"{s >> 20} MiB:{_gbps_at(t, s)}"
                              for s in sizes)
            lines.append(f"  {kind:<24} table, floor {t.us[0]:.1f} us; GB/s by size: {cells}")
        if "gpu.copy_compute_overlap" in fig:
            lines.append(f"  copy/compute overlap     {fig['gpu.copy_compute_overlap']:10.0%}")
        if "pcie.h2d_d2h_overlap" in fig:
            lines.append(f"  H2D/D2H overlap          {fig['pcie.h2d_d2h_overlap']:10.0%}  "
                         f"(copy_engines {p.pcie.copy_engines})")
        for key, t in p.kernels.expert_ffn_gpu.items():
            cells = ", ".join(f"{n}:{us:.4g}" for n, us in zip(t.tokens, t.us, strict=True))
            lines.append(f"  expert {key} us by tokens: {cells}")
    lines.append("fit residuals (relative RMS; check: = |predicted / held-out measurement - 1|):")
    for k, v in res.fits.residuals.items():
        lines.append(f"  {k:<52} {v:8.2%}")
    for fit in res.fits.experts.values():
        for n in fit.notes:
            lines.append(f"  note ({fit.name}): {n}")
    lines += origin_lines(p)
    if paths:
        lines.append(f"wrote {paths[0]} and {paths[1]}")
    return "\n".join(lines)
