"""Chrome trace-event JSON (opens in Perfetto / chrome://tracing): one track per resource.

Complete events ("X") carry ts/dur in microseconds; metadata events ("M") name the process and threads;
counter events ("C") give cache occupancy and KV-cache bytes per step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from simmoe.fileio import atomic_open

TRACKS = {"dispatch": (1, "host dispatch thread"), "gpu": (2, "GPU compute stream"),
          "h2d": (3, "H2D copy engine"), "d2h": (4, "D2H copy engine"), "cpu": (5, "CPU expert worker"),
          "steps": (6, "steps")}
PID = 1


def trace_events(events, steps: pd.DataFrame, title: str, expert_bytes: int,
                 window: tuple[int, int] | None = None) -> list[dict]:
    out: list[dict] = [{"ph": "M", "pid": PID, "tid": 0, "name": "process_name", "args": {"name": title}}]
    for _key, (tid, label) in TRACKS.items():
        out.append({"ph": "M", "pid": PID, "tid": tid, "name": "thread_name", "args": {"name": label}})
        out.append({"ph": "M", "pid": PID, "tid": tid, "name": "thread_sort_index", "args": {"sort_index": tid}})
    for ev in events:
        tid = TRACKS.get(ev.track, (9, ev.track))[0]
        d = {"ph": "X", "pid": PID, "tid": tid, "name": ev.name, "cat": ev.cat, "ts": round(ev.start, 3),
             "dur": round(max(ev.end - ev.start, 0.0), 3)}
        if ev.args:
            d["args"] = ev.args
        out.append(d)
    if window is not None:  # steps and counters for the recorded window only
        win = steps[(steps["step"] >= window[0]) & (steps["step"] < window[1])]
        for row in win.itertuples(index=False):
            out.append({"ph": "X", "pid": PID, "tid": TRACKS["steps"][0], "name": f"{row.kind} step {row.step}",
                        "cat": "step", "ts": round(row.start_us, 3), "dur": round(row.latency_us, 3),
                        "args": {"tokens": row.tokens, "hits": row.hits, "misses": row.misses}})
            out.append({"ph": "C", "pid": PID, "name": "cache occupancy (experts)", "ts": round(row.end_us, 3),
                        "args": {"experts": int(row.cache_occupancy)}})
            out.append({"ph": "C", "pid": PID, "name": "GPU memory (GiB)", "ts": round(row.end_us, 3),
                        "args": {"kv cache": row.kv_bytes / 2**30,
                                 "expert cache": row.cache_occupancy * expert_bytes / 2**30}})
    return out


def write_chrome_trace(path: str | Path, events, steps: pd.DataFrame, title: str, expert_bytes: int,
                       window: tuple[int, int] | None = None) -> int:
    evs = trace_events(events, steps, title, expert_bytes, window)
    with atomic_open(path) as f:
        json.dump({"traceEvents": evs, "displayTimeUnit": "ms"}, f)
    return len(evs)
