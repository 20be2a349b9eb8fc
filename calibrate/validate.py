"""`simmoe validate`: run the real offloaded executor and the simulator on the same trace, configurations and
profile, and report how far the simulation is from the measurement.

Configurations are written `POLICY[:k=v,...][+KIND=NAME[:k=v,...]]...` with KIND prefetch, placement, precision
or routing, e.g.
`resident`, `ondemand`, `lru:slots_per_layer=4`, `cpu-experts`, `lru:slots_per_layer=4+prefetch=oracle`.

What is compared, per (configuration, batch): the decode steps' latencies (one decode step = one token of
every running request; the executor times each step from its start to the sampled tokens on the host),
mean and p90, measured vs simulated; and the cache decisions (hits, misses, copies, CPU-computed experts,
prefetches), which must be equal because both sides run the same policy objects in the same order.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simmoe.errors import InputError
from simmoe.fileio import atomic_path
from simmoe.hw.profile import HwProfile
from simmoe.models.spec import ModelSpec
from simmoe.policies.base import PolicySet
from simmoe.runtime.profile import RuntimeProfile
from simmoe.trace.format import Trace, read_trace, validate

COUNT_KEYS = ("hits", "misses", "copies", "cpu_experts", "prefetches")
EXECUTOR_RUNTIME = "simmoe-executor"  # the runtime that describes the executor's own code (the default)
KINDS = ("prefetch", "placement", "precision", "routing")  # the kinds a configuration may add after '+'


# ---- configurations -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    label: str
    pset: PolicySet


def _parse_opts(text: str, source: str) -> dict[str, Any]:
    from simmoe.policies.config import parse_kv

    return parse_kv([t for t in text.split(",") if t], source) if text else {}


def parse_config(text: str) -> Config:
    """'lru:slots_per_layer=4+prefetch=oracle:lookahead=1' -> Config (policies and options checked)."""
    from simmoe.engine.setup import resolve

    src = f"--configs {text!r}"
    parts = [p.strip() for p in text.split("+")]
    if not parts or not parts[0]:
        raise InputError(src, None, "empty configuration")
    cache, _, copts = parts[0].partition(":")
    kw: dict[str, Any] = {"cache": cache, "cache_options": _parse_opts(copts, src)}
    for p in parts[1:]:
        kind, eq, rest = p.partition("=")
        if not eq or kind not in KINDS or not rest:
            raise InputError(src, p or None, f"expected KIND=NAME[:k=v,...] after '+', KIND one of "
                             f"{', '.join(KINDS)}")
        if kind in kw:
            raise InputError(src, kind, "given twice")
        name, _, opts = rest.partition(":")
        kw[kind] = name
        kw[f"{kind}_options"] = _parse_opts(opts, src)
    pset = PolicySet(**kw)
    resolve(pset)  # unknown policies or options fail here, before anything is measured
    return Config(text, pset)


def has_policy(name: str, kind: str) -> bool:
    from simmoe.policies.registry import all_policies

    return any(c.name == name and c.kind == kind for c in all_policies())


def default_configs(spec: ModelSpec) -> list[str]:
    """resident, ondemand, LRU at 1/4, 1/2 and 3/4 of each layer's experts, cpu-experts, and LRU 1/2 with the
    oracle next-layer prefetch when a prefetch policy named `oracle` is registered."""
    E = spec.num_experts
    sizes = list(dict.fromkeys(max(1, E * q // 4) for q in (1, 2, 3)))
    out = ["resident", "ondemand", *(f"lru:slots_per_layer={s}" for s in sizes), "cpu-experts"]
    if has_policy("oracle", "prefetch"):
        out.append(f"lru:slots_per_layer={max(1, E // 2)}+prefetch=oracle")
    return out


# ---- inputs --------------------------------------------------------------------------------------------------
def truncate_layers(trace: Trace, layers: int | None) -> Trace:
    """The trace's first `layers` MoE layers (the simulator takes the model's first layers to match)."""
    if layers is None or layers >= trace.num_layers:
        return trace
    if layers < 1:
        raise InputError("--layers", None, f"must be >= 1, got {layers}")
    cut = slice(0, layers)
    tr = Trace(experts=np.ascontiguousarray(trace.experts[:, cut]), request=trace.request, phase=trace.phase,
               meta=dict(trace.meta),
               gates=None if trace.gates is None else np.ascontiguousarray(trace.gates[:, cut]),
               arrival_s=trace.arrival_s,
               predicted=None if trace.predicted is None else np.ascontiguousarray(trace.predicted[:, cut]),
               source=trace.source)
    validate(tr)
    return tr


def available_host_bytes() -> int:
    """MemAvailable from /proc/meminfo (bytes); total memory when it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    from simmoe.calibrate.machine import memory_gib

    return int(memory_gib() * 2**30)


