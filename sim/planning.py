"""Capacity planning: the cheapest configurations (hw x policy x cache size x batch) that meet latency SLOs.

The search runs through the sweep runner (so it is parallel and resumable with `out`); each configuration
is then judged against the SLOs: feasible ones are ranked by cost per million decode tokens (the profile's
`price_usd_per_hour` over the simulated throughput), infeasible ones report their binding constraint (the
SLO violated by the largest factor, or the memory limit when the configuration does not fit).
"""

from __future__ import annotations

import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simmoe.errors import InputError

GIB = 2**30
_LAT = re.compile(r"^([a-z0-9]+)_(mean|p50|p90|p99)_ms$")  # tpot_p90_ms -> tpot_ms.p90


@dataclass(frozen=True)
class Slo:
    name: str  # as the user wrote it
    metric: str  # flattened summary key
    op: str  # "<=" (an upper bound: latencies) or ">=" (a lower bound: throughput, attainment)
    limit: float

    def ratio(self, value: float) -> float:
        """> 1 when violated: how many times over (or under) the limit the value is."""
        if self.op == "<=":
            return value / self.limit if self.limit > 0 else (math.inf if value > 0 else 0.0)
        return self.limit / value if value > 0 else math.inf

    def describe(self, value: float) -> str:
        return f"{self.metric} {value:.4g} {'>' if self.op == '<=' else '<'} {self.limit:g} " \
               f"({(self.ratio(value) - 1) * 100:+.1f}%)"


def parse_slo(text: str) -> Slo:
    """`tpot_p90_ms=150` (latency percentile, an upper bound), `KEY<=V`, or `KEY>=V` for any summary key
    (`tokens_per_s>=20`, `slo_attainment>=0.99`)."""
    m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(<=|>=|=)\s*([^=<>]+)$", text)
    if not m:
        raise InputError("--slo", text, "expected METRIC=LIMIT (e.g. tpot_p90_ms=150) or METRIC>=LIMIT")
    name, op, raw = m.groups()
    try:
        limit = float(raw)
    except ValueError:
        raise InputError("--slo", text, f"limit {raw.strip()!r} is not a number") from None
    if not math.isfinite(limit) or limit < 0:
        raise InputError("--slo", text, "limit must be a finite number >= 0")
    lat = _LAT.match(name)
    metric = f"{lat.group(1)}_ms.{lat.group(2)}" if lat else name
    return Slo(name, metric, "<=" if op in ("=", "<=") else ">=", limit)


def _csv(text: str | None, flag: str, cast=str) -> list | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise InputError(flag, text, "empty list")
    try:
        return [cast(t) for t in items]
    except ValueError:
        raise InputError(flag, text, f"expected a comma-separated list of {cast.__name__}") from None


