"""Shareable HTML reports: DIR/index.html, one self-contained page (figures inlined as base64 PNG, inline CSS,
no scripts, no external URLs) with sections, the provenance block and the exact command.

`write_report(dir, title, command, provenance, sections)` is the generic writer any command can call;
`replay_sections(result)` and `sweep_sections(df)` build the sections of `replay --report` and
`sweep --report`. The page is rendered completely in memory and written atomically: a failure leaves
nothing behind (not even DIR, if this call would have created it). Another command adds a report so:

    check_report_dir(args.report)                       # before any work: one line, exit 2 if unusable
    ...
    write_report(args.report, "simmoe plan", args.command_line, {"simmoe_version": __version__, ...},
                 [Section("Feasible configurations", table=df), Section("Pareto front", figure=fig)])
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from simmoe.errors import InputError
from simmoe.fileio import atomic_open

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from simmoe.engine.results import Result

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;color:#222;
padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.2em .5em;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em}
img{max-width:100%;height:auto}.note{color:#666;font-size:.85em}
"""


@dataclass
class Section:
    """A part of the page: a title and any of a paragraph, preformatted text, a table and a figure."""

    title: str
    text: str | None = None  # a paragraph (plain text, escaped)
    pre: str | None = None  # preformatted text (plain text, escaped)
    table: pd.DataFrame | None = None
    figure: Figure | None = None
    max_rows: int = 500  # longer tables are cut, and say so


def check_report_dir(path: str | Path, flag: str = "--report") -> Path:
    """Fail before any work if DIR cannot take the report: its parent folder exists and DIR is not a file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(flag, str(p), "is a file; --report takes a folder (index.html is written in it)")
    parent = p.resolve().parent
    if not p.exists() and not parent.is_dir():
        raise InputError(flag, str(p), f"parent folder {str(p.parent)!r} does not exist")
    if not os.access(p if p.exists() else parent, os.W_OK):
        raise InputError(flag, str(p), "cannot write here")
    return p


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _table(df: pd.DataFrame, max_rows: int) -> str:
    shown = df.head(max_rows)
    out = shown.to_html(index=False, na_rep="-", border=0, float_format=lambda x: f"{x:,.4g}")
    if len(df) > max_rows:
        out += f'<p class="note">first {max_rows} of {len(df):,} rows</p>'
    return out


def _provenance_table(prov: Mapping[str, Any]) -> str:
    rows = []
    for k, v in prov.items():
        text = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)
        rows.append(f"<tr><th>{html.escape(str(k))}</th><td style='text-align:left'><code>{html.escape(text)}"
                    "</code></td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def render(title: str, command: str | None, provenance: Mapping[str, Any], sections: Sequence[Section]) -> str:
    """The page as a string (figures rendered and inlined)."""
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             f"<title>{e(title)}</title><style>{CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    if command:
        parts.append(f"<h2>Command</h2><pre>{e(command)}</pre>")
    for s in sections:
        parts.append(f"<h2>{e(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{e(s.text)}</p>")
        if s.pre:
            parts.append(f"<pre>{e(s.pre)}</pre>")
        if s.table is not None:
            parts.append(_table(s.table, s.max_rows))
        if s.figure is not None:
            parts.append(f"<img alt='{e(s.title)}' src='data:image/png;base64,{_png(s.figure)}'>")
    parts.append("<h2>Provenance</h2>" + _provenance_table(provenance))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(dir: str | Path, title: str, command: str | None, provenance: Mapping[str, Any],
                 sections: Sequence[Section]) -> Path:
    """Writes DIR/index.html (DIR is created if missing); returns its path. Atomic: the page is rendered
    first, then written whole, and a DIR this call created is removed again if writing fails."""
    d = check_report_dir(dir)
    page = render(title, command, provenance, sections)
    created = not d.exists()
    d.mkdir(exist_ok=True)
    try:
        with atomic_open(d / "index.html") as f:
            f.write(page)
    except BaseException:
        if created:
            d.rmdir()
        raise
    return d / "index.html"


# ---- replay and sweep pages -------------------------------------------------------------------------------------
SUMMARY_KEYS = ("requests", "tokens", "steps", "accesses", "hits", "misses", "hit_rate", "tokens_per_s",
                "makespan_s", "gpu_busy", "pcie_busy", "cpu_busy", "bytes_h2d", "peak_gpu_mem_bytes")


def replay_sections(result: Result) -> list[Section]:
    """Summary (text and latency table), latency per step, busy fractions / stalls / hit rate, hit rate per
    layer, and the requests table."""
    from matplotlib.figure import Figure

    from simmoe import plots
    from simmoe.comparison import compare, figure  # `simmoe.compare` is the function (the notebook API)

    s = result.summary
    lat = pd.DataFrame([{"latency (ms)": k, **{p: v for p, v in s[k].items()}}
                        for k in ("tpot_ms", "ttft_ms", "step_ms", "queue_ms", "e2e_ms")
                        if isinstance(s.get(k), dict) and (k not in ("queue_ms", "e2e_ms") or s["arrivals"] != "closed")])
    fig_step = Figure(figsize=(11, 4), layout="constrained")
    plots.step_latency(result, fig_step.add_subplot())
    fig_layer = Figure(figsize=(11, 4), layout="constrained")
    plots.layer_hit_rate(result, fig_layer.add_subplot())
    one = compare([result])
    one.columns = [s["policy"]]
    out = [
        Section("Summary", pre=result.format(), table=lat),
        Section("Latency per step", figure=fig_step),
        Section("Latency, throughput, hit rate, busy fractions, stalls", figure=figure(one)),
        Section("Hit rate per MoE layer", figure=fig_layer),
    ]
    if result.requests is not None and len(result.requests):
        out.append(Section("Requests", text="One row per request (replay --requests-csv writes all of them).",
                           table=result.requests, max_rows=200))
    return out


def sweep_sections(df: pd.DataFrame) -> list[Section]:
    """The results table (parameters, status, the main metrics) and throughput vs p90 TPOT of the ok rows."""
    from matplotlib.figure import Figure

    from simmoe import plots

    cols = list(df.columns)
    params = cols[: cols.index("key")] if "key" in cols else []
    metrics = [c for c in ("tpot_ms.mean", "tpot_ms.p90", "ttft_ms.mean", "tokens_per_s", "hit_rate", "gpu_busy",
                           "pcie_busy", "peak_gpu_mem_bytes") if c in cols]
    shown = df[[*params, *[c for c in ("status", "error") if c in cols], *metrics]]
    out = [Section("Results", text=f"{len(df):,} configurations ({int((df.get('status') == 'ok').sum()):,} ok).",
                   table=shown)]
    ok = df[df["status"] == "ok"] if "status" in cols else df
    if len(ok) and {"tpot_ms.p90", "tokens_per_s"} <= set(cols):
        ok = ok.dropna(subset=["tpot_ms.p90", "tokens_per_s"])
        if len(ok):
            fig = Figure(figsize=(9, 5.5), layout="constrained")
            ax = fig.add_subplot()
            label = "policy" if "policy" in cols else None
            plots.pareto_front(ok.reset_index(drop=True), "tpot_ms.p90", "tokens_per_s", label=label,
                               minimize=(True, False), ax=ax)
            ax.set_title("Throughput vs p90 TPOT (each ok configuration)")
            out.append(Section("Throughput vs p90 TPOT", figure=fig))
    return out


__all__ = ["Section", "check_report_dir", "render", "replay_sections", "sweep_sections", "write_report"]