def check_host_memory(spec: ModelSpec, device: str, source: str, available: int | None = None) -> None:
    """The executor pins every routed expert in host memory (and, on the CPU, the dense part too)."""
    from simmoe.calibrate.executor import host_bytes_needed

    need = host_bytes_needed(spec) + (spec.dense_bytes() if not device.startswith("cuda") else 0)
    have = available_host_bytes() if available is None else available
    if need > 0.85 * have:
        raise InputError(source, "model", f"{spec.name} with {spec.num_moe_layers} MoE layers needs "
                         f"{need / 2**30:.1f} GiB of host memory for its experts, this machine has "
                         f"{have / 2**30:.1f} GiB available: use --layers N to keep the first N MoE layers")


# ---- running ---------------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One (configuration, batch): measured vs simulated decode-step latency and cache decisions."""

    config: str
    batch: int
    policy: str
    cache_slots: int
    decode_steps: int
    measured_mean_ms: float
    measured_p90_ms: float
    simulated_mean_ms: float
    simulated_p90_ms: float
    error_mean: float  # simulated / measured - 1
    error_p90: float
    measured: dict[str, int]
    simulated: dict[str, int]
    counts_match: bool
    measured_prefill_mean_ms: float = math.nan
    simulated_prefill_mean_ms: float = math.nan


@dataclass
class Report:
    trace: str
    model: str
    moe_layers: int
    hw: str
    hw_source: str
    device: str
    date: str
    machine: dict[str, str]
    runtime: str = "generic"
    rows: list[Row] = field(default_factory=list)
    steps: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def mape_mean(self) -> float:
        e = [abs(r.error_mean) for r in self.rows if math.isfinite(r.error_mean)]
        return float(np.mean(e)) if e else math.nan

    @property
    def mape_p90(self) -> float:
        e = [abs(r.error_p90) for r in self.rows if math.isfinite(r.error_p90)]
        return float(np.mean(e)) if e else math.nan

    @property
    def counts_match(self) -> bool:
        return all(r.counts_match for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("trace", "model", "moe_layers", "hw", "hw_source", "device", "runtime",
                                           "date", "machine", "notes")}
        d["mape_mean"] = self.mape_mean
        d["mape_p90"] = self.mape_p90
        d["counts_match"] = self.counts_match
        d["rows"] = [r.__dict__ for r in self.rows]
        return _clean(d)


def _pcts(a: np.ndarray) -> tuple[float, float]:
    if len(a) == 0:
        return math.nan, math.nan
    return float(np.mean(a)), float(np.percentile(a, 90))


