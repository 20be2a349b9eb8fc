"""Chrome trace-event JSON (opens in Perfetto / chrome://tracing): one track per resource.

Format (Trace Event Format, "JSON object" form): {"traceEvents": [...], "displayTimeUnit": "ms"}.
- Complete events ("ph": "X") for every recorded op, ts/dur in microseconds; one thread (tid) per resource, so
  ops on an in-order queue never overlap on their track. ts and dur are rounded to the nanosecond such that
  ts + dur is the rounded end: rounding cannot make neighbours overlap.
- Metadata events ("ph": "M") name the process and every track (thread_name, thread_sort_index).
- Counter events ("ph": "C") per step of the window: expert-cache occupancy and GPU memory by part (GiB), the
  value after the step at its end, and the value before the window at its start.
- `otherData` (the format's free-form metadata dictionary, shown as the trace's metadata): the run's
  provenance (simmoe.provenance) when given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from simmoe.fileio import atomic_open

TRACKS = {"dispatch": (1, "host dispatch thread"), "gpu": (2, "GPU compute stream"),
          "h2d": (3, "H2D copy engine"), "d2h": (4, "D2H copy engine"), "cpu": (5, "CPU expert worker"),
          "steps": (6, "steps")}
PID = 1
GIB = 2**30


def _r(t: float) -> float:
    return round(float(t), 3)


def _memory_args(row, expert_bytes: int, memory: Mapping[str, int] | None) -> dict[str, float]:
    args = {}
    if memory is not None:
        args["dense weights"] = memory["dense"] / GIB
        args["activations + staging"] = (memory["activations"] + memory["staging"]) / GIB
    args["kv cache"] = float(row.kv_bytes) / GIB
    args["expert cache"] = float(row.cache_occupancy) * expert_bytes / GIB
    return args


def trace_events(events, steps: pd.DataFrame, title: str, expert_bytes: int,
                 window: tuple[int, int] | None = None, memory: Mapping[str, int] | None = None) -> list[dict]:
    """The trace-event list. `memory`: Result.memory (adds dense weights and workspace to the memory counter)."""
    tids = {k: v[0] for k, v in TRACKS.items()}
    names = {v[0]: v[1] for v in TRACKS.values()}
    xs: list[dict] = []
    for ev in events:
        if ev.track not in tids:  # a track this writer does not know yet still gets its own named thread
            tids[ev.track] = max(tids.values()) + 1
            names[tids[ev.track]] = ev.track
        ts, end = _r(ev.start), _r(max(ev.end, ev.start))
        d = {"ph": "X", "pid": PID, "tid": tids[ev.track], "name": ev.name, "cat": ev.cat, "ts": ts,
             "dur": round(end - ts, 3)}
        if ev.args:
            d["args"] = ev.args
        xs.append(d)
    cs: list[dict] = []
    if window is not None:  # steps and counters for the recorded window only
        in_win = (steps["step"] >= window[0]) & (steps["step"] < window[1])
        win = steps[in_win]
        before = steps[steps["step"] < window[0]].tail(1)
        if len(win) and len(before):
            row0 = next(before.itertuples(index=False))
            t0 = _r(win["start_us"].iloc[0])
            cs.append(_occupancy(t0, row0))
            cs.append(_mem(t0, row0, expert_bytes, memory))
        for row in win.itertuples(index=False):
            ts, end = _r(row.start_us), _r(row.end_us)
            xs.append({"ph": "X", "pid": PID, "tid": tids["steps"], "name": f"{row.kind} step {row.step}",
                       "cat": "step", "ts": ts, "dur": round(end - ts, 3),
                       "args": {"tokens": int(row.tokens), "hits": int(row.hits), "misses": int(row.misses)}})
            cs.append(_occupancy(end, row))
            cs.append(_mem(end, row, expert_bytes, memory))
    # every known resource is named, used or not, so tracks are stable across runs; a run with several GPUs has
    # a compute stream and copy engines per GPU instead of the single GPU's (then unused: not shown, not named)
    busy = {d["tid"] for d in xs}
    per_gpu = any(str(n).startswith("GPU ") for n in names.values())
    single = {TRACKS[k][0] for k in ("gpu", "h2d", "d2h")}
    used = sorted(t for t in names if not (per_gpu and t in single and t not in busy))
    out: list[dict] = [{"ph": "M", "pid": PID, "tid": 0, "name": "process_name", "args": {"name": title}}]
    for tid in used:
        out.append({"ph": "M", "pid": PID, "tid": tid, "name": "thread_name", "args": {"name": names[tid]}})
        out.append({"ph": "M", "pid": PID, "tid": tid, "name": "thread_sort_index", "args": {"sort_index": tid}})
    return out + xs + cs


def _occupancy(ts: float, row) -> dict:
    args = {"experts": int(row.cache_occupancy)}
    if hasattr(row, "host_occupancy"):  # the SSD tier's host memory (tiers.py), when it is used
        args["host tier experts"] = int(row.host_occupancy)
    return {"ph": "C", "pid": PID, "tid": 0, "name": "expert cache occupancy", "cat": "memory", "ts": ts,
            "args": args}


def _mem(ts: float, row, expert_bytes: int, memory) -> dict:
    return {"ph": "C", "pid": PID, "tid": 0, "name": "GPU memory (GiB)", "cat": "memory", "ts": ts,
            "args": _memory_args(row, expert_bytes, memory)}


def write_chrome_trace(path: str | Path, events, steps: pd.DataFrame, title: str, expert_bytes: int,
                       window: tuple[int, int] | None = None, memory: Mapping[str, int] | None = None,
                       metadata: Mapping | None = None) -> int:
    """Write the trace atomically; returns the number of events. `metadata` (the run's provenance) goes into
    `otherData`."""
    evs = trace_events(events, steps, title, expert_bytes, window, memory)
    doc: dict = {"traceEvents": evs, "displayTimeUnit": "ms"}
    if metadata:
        doc["otherData"] = dict(metadata)
    with atomic_open(path) as f:
        json.dump(doc, f, default=str)
    return len(evs)
