"""Side-by-side comparison of runs: replay results (`replay --json`, or Result objects) and sweep rows.

`compare(runs)` returns a DataFrame with one row per metric and one column per run (labelled); its
`attrs` hold each run's identity (`runs`: source, hw, runtime, policy, trace and its sha256) and
`warnings` (runs that replayed different traces: compared anyway). `vs_first(df)` gives each run against the
first: a ratio for amounts, a difference for fractions (hit rate, busy, SLO attainment).

A run is named by:
- a path to a `replay --json` file;
- a path to a sweep table (`.parquet` / `.csv`): every `ok` row is a run, narrowed by `where`
  (`["policy=lru", "batch=4"]`) or by `FILE#KEY` (a configuration's key, or a unique prefix of it);
- a `simmoe.engine.results.Result`, or a summary dict (as `replay --json` writes).

Metrics are read generically: every percentile a latency block holds (`tpot_ms.p95` when the summary has
it) becomes a row, so new percentiles need no change here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simmoe.errors import InputError
from simmoe.provenance import flat_columns

# a replay summary has all of these (a JSON without them is not a simmoe result)
REQUIRED = ("hits", "misses", "hit_rate", "tokens_per_s", "tpot_ms", "ttft_ms")
LATENCIES = ("tpot_ms", "ttft_ms", "queue_ms", "e2e_ms")
SERVING_ONLY = ("queue_ms", "e2e_ms", "requests_per_s")  # shown when a run had arrivals
FRACTIONS = ("hit_rate", "gpu_busy", "pcie_busy", "cpu_busy", "slo_attainment", "routing_fidelity")
STALLS = ("copy", "dispatch", "cpu")
IDENTITY = ("trace", "trace_sha256", "hw", "runtime", "policy", "batch", "simmoe_version")


@dataclass
class Run:
    label: str
    source: str
    values: dict[str, Any]  # flat: 'tpot_ms.p90', 'hit_rate', 'trace_sha256', ...
    identity: dict[str, Any] = field(default_factory=dict)


# ---- loading ----------------------------------------------------------------------------------------------------
def _flat_summary(summary: Mapping[str, Any], provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    from simmoe.sweeps.store import flatten

    values = flatten({k: v for k, v in summary.items() if k != "provenance"})
    if provenance:
        values.update(flat_columns(provenance))
    return values


def _identity(values: Mapping[str, Any], prov: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out = {}
    for k in IDENTITY:
        v = values.get(f"summary.{k}", values.get(k))  # sweep rows keep the summary's copy as summary.KEY
        if prov and prov.get(k) is not None:
            v = prov[k]
        out[k] = None if _missing(v) else v
    return out


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _from_json(path: Path) -> list[Run]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, None, f"cannot read ({getattr(e, 'strerror', None) or e})") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise InputError(path, None, f"not JSON ({e})") from None
    if not isinstance(data, dict) or any(k not in data for k in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(data, dict) or k not in data]
        raise InputError(path, None, f"not a simmoe replay result (no {', '.join(missing)}); expected the "
                                     "output of `simmoe replay --json`")
    prov = data.get("provenance") if isinstance(data.get("provenance"), dict) else None
    values = _flat_summary(data, prov)
    return [Run(path.stem, str(path), values, _identity(values, prov))]


def _read_table(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, comment=None)
    except Exception as e:  # a corrupt or foreign file
        raise InputError(path, None, f"cannot read as a results table ({type(e).__name__}: {e})") from None
    if "key" not in df.columns or "status" not in df.columns:
        raise InputError(path, None, "not a simmoe sweep result table (no 'key' and 'status' columns)")
    return df


def _matches(series: pd.Series, value: str) -> pd.Series:
    """Cells equal to `value` as written on the command line: as text, or as the same number."""
    text = series.map(lambda v: "" if _missing(v) else str(v))
    hit = text == value
    try:
        x = float(value)
    except ValueError:
        return hit
    num = pd.to_numeric(series, errors="coerce")
    return hit | (num == x)


def parse_where(where: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for w in where:
        col, sep, val = w.partition("=")
        if not sep or not col:
            raise InputError(None, w, "expected COLUMN=VALUE", param="where")
        out.append((col.strip(), val.strip()))
    return out


def _from_table(path: Path, key: str | None, where: list[tuple[str, str]]) -> list[Run]:
    df = _read_table(path)
    for col, val in where:
        if col not in df.columns:
            params = [c for c in df.columns[: list(df.columns).index("key")]]
            raise InputError(None, col, f"no such column in {path}; parameters: {', '.join(params)} "
                                        "(any other column of the table works too)", param="where")
        df = df[_matches(df[col], val)]
    if key is not None:
        pick = df["key"].astype(str).str.startswith(key)
        if pick.sum() == 0:
            raise InputError(f"{path}#{key}", None, "no configuration with this key")
        if pick.sum() > 1:
            raise InputError(f"{path}#{key}", None, f"key prefix names {int(pick.sum())} configurations")
        df = df[pick]
    ok = df[df["status"] == "ok"]
    if ok.empty:
        what = f" matching {', '.join(f'{c}={v}' for c, v in where)}" if where else ""
        raise InputError(path, None, f"no successful configuration{what} ({len(df)} rows, none with status ok)")
    cols = list(df.columns)
    params = cols[: cols.index("key")]  # a results table leads with its parameter columns
    varying = [c for c in params if ok[c].astype(str).nunique() > 1]
    runs = []
    for rec in ok.to_dict("records"):
        values = {k: v for k, v in rec.items() if not _missing(v)}
        if varying:
            label = f"{path.stem}:" + ",".join(f"{c.rpartition('.')[2]}={_short(rec.get(c))}" for c in varying)
        else:
            label = path.stem if len(ok) == 1 else f"{path.stem}#{str(rec['key'])[:8]}"
        runs.append(Run(label, f"{path}#{rec['key']}", values, _identity(values)))
    return runs


def _short(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return "-" if _missing(v) else str(v)


def load_runs(runs: Sequence[Any], where: Sequence[str] = ()) -> list[Run]:
    """The runs named by paths (`FILE`, `FILE#KEY`), Result objects or summary dicts (see the module doc)."""
    from simmoe.engine.results import Result

    conds = parse_where(where)
    out: list[Run] = []
    tables = 0
    for i, item in enumerate(runs):
        if isinstance(item, Result):
            values = _flat_summary(item.summary, item.provenance)
            out.append(Run(f"run{i + 1}", "<Result>", values, _identity(values, item.provenance)))
            continue
        if isinstance(item, Mapping):
            if any(k not in item for k in REQUIRED):
                raise InputError(f"run {i + 1}", None, "not a simmoe replay summary")
            prov = item.get("provenance")
            values = _flat_summary(item, prov)
            out.append(Run(f"run{i + 1}", "<dict>", values, _identity(values, prov)))
            continue
        text = str(item)
        file, sep, key = text.partition("#")
        p = Path(file)
        if not p.is_file():
            raise InputError(file, None, "no such file" if not p.exists() else "not a file")
        if p.suffix in (".parquet", ".csv"):
            tables += 1
            out.extend(_from_table(p, key if sep else None, conds))
        else:
            if sep:
                raise InputError(text, None, "#KEY selects a row of a sweep table (.parquet or .csv)")
            out.extend(_from_json(p))
    if conds and not tables:
        raise InputError(None, None, "selects rows of sweep tables; none given", param="where")
    if not out:
        raise InputError("compare", None, "no runs given")
    seen: dict[str, int] = {}
    for r in out:  # unique labels
        n = seen.get(r.label, 0)
        seen[r.label] = n + 1
        if n:
            r.label = f"{r.label}({n + 1})"
    return out


# ---- the table --------------------------------------------------------------------------------------------------
def _pct_order(k: str) -> tuple[int, float, str]:
    if k == "mean":
        return (0, 0.0, k)
    if k.startswith("p"):
        try:
            return (1, float(k[1:]), k)
        except ValueError:
            pass
    return (2, 0.0, k)


def metric_rows(runs: Sequence[Run]) -> list[str]:
    """The metrics shown, in a stable order; latency statistics are whatever the summaries hold."""
    keys = set().union(*(r.values for r in runs))
    serving = any(str(r.values.get("arrivals", r.values.get("summary.arrivals", "closed"))) != "closed"
                  for r in runs)
    rows: list[str] = []
    for lat in LATENCIES:
        if lat in SERVING_ONLY and not serving:
            continue
        stats = {k.split(".", 1)[1] for k in keys if k.startswith(lat + ".")}
        rows += [f"{lat}.{s}" for s in sorted(stats, key=_pct_order)]
    rows += ["tokens_per_s"]
    if serving:
        rows += ["requests_per_s"]
    rows += [k for k in ("slo_attainment", "goodput_tokens_per_s") if k in keys]
    rows += ["hit_rate", "hits", "misses", "gpu_busy", "pcie_busy", "cpu_busy"]
    rows += [f"stall_ms_per_token.{s}" for s in STALLS]
    rows += ["bytes_h2d", "bytes_d2h", "peak_gpu_mem_bytes", "makespan_s"]
    return rows


def _value(run: Run, metric: str) -> float:
    v = run.values
    if metric.startswith("stall_ms_per_token."):  # as `replay` prints it: stall time over all tokens
        total = v.get("stall_ms." + metric.split(".", 1)[1])
        tokens = v.get("tokens")
        if _missing(total) or not tokens:
            return math.nan
        return float(total) / max(float(tokens), 1.0)
    x = v.get(metric)
    try:
        return math.nan if _missing(x) else float(x)
    except (TypeError, ValueError):
        return math.nan


def compare(runs: Sequence[Any], where: Sequence[str] = ()) -> pd.DataFrame:
    """Metrics (rows) by run (columns), NaN where a run lacks a metric; attrs: `runs` (identity of each run,
    in column order) and `warnings`."""
    rs = list(runs) if runs and all(isinstance(r, Run) for r in runs) else load_runs(runs, where)
    rows = metric_rows(rs)
    df = pd.DataFrame({r.label: [_value(r, m) for m in rows] for r in rs}, index=pd.Index(rows, name="metric"))
    df.attrs["runs"] = [{"label": r.label, "source": r.source, **r.identity} for r in rs]
    df.attrs["warnings"] = trace_warnings(rs)
    return df


def trace_warnings(runs: Sequence[Run]) -> list[str]:
    """A warning when the runs replayed different trace files (by sha256), or when some cannot be told."""
    shas = {r.label: r.identity.get("trace_sha256") for r in runs}
    known = {k: v for k, v in shas.items() if v}
    out = []
    if len(set(known.values())) > 1:
        groups: dict[str, list[str]] = {}
        for label, sha in known.items():
            groups.setdefault(sha, []).append(label)
        parts = "; ".join(f"{sha[:12]}: {', '.join(labels)}" for sha, labels in groups.items())
        out.append(f"the runs replay different traces (sha256 {parts}): compared anyway")
    unknown = [k for k, v in shas.items() if not v]
    if unknown and len(runs) > 1:
        out.append(f"trace sha256 unknown for {', '.join(unknown)} (no provenance): cannot check they replay "
                   "the same trace")
    return out


def is_fraction(metric: str) -> bool:
    return metric in FRACTIONS


def vs_first(df: pd.DataFrame) -> pd.DataFrame:
    """Each run against the first column: run / first for amounts, run - first for fractions (points)."""
    first = df.iloc[:, 0]
    out = {}
    for col in df.columns[1:]:
        ratio = df[col] / first.where(first != 0)
        delta = df[col] - first
        out[col] = [d if is_fraction(m) else r for m, r, d in zip(df.index, ratio, delta)]
    return pd.DataFrame(out, index=df.index)


# ---- text and JSON ----------------------------------------------------------------------------------------------
def _fmt(metric: str, x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if is_fraction(metric):
        return f"{100 * x:.1f}%"
    if metric.startswith("bytes_") or metric.endswith("_bytes"):
        return f"{x / 1e9:,.2f} GB"
    if metric in ("hits", "misses"):
        return f"{x:,.0f}"
    return f"{x:,.3f}" if abs(x) < 10 else f"{x:,.2f}"


def _fmt_vs(metric: str, x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if is_fraction(metric):
        return f"{100 * x:+.1f} pt"
    return f"x{x:.3f}"


def format_table(df: pd.DataFrame) -> str:
    """The side-by-side text table: each run, then (from the second) its ratio / difference to the first."""
    vs = vs_first(df)
    header = ["metric"]
    for i, col in enumerate(df.columns):
        header.append(str(col))
        if i:
            header.append("vs first")
    body = []
    for m in df.index:
        row = [m]
        for i, col in enumerate(df.columns):
            row.append(_fmt(m, df.at[m, col]))
            if i:
                row.append(_fmt_vs(m, vs.at[m, col]))
        body.append(row)
    widths = [max(len(r[j]) for r in [header, *body]) for j in range(len(header))]
    lines = []
    for n, r in enumerate([header, *body]):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    idents = []
    for run in df.attrs.get("runs", []):
        sha = run.get("trace_sha256")
        idents.append(f"  {run['label']}: {run['source']}  hw {run.get('hw') or '-'}  runtime "
                      f"{run.get('runtime') or '-'}  policy {run.get('policy') or '-'}  batch "
                      f"{_short(run.get('batch'))}  trace {run.get('trace') or '-'} "
                      f"(sha256 {sha[:12] if sha else 'unknown'})")
    return "\n".join(["runs:", *idents, "", *lines])


def _nan_none(x: Any) -> Any:
    if isinstance(x, (float, np.floating)) and not math.isfinite(float(x)):
        return None
    return x.item() if hasattr(x, "item") else x


def to_dict(df: pd.DataFrame) -> dict[str, Any]:
    """JSON-ready: runs (identity), metrics {metric: {label: value}}, vs_first, warnings."""
    vs = vs_first(df)
    return {
        "runs": [{k: _nan_none(v) for k, v in r.items()} for r in df.attrs.get("runs", [])],
        "metrics": {m: {c: _nan_none(df.at[m, c]) for c in df.columns} for m in df.index},
        "vs_first": {m: {c: _nan_none(vs.at[m, c]) for c in vs.columns} for m in vs.index},
        "vs_first_kind": {m: ("difference" if is_fraction(m) else "ratio") for m in df.index},
        "warnings": list(df.attrs.get("warnings", [])),
    }


# ---- figure -----------------------------------------------------------------------------------------------------
def figure(df: pd.DataFrame):
    """Panels: TPOT and TTFT statistics, throughput, hit rate, busy fractions, stall time per token; one bar
    per run in each group."""
    from matplotlib.figure import Figure

    labels = [str(c) for c in df.columns]
    fig = Figure(figsize=(14, 8), layout="constrained")
    axs = fig.subplots(2, 3)
    colors = [f"C{i % 10}" for i in range(len(labels))]

    def grouped(ax, metrics: list[str], names: list[str], scale: float = 1.0, ylabel: str = "",
                stacked: bool = False) -> None:
        x = np.arange(len(metrics))
        w = 0.8 / max(len(labels), 1)
        for i, lab in enumerate(labels):
            vals = np.array([df.at[m, lab] if m in df.index else np.nan for m in metrics], dtype=float) * scale
            ax.bar(x + (i - (len(labels) - 1) / 2) * w, np.nan_to_num(vals), w, color=colors[i], label=lab)
        ax.set_xticks(x, names)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")

    for ax, lat, title in ((axs[0, 0], "tpot_ms", "TPOT"), (axs[0, 1], "ttft_ms", "TTFT")):
        ms = [m for m in df.index if m.startswith(lat + ".")]
        grouped(ax, ms, [m.split(".", 1)[1] for m in ms], ylabel="ms")
        ax.set_title(f"{title} (ms)")
    grouped(axs[0, 2], ["tokens_per_s"], ["decode tokens/s"], ylabel="tokens / s")
    axs[0, 2].set_title("Throughput")
    grouped(axs[1, 0], ["hit_rate"], ["hit rate"], scale=100, ylabel="%")
    axs[1, 0].set_title("Expert-cache hit rate")
    grouped(axs[1, 1], ["gpu_busy", "pcie_busy", "cpu_busy"], ["GPU", "PCIe H2D", "CPU"], scale=100, ylabel="%")
    axs[1, 1].set_title("Busy fraction of simulated time")
    ax = axs[1, 2]
    bottom = np.zeros(len(labels))
    stall_colors = {"copy": "#ff7f0e", "dispatch": "#7f7f7f", "cpu": "#9467bd"}
    for s in STALLS:
        m = f"stall_ms_per_token.{s}"
        vals = np.nan_to_num(np.array([df.at[m, lab] for lab in labels], dtype=float)) if m in df.index \
            else np.zeros(len(labels))
        ax.bar(np.arange(len(labels)), vals, 0.6, bottom=bottom, color=stall_colors[s], label=f"{s} stall")
        bottom += vals
    ax.set_xticks(np.arange(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("ms per token")
    ax.set_title("GPU stall time per token")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    axs[0, 0].legend(fontsize=8)
    return fig


__all__ = ["Run", "compare", "figure", "format_table", "load_runs", "metric_rows", "to_dict", "vs_first"]