def run_validation(
    trace: Trace,
    hw: HwProfile,
    configs: Sequence[Config],
    batches: Sequence[int] = (1, 8),
    *,
    device: str = "cuda",
    hw_label: str | None = None,
    threads: int | None = None,
    max_requests: int | None = None,
    progress: bool = False,
    runtime: RuntimeProfile | None = None,
    host_memory: str = "pinned",
    copy_stream: str | None = None,
) -> Report:
    """Measure every (configuration, batch) with the executor, simulate it with the same runtime and replay
    settings, compare."""
    from simmoe.calibrate.executor import OffloadedExecutor, check_model
    from simmoe.calibrate.machine import machine_facts
    from simmoe.engine.config import ReplayConfig
    from simmoe.engine.replay import Replay
    from simmoe.runtime.profile import load_runtime

    runtime = runtime or load_runtime(EXECUTOR_RUNTIME)
    spec = trace.spec
    check_model(spec, trace.source)
    check_host_memory(spec, device, trace.source)
    hw_label = hw_label or hw.name
    exe = OffloadedExecutor(trace, hw, device=device, threads=threads, progress=progress, host_memory=host_memory)
    rep = Report(trace=trace.source, model=spec.name, moe_layers=spec.num_moe_layers, hw=hw_label,
                 hw_source=hw.source, device=device,
                 date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 machine=machine_facts(device, threads), runtime=runtime.name)
    if not device.startswith("cuda"):
        rep.notes.append("the executor ran on the CPU (tiny/test mode): its latencies are CPU times and are not "
                         "comparable with a GPU profile; the cache decisions are")
    frames = []
    for b in batches:
        for cfg in configs:
            meas = exe.run(cfg.pset, b, label=cfg.label, max_requests=max_requests, runtime=runtime,
                           copy_stream=copy_stream)
            sim = Replay(trace, hw, cfg.pset, ReplayConfig(batch=b, max_requests=max_requests,
                                                           host_memory=host_memory, copy_stream=copy_stream),
                         hw_name=hw_label, runtime=runtime).run()
            sdf = sim.steps
            mdf = meas.steps
            m_dec = mdf[mdf["kind"] == "decode"]["latency_us"].to_numpy(float) / 1e3
            s_dec = sdf[sdf["kind"] == "decode"]["latency_us"].to_numpy(float) / 1e3
            m_pre = mdf[mdf["kind"] == "prefill"]["latency_us"].to_numpy(float) / 1e3
            s_pre = sdf[sdf["kind"] == "prefill"]["latency_us"].to_numpy(float) / 1e3
            mm, mp = _pcts(m_dec)
            sm, sp = _pcts(s_dec)
            sim_counts = {k: int(sim.summary[k]) for k in COUNT_KEYS}
            meas_counts = {k: int(meas.counts[k]) for k in COUNT_KEYS}
            rep.rows.append(Row(
                config=cfg.label, batch=b, policy=sim.summary["policy"], cache_slots=int(sim.summary["cache_slots"]),
                decode_steps=len(m_dec), measured_mean_ms=mm, measured_p90_ms=mp, simulated_mean_ms=sm,
                simulated_p90_ms=sp, error_mean=sm / mm - 1 if mm > 0 else math.nan,
                error_p90=sp / mp - 1 if mp > 0 else math.nan, measured=meas_counts, simulated=sim_counts,
                counts_match=meas_counts == sim_counts and len(mdf) == len(sdf),
                measured_prefill_mean_ms=_pcts(m_pre)[0], simulated_prefill_mean_ms=_pcts(s_pre)[0],
            ))
            f = pd.DataFrame({"config": cfg.label, "batch": b, "step": mdf["step"], "kind": mdf["kind"],
                              "tokens": mdf["tokens"], "measured_us": mdf["latency_us"],
                              "simulated_us": sdf["latency_us"].to_numpy()[: len(mdf)],
                              "hits": mdf["hits"], "misses": mdf["misses"],
                              "simulated_hits": sdf["hits"].to_numpy()[: len(mdf)],
                              "simulated_misses": sdf["misses"].to_numpy()[: len(mdf)]})
            frames.append(f)
    rep.steps = pd.concat(frames, ignore_index=True) if frames else None
    return rep


# ---- report -----------------------------------------------------------------------------------------------------
def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def _pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{100 * x:+.1f}%"


def _ms(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:,.2f}"


