"""Figures of replay results (matplotlib): hit rate vs cache size, latency breakdown, per-resource timeline,
GPU memory over time, Pareto fronts, and the one-page overview `simmoe replay --plot` writes.

Every function takes data and an optional `ax`, draws, and returns the Axes (or a Figure for `overview`).
New figures are `matplotlib.figure.Figure` objects, not pyplot ones: no global state, no display needed
(safe on headless machines and in loops); a notebook shows a returned Figure like any other.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, PercentFormatter

if TYPE_CHECKING:  # pragma: no cover
    from simmoe.engine.results import Result
    from simmoe.hw.profile import HwProfile
    from simmoe.policies.base import PolicySet
    from simmoe.trace.format import Trace

GIB = 2**30

# Timeline tracks, top to bottom, as recorded by simmoe.engine.timeline.
TRACKS = ("dispatch", "gpu", "h2d", "d2h", "cpu", "nvme")
TRACK_LABELS = {"dispatch": "host dispatch", "gpu": "GPU compute", "h2d": "H2D copy", "d2h": "D2H copy",
                "cpu": "CPU experts", "nvme": "NVMe SSD reads"}
# Colours per kind of op (tab10); keys are event categories, plus "prefetch" for prefetch copies.
OP_COLORS = {"compute": "#1f77b4", "expert": "#2ca02c", "copy": "#ff7f0e", "prefetch": "#bcbd22",
             "cpu": "#9467bd", "launch": "#7f7f7f", "host": "#8c564b", "sync": "#d62728", "read": "#e377c2"}
OP_LABELS = {"compute": "dense kernels", "expert": "expert kernels", "copy": "expert / activation copy",
             "prefetch": "prefetch copy", "cpu": "CPU expert", "launch": "kernel launch", "host": "host work",
             "sync": "sync (host waits)", "read": "SSD read (tiers.py)"}
# Latency breakdown segments: (label, colour).
BREAKDOWN = (("compute", "#1f77b4"), ("copy stall", "#ff7f0e"), ("dispatch stall", "#7f7f7f"),
             ("CPU stall", "#9467bd"), ("other", "#d9d9d9"))


def _axes(ax: Axes | None, figsize: tuple[float, float] = (7.0, 4.5)) -> Axes:
    if ax is not None:
        return ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig.add_subplot()


def _policy_name(described: str) -> str:
    """'lru(slots_per_layer=4)' -> 'lru'; named systems and prefetch/placement parts are kept."""
    return " ".join(p.split("(")[0] for p in described.split())


# ---- hit rate vs cache size ----------------------------------------------------------------------------------
def sweep_cache_sizes(trace: Trace | str | Path, hw: HwProfile | str | Path,
                      policies: Sequence[str] | Mapping[str, Mapping[str, Any] | PolicySet], sizes: Iterable[int],
                      size_option: str = "slots_per_layer", **config: Any) -> pd.DataFrame:
    """Replay `trace` on `hw` for every policy and cache size; one row per run.

    `policies`: cache policy names, or a mapping label -> extra cache options, or label -> PolicySet (a cache
    composed with a prefetcher, placement, ...). Each size is set as the cache option `size_option` (default
    slots_per_layer). `config` goes to ReplayConfig (batch, max_requests, ...). Columns: policy (the label),
    size, cache_slots, cache_frac (of all experts of all MoE layers), hit_rate, hits, misses, tpot_ms (mean),
    tokens_per_s, bytes_h2d, prefetches, prefetch_used.
    """
    import dataclasses

    from simmoe.engine.replay import replay
    from simmoe.hw.profile import HwProfile, load_profile
    from simmoe.policies.base import PolicySet
    from simmoe.trace.format import Trace, read_trace

    tr = trace if isinstance(trace, Trace) else read_trace(trace)
    prof = hw if isinstance(hw, HwProfile) else load_profile(hw)
    pol = dict(policies) if isinstance(policies, Mapping) else {p: {} for p in policies}
    total = tr.num_layers * tr.spec.num_experts
    rows = []
    for name, opts in pol.items():
        for size in sizes:
            if isinstance(opts, PolicySet):
                pset = dataclasses.replace(opts, cache_options={**opts.cache_options, size_option: size})
            else:
                pset = PolicySet(cache=name, cache_options={**opts, size_option: size})
            s = replay(tr, prof, pset, **config).summary
            rows.append({"policy": name, "size": size, "cache_slots": s["cache_slots"],
                         "cache_frac": s["cache_slots"] / total, "hit_rate": s["hit_rate"], "hits": s["hits"],
                         "misses": s["misses"], "tpot_ms": s["tpot_ms"]["mean"],
                         "tokens_per_s": s["tokens_per_s"], "bytes_h2d": s["bytes_h2d"],
                         "prefetches": s["prefetches"], "prefetch_used": s["prefetch_used"]})
    return pd.DataFrame(rows)


def _hit_frame(data: pd.DataFrame | Iterable[Result]) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    return pd.DataFrame([{"policy": _policy_name(r.summary["policy"]), "cache_slots": r.summary["cache_slots"],
                          "hit_rate": r.summary["hit_rate"]} for r in data])


_Y_LABELS = {"hit_rate": "expert cache hit rate", "tpot_ms": "time per output token (ms, mean)",
             "tokens_per_s": "tokens/s", "bytes_h2d": "bytes copied to the GPU"}


def hit_rate_curve(data: pd.DataFrame | Iterable[Result], x: str = "cache_slots", ax: Axes | None = None,
                   y: str = "hit_rate") -> Axes:
    """Hit rate (or another column `y`: tpot_ms, tokens_per_s, bytes_h2d) vs cache size, one line per policy.
    `data`: a `sweep_cache_sizes` frame (columns policy, `x` and `y`) or Results (grouped by policy name,
    x = cache_slots; y = hit_rate)."""
    df = _hit_frame(data)
    missing = {"policy", y, x} - set(df.columns)
    if missing:
        raise ValueError(f"hit_rate_curve: data lacks column(s) {sorted(missing)}")
    ax = _axes(ax)
    for name, g in df.groupby("policy", sort=False):
        g = g.sort_values(x)
        ax.plot(g[x], g[y], marker="o", label=str(name))
    ax.set_xlabel({"cache_slots": "cache size (experts)", "cache_frac": "cache size (fraction of experts)",
                   "size": "cache size (experts per layer)"}.get(x, x))
    if x == "cache_frac":
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel(_Y_LABELS.get(y, y))
    if y == "hit_rate":
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylim(0, 1)
        ax.set_title("Hit rate vs cache size")
    else:
        ax.set_ylim(bottom=0)
        ax.set_title(f"{_Y_LABELS.get(y, y)} vs cache size")
    ax.grid(alpha=0.3)
    ax.legend(title="policy")
    return ax


# ---- latency breakdown ---------------------------------------------------------------------------------------
def breakdown_frame(results: Sequence[Result], labels: Sequence[str] | None = None,
                    phase: str = "decode") -> pd.DataFrame:
    """Per-token time (ms) split into GPU compute, GPU stalls (copy, dispatch, CPU) and the rest, per Result.

    The engine accounts every GPU-stream microsecond of a step as busy or one of the three stalls; `other` is
    what is left of the step latency (the final sync). phase: "decode", "prefill" or "all" steps."""
    if phase not in ("decode", "prefill", "all"):
        raise ValueError(f"phase must be decode, prefill or all, got {phase!r}")
    labels = list(labels) if labels is not None else _labels(results)
    if len(labels) != len(results):
        raise ValueError("one label per result")
    rows = []
    for r, lab in zip(results, labels):
        if r.summary.get("stall_ms", {}).get("copy") is None:
            raise ValueError(f"{lab}: no stall accounting (run with engine='fast')")
        df = r.steps if phase == "all" else r.steps[r.steps["kind"] == phase]
        n = int(df["tokens"].sum())
        if n == 0:
            raise ValueError(f"{lab}: no {phase} tokens")
        parts = {"compute": df["gpu_busy_us"].sum(), "copy stall": df["stall_copy_us"].sum(),
                 "dispatch stall": df["stall_dispatch_us"].sum(), "CPU stall": df["stall_cpu_us"].sum()}
        total = float(df["latency_us"].sum())
        parts["other"] = max(total - sum(parts.values()), 0.0)
        rows.append({"label": lab, "tokens": n, "total": total / n / 1e3,
                     **{k: float(v) / n / 1e3 for k, v in parts.items()}})
    return pd.DataFrame(rows)


def _labels(results: Sequence[Result]) -> list[str]:
    hws = {r.summary["hw"] for r in results}
    labs = [textwrap.fill(r.summary["policy"], 22) if len(hws) == 1
            else f"{textwrap.fill(r.summary['policy'], 22)}\n{r.summary['hw']}" for r in results]
    batches = {r.summary["batch"] for r in results}
    if len(batches) > 1:
        labs = [f"{lab}\nbatch {r.summary['batch']}" for lab, r in zip(labs, results)]
    return labs


def latency_breakdown(results: Sequence[Result], labels: Sequence[str] | None = None, phase: str = "decode",
                      ax: Axes | None = None) -> Axes:
    """Stacked bars, one per configuration: per-token latency = compute + copy / dispatch / CPU stalls + other."""
    df = breakdown_frame(results, labels, phase)
    ax = _axes(ax, (max(5.0, 1.3 * len(df) + 3), 4.5))
    xs = np.arange(len(df))
    bottom = np.zeros(len(df))
    for name, color in BREAKDOWN:
        vals = df[name].to_numpy()
        ax.bar(xs, vals, bottom=bottom, color=color, label=name, width=0.6)
        bottom += vals
    for xi, tot in zip(xs, df["total"]):
        ax.annotate(f"{tot:,.1f}", (xi, tot), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                    textcoords="offset points")
    ax.set_xticks(xs, df["label"], fontsize=8)
    ax.set_ylabel(f"time per {phase + ' ' if phase != 'all' else ''}token (ms)")
    ax.set_ylim(0, float(df["total"].max()) * 1.12 or 1.0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Where the time goes (GPU stream)")
    return ax


# ---- per-resource timeline -----------------------------------------------------------------------------------
def _window_events(result: Result, steps: tuple[int, int] | None):
    if not result.events:
        raise ValueError("no timeline recorded: replay with timeline_steps=(start, stop) "
                         "(CLI: --timeline-steps)")
    if steps is None:
        return result.events, None
    lo, hi = steps
    sd = result.steps[(result.steps["step"] >= lo) & (result.steps["step"] < hi)]
    if sd.empty:
        raise ValueError(f"steps {lo}:{hi} are not in this run")
    t0, t1 = float(sd["start_us"].iloc[0]), float(sd["end_us"].iloc[-1])
    evs = [e for e in result.events if t0 <= e.start < t1]
    if not evs:
        raise ValueError(f"steps {lo}:{hi} were not recorded (recorded window is set by timeline_steps)")
    return evs, sd


def _op_kind(ev) -> str:
    if ev.cat == "copy" and ev.name.startswith("prefetch"):
        return "prefetch"
    return ev.cat if ev.cat in OP_COLORS else "compute"


def step_timeline(result: Result, steps: tuple[int, int] | None = None, ax: Axes | None = None) -> Axes:
    """Gantt chart of the recorded ops per resource (host dispatch, GPU, H2D, D2H, CPU) for steps [a, b)
    (default: everything recorded). Dotted lines mark step starts. Time in ms of simulated time."""
    evs, sd = _window_events(result, steps)
    if sd is None:
        t0 = min(e.start for e in evs)
        t1 = max(e.end for e in evs)
        sd = result.steps[(result.steps["end_us"] > t0) & (result.steps["start_us"] < t1)]
    present = [t for t in TRACKS if any(e.track == t for e in evs)]
    present += sorted({e.track for e in evs} - set(TRACKS))
    ypos = {t: len(present) - 1 - i for i, t in enumerate(present)}
    bars: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for e in evs:
        bars.setdefault((e.track, _op_kind(e)), []).append((e.start / 1e3, max(e.end - e.start, 0.0) / 1e3))
    ax = _axes(ax, (11.0, 0.6 * len(present) + 2))
    for (track, kind), xr in bars.items():
        # edges in the face colour: ops shorter than a pixel still show as hairlines
        ax.broken_barh(xr, (ypos[track] - 0.38, 0.76), facecolors=OP_COLORS[kind], edgecolor=OP_COLORS[kind],
                       linewidth=0.3)
    ax.set_yticks([ypos[t] for t in present], [TRACK_LABELS.get(t, t) for t in present])
    ax.set_ylim(-0.6, len(present) - 0.4)
    lo = min(e.start for e in evs) / 1e3
    hi = max(e.end for e in evs) / 1e3
    ax.set_xlim(lo - 0.01 * (hi - lo), hi + 0.01 * (hi - lo))
    for row in sd.itertuples(index=False):
        x = row.start_us / 1e3
        if lo - 1e-9 <= x <= hi:
            ax.axvline(x, color="k", linestyle=":", linewidth=0.8)
            ax.annotate(f"{row.kind} {row.step}", (x, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(2, -10), textcoords="offset points", fontsize=7)
    kinds = [k for k in OP_COLORS if any(kk == k for _, kk in bars)]
    ax.legend(handles=[Patch(color=OP_COLORS[k], label=OP_LABELS[k]) for k in kinds], fontsize=7,
              loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=min(len(kinds), 4), frameon=False)
    ax.set_xlabel("simulated time (ms)")
    if steps:
        ax.set_title("Timeline, " + (f"step {steps[0]}" if steps[1] - steps[0] == 1
                                     else f"steps {steps[0]}-{steps[1] - 1}"))
    else:
        ax.set_title("Timeline")
    return ax


# ---- memory over time ----------------------------------------------------------------------------------------
def memory_frame(result: Result) -> pd.DataFrame:
    """GPU memory per step (bytes, at the step's end): dense weights, workspace (activations + staging),
    KV cache of the active requests, expert cache occupancy."""
    mem, df = result.memory, result.steps
    need = {"dense", "activations", "staging", "expert_bytes", "usable"}
    if not need <= set(mem):
        raise ValueError(f"result.memory lacks {sorted(need - set(mem))}")
    n = len(df)
    return pd.DataFrame({
        "step": df["step"].to_numpy(), "end_us": df["end_us"].to_numpy(),
        "dense": np.full(n, mem["dense"]), "workspace": np.full(n, mem["activations"] + mem["staging"]),
        "kv_cache": df["kv_bytes"].to_numpy(),
        "expert_cache": df["cache_occupancy"].to_numpy() * mem["expert_bytes"]})


def memory_over_time(result: Result, ax: Axes | None = None) -> Axes:
    """Stacked GPU memory per step (GiB) with the usable capacity and the expert cache's capacity."""
    mf = memory_frame(result)
    mem = result.memory
    ax = _axes(ax)
    parts = ("dense", "workspace", "kv_cache", "expert_cache")
    labels = ("dense weights", "activations + staging", "KV cache", "expert cache")
    colors = ("#7f7f7f", "#c7c7c7", "#17becf", "#ff7f0e")
    ax.stackplot(mf["step"], *[mf[p] / GIB for p in parts], labels=labels, colors=colors, step="post")
    usable = mem["usable"] / GIB
    ax.axhline(usable, color="k", linestyle="--", linewidth=1, label=f"usable GPU memory ({usable:,.1f} GiB)")
    if mem.get("cache_slots"):
        cap = (mem["dense"] + mem["activations"] + mem["staging"] + mem.get("kv_reserved", 0)
               + mem["cache_slots"] * mem["expert_bytes"]) / GIB
        ax.axhline(cap, color="#ff7f0e", linestyle=":", linewidth=1, label="planned (cache full, KV reserved)")
    ax.set_xlabel("step")
    ax.set_ylabel("GPU memory (GiB)")
    ax.set_xlim(mf["step"].min(), max(mf["step"].max(), mf["step"].min() + 1))
    peak = float(mf[["dense", "workspace", "kv_cache", "expert_cache"]].sum(axis=1).max()) / GIB
    # a small model on a big GPU would be a sliver under the usable line: zoom to the data then
    ax.set_ylim(0, usable * 1.08 if peak > 0.3 * usable else peak * 1.35)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    ax.set_title("GPU memory")
    return ax


# ---- Pareto front --------------------------------------------------------------------------------------------
def pareto_front(df: pd.DataFrame, x: str, y: str, label: str | None = None,
                 minimize: tuple[bool, bool] = (True, True), ax: Axes | None = None) -> Axes:
    """All points in grey, the Pareto-optimal ones (simmoe.planning.pareto_mask) highlighted, joined as a
    staircase and labelled."""
    from simmoe.planning import pareto_mask

    mask = pareto_mask(df[x], df[y], minimize)
    ax = _axes(ax)
    ax.scatter(df.loc[~mask, x], df.loc[~mask, y], color="#bbbbbb", s=20, label="dominated")
    front = df[mask].sort_values(x)
    ax.scatter(front[x], front[y], color="#d62728", s=36, zorder=3, label="Pareto-optimal")
    ax.plot(front[x], front[y], color="#d62728", linewidth=1, drawstyle="steps-post" if minimize[1] == minimize[0]
            else "default", zorder=2)
    if label is not None:
        for _, r in front.iterrows():
            ax.annotate(str(r[label]), (r[x], r[y]), xytext=(4, 4), textcoords="offset points", fontsize=7)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Pareto front")
    return ax


# ---- overview ------------------------------------------------------------------------------------------------
def _layer_frame(result: Result) -> pd.DataFrame | None:
    """Per-MoE-layer hits/misses if the engine recorded them (Result.layers), else None."""
    layers = getattr(result, "layers", None)
    if isinstance(layers, pd.DataFrame) and {"layer", "hits", "misses"} <= set(layers.columns):
        return layers
    return None


def _smooth_share(num: np.ndarray, den: np.ndarray, w: int) -> np.ndarray:
    """sum(num) / sum(den) over a centred window of w steps (so busy steps weigh more)."""
    k = np.ones(w)
    n, d = np.convolve(num, k, "same"), np.convolve(den, k, "same")
    return np.divide(n, d, out=np.zeros(len(num)), where=d > 0)


def layer_hit_rate(result: Result, ax: Axes | None = None) -> Axes:
    """Hit rate per MoE layer (needs Result.layers); otherwise per step, smoothed over 32 steps. The share of
    expert accesses computed on the CPU is drawn too when there are any."""
    ax = _axes(ax)
    lf = _layer_frame(result)
    if lf is not None:
        acc = (lf["hits"] + lf["misses"]).to_numpy()
        rate = np.divide(lf["hits"].to_numpy(), acc, out=np.zeros(len(lf)), where=acc > 0)
        ax.bar(lf["layer"], rate, color="#2ca02c", label="GPU cache hits")
        if "cpu_experts" in lf and lf["cpu_experts"].sum():
            cpu = np.divide(lf["cpu_experts"].to_numpy(), acc, out=np.zeros(len(lf)), where=acc > 0)
            ax.bar(lf["layer"], cpu, bottom=rate, color="#9467bd", label="computed on CPU")
        ax.set_xlabel("MoE layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title("Expert accesses per MoE layer")
    else:
        df = result.steps
        acc = (df["hits"] + df["misses"]).to_numpy(dtype=float)
        w = min(32, max(len(df), 1))
        ax.plot(df["step"], _smooth_share(df["hits"].to_numpy(dtype=float), acc, w), color="#2ca02c",
                linewidth=1, label="GPU cache hits")
        if df["cpu_experts"].sum():
            ax.plot(df["step"], _smooth_share(df["cpu_experts"].to_numpy(dtype=float), acc, w), color="#9467bd",
                    linewidth=1, label="computed on CPU")
        ax.set_xlabel("step")
        ax.set_title(f"Expert accesses per step ({w}-step window)")
    ax.axhline(result.summary["hit_rate"], color="k", linestyle="--", linewidth=1,
               label=f"overall hit rate {100 * result.summary['hit_rate']:.1f}%")
    ax.set_ylabel("share of expert accesses")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return ax


def step_latency(result: Result, ax: Axes | None = None) -> Axes:
    """Latency of every step (ms), prefill and decode steps in their own colours; log scale if they differ
    by more than 20x."""
    df = result.steps
    ax = _axes(ax)
    for kind, color in (("prefill", "#9467bd"), ("decode", "#1f77b4")):
        d = df[df["kind"] == kind]
        if len(d):
            ax.scatter(d["step"], d["latency_us"] / 1e3, s=4, color=color, label=f"{kind} ({len(d):,} steps)")
    p50 = result.summary["step_ms"]["p50"]
    if p50 is not None:
        ax.axhline(p50, color="k", linestyle="--", linewidth=1, label=f"decode p50 {p50:,.1f} ms")
    lat = df["latency_us"].to_numpy()
    if len(lat) and lat.min() > 0 and lat.max() / lat.min() > 20:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("step latency (ms)")
    ax.legend(fontsize=7, markerscale=3)
    ax.grid(alpha=0.3)
    ax.set_title("Latency per step")
    return ax


def _overview_window(result: Result, n: int = 2) -> tuple[int, int] | None:
    """The first `n` decode steps among those recorded (a prefill step if nothing else was recorded)."""
    if not result.events:
        return None
    t0 = min(e.start for e in result.events)
    t1 = max(e.end for e in result.events)
    df = result.steps
    rec = df[(df["start_us"] >= t0 - 1e-6) & (df["start_us"] < t1)]
    if rec.empty:
        return None
    dec = rec[rec["kind"] == "decode"]
    first = int((dec if len(dec) else rec)["step"].iloc[0])
    last = int(rec["step"].iloc[-1])
    return first, min(first + n, last + 1)


def overview(result: Result, timeline_steps: tuple[int, int] | None = None) -> Figure:
    """One page: hit rate per layer (or per step), latency per step, the timeline of a few recorded steps,
    GPU memory over steps. `timeline_steps` defaults to the first two recorded decode steps."""
    s = result.summary
    fig = Figure(figsize=(15, 9.5), layout="constrained")
    gs = fig.add_gridspec(2, 2, height_ratios=(1, 1))
    layer_hit_rate(result, fig.add_subplot(gs[0, 0]))
    step_latency(result, fig.add_subplot(gs[0, 1]))
    ax_tl = fig.add_subplot(gs[1, 0])
    win = timeline_steps or _overview_window(result)
    if win is not None:
        step_timeline(result, win, ax_tl)
    else:
        ax_tl.set_axis_off()
        ax_tl.text(0.5, 0.5, "no timeline recorded\n(replay with --timeline-steps / timeline_steps)",
                   ha="center", va="center", transform=ax_tl.transAxes)
    memory_over_time(result, fig.add_subplot(gs[1, 1]))
    tpot = s["tpot_ms"]["mean"]
    fig.suptitle(
        f"{s['model']} on {s['hw']}  |  {s['policy']}  |  batch {s['batch']}  |  hit rate "
        f"{100 * s['hit_rate']:.1f}%  |  TPOT {'-' if tpot is None else f'{tpot:,.1f} ms'}  |  "
        f"{s['tokens_per_s']:,.2f} tok/s  |  peak {s['peak_gpu_mem_bytes'] / GIB:,.2f} GiB", fontsize=11)
    return fig


def save(fig: Figure, path: str | Path, dpi: int = 110) -> None:
    """Write a figure atomically (format from the suffix)."""
    from simmoe.fileio import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)


def check_image_path(path: str | Path, flag: str) -> None:
    """Fail before any work if `path` cannot take a figure (folder missing, unknown image format)."""
    from simmoe.errors import InputError
    from simmoe.fileio import check_output

    check_output(str(path), flag)
    fmt = Path(path).suffix.lstrip(".").lower()
    known = Figure().canvas.get_supported_filetypes()
    if fmt not in known:
        raise InputError(flag, str(path), f"unknown image format {fmt!r}; use one of {', '.join(sorted(known))}")
