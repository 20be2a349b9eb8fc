"""What a notebook does with a Result: a one-row table, an HTML summary for Jupyter, the timeline file.

A mixin of `Result` (results.py builds the numbers; this module only presents them)."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from simmoe.errors import InputError, param_ref

if TYPE_CHECKING:
    from collections.abc import Mapping


def _num(x: Any, fmt: str) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, fmt)


class ResultViews:
    summary: dict[str, Any]
    steps: pd.DataFrame
    events: list
    memory: dict[str, int]
    timeline_steps: tuple[int, int] | None

    def to_frame(self) -> pd.DataFrame:
        """The summary as one tidy row, nested metrics flattened to dotted columns (`tpot_ms.p90`,
        `stall_ms.copy`): the columns of a sweep's result table, so `pd.concat([r.to_frame() for r in runs])`
        compares runs. The per-step table is `steps`, the per-MoE-layer one `layers`."""
        from simmoe.engine.results import _clean

        return pd.json_normalize([_clean(self.summary)], sep=".")

    def _repr_html_(self) -> str:
        """Jupyter's rendering: what the run was, then the headline figures (`format()` is the full text)."""
        s = self.summary
        e = html.escape
        t, f = s["tpot_ms"], s["ttft_ms"]

        def row(label: str, *cells: str) -> str:
            return f"<tr><th style='text-align:left'>{e(label)}</th>" + "".join(
                f"<td style='text-align:right'>{e(c)}</td>" for c in cells) + "</tr>"

        def pct(d: Mapping[str, Any]) -> list[str]:
            return [_num(d[k], ",.2f") for k in ("mean", "p50", "p90", "p99")]

        head = (f"<b>{e(str(s['model']))}</b> on <b>{e(str(s['hw']))}</b> &middot; runtime {e(str(s['runtime']))}"
                f" &middot; policy {e(str(s['policy']))} &middot; batch {s['batch']}")
        rows = [
            row("latency (ms)", "mean", "p50", "p90", "p99"),
            row("TPOT", *pct(t)),
            row("TTFT", *pct(f)),
            *([row("queueing", *pct(s["queue_ms"])), row("end to end", *pct(s["e2e_ms"]))]
              if s.get("arrivals", "closed") != "closed" else []),
            row("throughput", f"{_num(s['tokens_per_s'], ',.2f')} tok/s", "", "", ""),
            row("hit rate", f"{_num(100 * s['hit_rate'], '.1f')}%", f"{s['hits']:,} hits", f"{s['misses']:,} misses",
                f"{s['accesses']:,} accesses"),
            row("busy", f"GPU {_num(100 * s['gpu_busy'], '.1f')}%", f"PCIe {_num(100 * s['pcie_busy'], '.1f')}%",
                f"CPU {_num(100 * s['cpu_busy'], '.1f')}%", ""),
            row("tokens", f"{s['tokens']:,}", f"prefill {s['prefill_tokens']:,}", f"decode {s['decode_tokens']:,}",
                f"{s['requests']:,} requests"),
            row("peak GPU memory", f"{s['peak_gpu_mem_bytes'] / 2**30:,.2f} GiB",
                f"of {s['gpu_mem_usable_bytes'] / 2**30:,.2f}", "", ""),
            row("simulated", f"{_num(s['makespan_s'], ',.3f')} s", f"{s['steps']:,} steps",
                f"wall {_num(s['wall_s'], '.2f')} s", ""),
        ]
        if "slo_attainment" in s:
            rows.append(row("SLO attainment", f"{100 * s['slo_attainment']:.1f}%",
                            f"goodput {s['goodput_tokens_per_s']:,.1f} tok/s", "", ""))
        return (f"<div class='simmoe-result'><div>{head}</div><div style='color:#666'>{e(str(s['trace']))}</div>"
                f"<table>{''.join(rows)}</table></div>")

    def write_timeline(self, path: str | Path, steps: tuple[int, int] | None = None) -> int:
        """Write the recorded steps as a Chrome trace-event JSON (open it at https://ui.perfetto.dev); returns
        the number of events. A replay records the steps of its `timeline_steps=(START, STOP)`; `steps`
        narrows that to a sub-window (default: all recorded). The run's provenance goes into `otherData`."""
        from simmoe.engine.chrome_trace import write_chrome_trace
        from simmoe.fileio import check_output

        recorded = self.timeline_steps
        if recorded is None:
            raise InputError(None, None, f"this run recorded no timeline: replay with {param_ref('timeline_steps')} "
                                         "(START, STOP)", param="timeline_steps")
        window = recorded
        events = self.events
        if steps is not None:
            if (not isinstance(steps, (tuple, list)) or len(steps) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in steps)):
                raise InputError(None, None, f"must be (START, STOP) step numbers, got {steps!r}", param="steps")
            lo, hi = steps
            if not recorded[0] <= lo < hi <= recorded[1]:
                raise InputError(None, None, f"{lo}:{hi} is not inside the recorded steps "
                                             f"{recorded[0]}:{recorded[1]}", param="steps")
            window = (lo, hi)
            sel = self.steps[(self.steps["step"] >= lo) & (self.steps["step"] < hi)]
            if len(sel):  # the events of those steps: they start inside the steps' time span
                t0, t1 = float(sel["start_us"].iloc[0]), float(sel["end_us"].iloc[-1])
                events = [ev for ev in events if t0 <= ev.start < t1]
            else:
                events = []
        check_output(str(path), "path")
        s = self.summary
        title = f"simmoe {s['model']} on {s['hw']} ({s['runtime']}, {s['policy']})"
        return write_chrome_trace(path, events, self.steps, title, self.memory["expert_bytes"], window,
                                  memory=self.memory, metadata=getattr(self, "provenance", None))