def search_space(trace: str, hws: list[str] | None = None, policies: list[str] | None = None,
                 slots: list[int | None] | None = None, batches: list[int] | None = None,
                 rate: float | None = None, base: dict[str, Any] | None = None,
                 runtimes: list[str] | None = None) -> list[dict[str, Any]]:
    """Flat parameter rows: hw x runtime x policy x cache size (for policies with slots_per_layer) x batch
    (runtimes None: each policy's own, i.e. the named system's, else generic)."""
    from simmoe.engine.config import ReplayConfig
    from simmoe.hw.profile import list_profiles, load_profile
    from simmoe.policies.registry import get_policy
    from simmoe.trace.format import read_trace

    if hws is None:  # every bundled profile that has a price
        hws = [h for h in list_profiles() if load_profile(h).price_usd_per_hour is not None]
    policies = policies or ["lru", "ondemand", "cpu-experts"]
    batches = batches or [1, 4]
    if slots is None:
        e = read_trace(trace).spec.num_experts
        slots = sorted({max(1, e // 8), max(1, e // 4), max(1, e // 2)}) + [None]  # None: all free memory
    extra = dict(base or {})
    if rate is not None:
        extra.update(rate=rate, arrivals="poisson")
    # the values replay would reject, rejected up front (not a table of configurations that all failed)
    for b in batches:
        ReplayConfig(batch=b, **extra)
    for s in slots:
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 0):
            raise InputError("--slots", None, f"cache sizes must be integers >= 0 (or 'auto'), got {s!r}")
    if runtimes is not None:
        from simmoe.runtime.profile import resolve_runtime_path

        for r in runtimes:
            resolve_runtime_path(r)
    tspec = read_trace(trace).spec
    num_experts = tspec.num_experts
    rows = []
    for hw in hws:
        # a machine with several GPUs runs the model split over them, each way that fits the model (a
        # `parallel` in `base` chooses one); its price is the whole machine's
        modes: list[dict[str, Any]] = [{}]
        gpus = load_profile(hw).num_gpus if "parallel" not in extra else 1
        if gpus > 1:
            from simmoe.engine.parallel import pipeline_layers

            split = pipeline_layers(tspec.num_layers, gpus)
            stages = {split[li] for li in tspec.moe_layers}  # every GPU needs a MoE layer of its own
            modes = ([{"parallel": "pipeline"}] if len(stages) == gpus else []) \
                + ([{"parallel": "expert"}] if num_experts % gpus == 0 else [])
        for mode, rt in ((m, r) for m in modes for r in runtimes or [None]):
            for pol in policies:
                if mode and not _splits(pol):
                    continue  # CPU placements and routing policies are not modelled on several GPUs
                sized = "slots_per_layer" in get_policy(pol, "cache", source="--policies").Options.model_fields
                for s in (slots if sized else [None]):
                    for b in batches:
                        row = {"trace": trace, "hw": hw, "policy": pol, "batch": b, **extra, **mode}
                        if rt is not None:
                            row["runtime"] = rt
                        if s is not None:
                            row["policy_options.slots_per_layer"] = s
                        rows.append(row)
    return rows


def _splits(policy: str) -> bool:
    """Whether a policy (or named system) runs on several GPUs (sim/engine/parallel.py)."""
    from simmoe.engine.setup import resolve
    from simmoe.policies.base import PolicySet

    r = resolve(PolicySet(policy))
    return r.placement_cls is None and r.routing_cls is None


def _price(hw: str) -> float | None:
    from simmoe.hw.profile import load_profile

    return load_profile(hw).price_usd_per_hour


def evaluate(df: pd.DataFrame, slos: list[Slo]) -> pd.DataFrame:
    """Adds usd_per_hour, usd_per_mtok, feasible, binding (why not feasible) and violation (worst ratio)."""
    if not len(df):
        raise InputError("plan", None, "no configurations were run")
    ok = df[df["status"] == "ok"]
    for s in slos:
        if len(ok) and s.metric not in df.columns:
            known = sorted(c for c in df.columns if c not in ("key", "status", "error", "run_s"))
            raise InputError("--slo", s.name, f"no metric {s.metric!r} in the replay summary; known: "
                                              f"{', '.join(known)}")
    prices = {h: _price(h) for h in df["hw"].unique()}
    out = df.copy()
    out["usd_per_hour"] = out["hw"].map(prices).astype(float)
    tps = out["tokens_per_s"].astype(float) if "tokens_per_s" in out else pd.Series(np.nan, index=out.index)
    out["usd_per_mtok"] = out["usd_per_hour"] / (tps * 3600) * 1e6
    feasible, binding, violation = [], [], []
    for _, row in out.iterrows():
        if row["status"] != "ok":
            kind = "memory" if "does not fit" in str(row["error"]) else row["status"]
            feasible.append(False)
            binding.append(f"{kind}: {row['error']}")
            violation.append(math.inf)
            continue
        worst, why = 0.0, ""
        for s in slos:
            v = row.get(s.metric)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                r, d = math.inf, f"{s.metric}: no value"
            else:
                r, d = s.ratio(float(v)), s.describe(float(v))
            if r > worst:
                worst, why = r, d
        if math.isnan(row["usd_per_hour"]):
            feasible.append(False)
            binding.append("no price_usd_per_hour in the profile")
            violation.append(worst)
            continue
        feasible.append(worst <= 1.0)
        binding.append("" if worst <= 1.0 else why)
        violation.append(worst)
    out["feasible"] = feasible
    out["binding"] = binding
    out["violation"] = violation
    return out


def ranked(ev: pd.DataFrame) -> pd.DataFrame:
    """Feasible configurations, cheapest per token first (then cheapest per hour)."""
    return ev[ev["feasible"]].sort_values(["usd_per_mtok", "usd_per_hour", "key"], kind="stable")


def closest_infeasible(ev: pd.DataFrame) -> pd.DataFrame:
    """Per (hw, policy): the infeasible configuration nearest to feasibility, with its binding constraint.
    Only for pairs that have no feasible configuration at all."""
    bad = ev[~ev["feasible"]]
    good_pairs = set(map(tuple, ev[ev["feasible"]][["hw", "policy"]].values))
    rows = []
    for (hw, pol), g in bad.groupby(["hw", "policy"], sort=False):
        if (hw, pol) in good_pairs:
            continue
        rows.append(g.sort_values(["violation", "usd_per_mtok"], kind="stable").iloc[0])
    return pd.DataFrame(rows).sort_values(["violation", "hw"], kind="stable") if rows else bad.iloc[:0]


def pareto(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both x and y (both minimised), sorted by x."""
    order = np.lexsort((y, x))
    front, best = [], math.inf
    for i in order:
        if y[i] < best:
            front.append(i)
            best = y[i]
    return np.asarray(front, dtype=int)


def plan(trace: str, slos: list[Slo], *, hws=None, policies=None, slots=None, batches=None, rate=None,
         base: dict[str, Any] | None = None, workers: int | None = None, out: str | None = None,
         progress: bool | None = None, runtimes: list[str] | None = None) -> pd.DataFrame:
    """Runs the search space through the sweep runner and evaluates it; returns the evaluated table."""
    from simmoe.sweeps.runner import run_sweep
    from simmoe.sweeps.spec import build_configs

    if not slos:
        raise InputError("--slo", None, "give at least one SLO (e.g. --slo tpot_p90_ms=150)")
    rows = search_space(trace, hws, policies, slots, batches, rate, base, runtimes)
    configs = build_configs(rows, Path("."), "plan")
    if out is not None:
        rep = run_sweep(configs, out, workers=workers, progress=progress)
    else:
        with tempfile.TemporaryDirectory(prefix="simmoe-plan-") as tmp:
            rep = run_sweep(configs, Path(tmp) / "plan.parquet", workers=workers, progress=progress)
    keys = {c.key for c in configs}
    df = rep.results[rep.results["key"].isin(keys)].reset_index(drop=True)
    return evaluate(df, slos)


def label(row: pd.Series) -> str:
    slots = row.get("policy_options.slots_per_layer")
    size = f" {int(slots)}/layer" if slots is not None and not (isinstance(slots, float) and math.isnan(slots)) \
        else ""
    rt = row.get("runtime")
    on = f" on {rt}" if isinstance(rt, str) else ""
    par = row.get("parallel")
    split = f" {par}" if isinstance(par, str) and par != "none" else ""
    return f"{row['hw']}{split} {row['policy']}{size}{on} b{int(row['batch'])}"


def plot(ev: pd.DataFrame, slos: list[Slo], path: str) -> None:
    """Two panels: the first SLO's metric against $/Mtok and against peak GPU memory, Pareto fronts drawn."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from simmoe.fileio import atomic_path

    slo = slos[0]
    ok = ev[(ev["status"] == "ok") & ev["usd_per_mtok"].notna()].copy()
    ok = ok[np.isfinite(ok["usd_per_mtok"]) & ok[slo.metric].notna()]
    fig = Figure(figsize=(13, 5.2))
    axes = fig.subplots(1, 2)
    hws = sorted(ok["hw"].unique())
    colors = dict(zip(hws, colormaps["tab10"](np.linspace(0, 1, 10))[: len(hws)]))
    sign = 1.0 if slo.op == "<=" else -1.0  # the front minimises latency or maximises a lower-bounded metric
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    for ax, xcol, xlabel, xscale, log in (
            (axes[0], "usd_per_mtok", "cost, $ per million decode tokens (log)", 1.0, True),
            (axes[1], "peak_gpu_mem_bytes", "peak GPU memory, GiB", 1.0 / GIB, False)):
        for hw in hws:
            g = ok[ok["hw"] == hw]
            for feas in (True, False):
                h = g[g["feasible"] == feas]
                ax.scatter(h[xcol] * xscale, h[slo.metric], s=28, marker="o",
                           facecolors=colors[hw] if feas else "none", edgecolors=colors[hw])
        if len(ok):
            x = ok[xcol].to_numpy(float) * xscale
            y = ok[slo.metric].to_numpy(float)
            f = pareto(x, sign * y)
            ax.step(x[f], y[f], where="post", color="k", lw=1.2)
            best = ranked(ok)
            if len(best):
                b = best.iloc[0]
                ax.annotate(f"cheapest feasible:\n{label(b)}", (b[xcol] * xscale, b[slo.metric]),
                            xytext=(14, 22), textcoords="offset points", fontsize=8,
                            arrowprops={"arrowstyle": "->", "lw": 0.8})
        ax.axhline(slo.limit, color="r", ls="--", lw=1)
        if log:
            ax.set_xscale("log")
            fmt = FuncFormatter(lambda v, _: f"{v:g}")
            ax.xaxis.set_major_formatter(fmt)
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(slo.metric + (" (ms)" if "_ms." in slo.metric else ""))
        ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], marker="o", ls="", color=colors[h], label=h) for h in hws] + [
        Line2D([], [], marker="o", ls="", markerfacecolor="none", markeredgecolor="grey", label="misses an SLO"),
        Line2D([], [], color="k", lw=1.2, label="Pareto front"),
        Line2D([], [], color="r", ls="--", lw=1, label=f"SLO {slo.metric} {slo.op} {slo.limit:g}")]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.995, 0.5), fontsize=8, frameon=False)
    axes[0].set_title("latency vs cost (filled: meets every SLO)", fontsize=10)
    axes[1].set_title("latency vs GPU memory", fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