def format_markdown(rep: Report, figure: str | None = None) -> str:
    lines = [
        f"# Validation: {rep.model} ({rep.moe_layers} MoE layers) on {rep.hw}",
        "",
        f"- trace: `{rep.trace}`",
        f"- profile: `{rep.hw}` (source: {rep.hw_source}); runtime `{rep.runtime}`; executor device: {rep.device}; "
        f"date {rep.date}",
        "- machine: " + ", ".join(f"{k} {v}" for k, v in rep.machine.items() if k in
                                  ("gpu", "gpu_driver", "pcie_link", "cpu", "cpu_threads_used", "torch")),
        "- per-token latency = decode-step latency (one token of every running request), measured from the "
        "step's start to the sampled tokens on the host; error = simulated / measured - 1",
        f"- **mean absolute error of the mean: {_pct(rep.mape_mean).lstrip('+')}**, of the p90: "
        f"{_pct(rep.mape_p90).lstrip('+')}; cache decisions equal in every configuration: "
        f"**{'yes' if rep.counts_match else 'NO'}**",
    ]
    for n in rep.notes:
        lines.append(f"- note: {n}")
    lines += ["", "| batch | configuration | slots | decode steps | measured mean | simulated mean | error | "
              "measured p90 | simulated p90 | error p90 | hits (meas/sim) | misses (meas/sim) | equal |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in rep.rows:
        lines.append(
            f"| {r.batch} | `{r.config}` | {r.cache_slots} | {r.decode_steps} | {_ms(r.measured_mean_ms)} | "
            f"{_ms(r.simulated_mean_ms)} | {_pct(r.error_mean)} | {_ms(r.measured_p90_ms)} | "
            f"{_ms(r.simulated_p90_ms)} | {_pct(r.error_p90)} | {r.measured['hits']}/{r.simulated['hits']} | "
            f"{r.measured['misses']}/{r.simulated['misses']} | {'yes' if r.counts_match else '**NO**'} |")
    lines += ["", "Latencies in ms. Per-step measured and simulated times: `steps.csv`; everything: `report.json`."]
    if figure:
        lines += ["", f"![measured vs simulated]({figure})"]
    return "\n".join(lines) + "\n"


def plot(rep: Report, path: Path) -> None:
    from matplotlib.figure import Figure

    batches = sorted({r.batch for r in rep.rows})
    fig = Figure(figsize=(max(6, 1.3 * len(rep.rows)), 4.2))
    axes = fig.subplots(1, len(batches), squeeze=False)
    for ax, b in zip(axes[0], batches):
        rows = [r for r in rep.rows if r.batch == b]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r.measured_mean_ms for r in rows], 0.4, label="measured mean", color="#4c72b0")
        ax.bar(x + 0.2, [r.simulated_mean_ms for r in rows], 0.4, label="simulated mean", color="#dd8452")
        ax.scatter(x - 0.2, [r.measured_p90_ms for r in rows], marker="_", s=200, color="k", label="p90", zorder=3)
        ax.scatter(x + 0.2, [r.simulated_p90_ms for r in rows], marker="_", s=200, color="k", zorder=3)
        for xi, r in zip(x, rows):
            top = max(r.measured_p90_ms, r.simulated_p90_ms, r.measured_mean_ms, r.simulated_mean_ms)
            if math.isfinite(top):
                ax.annotate(_pct(r.error_mean), (xi, top), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, [r.config for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("decode step latency (ms)")
        ax.set_title(f"batch {b}")
        ax.legend(fontsize=8)
    fig.suptitle(f"{rep.model} ({rep.moe_layers} MoE layers), {rep.hw}: measured vs simulated "
                 f"(MAPE {_pct(rep.mape_mean).lstrip('+')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(rep: Report, out_dir: str | Path) -> dict[str, Path]:
    """report.md, report.json, report.png and steps.csv in `out_dir` (created; each file written atomically)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("--out", str(out), "exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "json": out / "report.json", "figure": out / "report.png",
             "steps": out / "steps.csv"}
    with atomic_path(paths["figure"]) as tmp:
        plot(rep, tmp)
    with atomic_path(paths["json"]) as tmp:
        tmp.write_text(json.dumps(rep.to_dict(), indent=2) + "\n")
    with atomic_path(paths["steps"]) as tmp:
        (rep.steps if rep.steps is not None else pd.DataFrame()).to_csv(tmp, index=False, float_format="%.3f")
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(format_markdown(rep, paths["figure"].name))
    return paths


def load_inputs(trace_path: str | Path, layers: int | None) -> Trace:
    return truncate_layers(read_trace(trace_path), layers)
