"""`simmoe replay --timeline`: the Chrome trace-event JSON follows the format (fields per phase, one named
thread per resource, in-order tracks that never overlap, numeric counters) and agrees with the step table."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import pandas as pd
import pytest
from conftest import REPO

from simmoe.engine.chrome_trace import TRACKS, trace_events
from simmoe.engine.timeline import Event

TRACE = REPO / "traces" / "deepseek-v2-lite-synth.npz"
WINDOW = (2, 5)  # decode steps 2-4 of the first request: a few hundred events
EPS = 1e-6  # us; ts and dur are rounded to 1 ns


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate(doc: dict) -> list[dict]:
    """Checks the trace-event format rules; returns the events."""
    assert set(doc) >= {"traceEvents", "displayTimeUnit"}
    assert doc["displayTimeUnit"] in ("ms", "ns")
    evs = doc["traceEvents"]
    assert isinstance(evs, list) and evs
    names: dict[int, str] = {}
    for e in evs:
        assert e["ph"] in ("X", "M", "C"), e
        assert isinstance(e["name"], str) and isinstance(e["pid"], int), e
        if e["ph"] == "X":
            assert isinstance(e["tid"], int) and isinstance(e["cat"], str), e
            assert _num(e["ts"]) and _num(e["dur"]) and e["dur"] >= 0 and e["ts"] >= 0, e
            assert isinstance(e.get("args", {}), dict)
        elif e["ph"] == "M":
            assert e["name"] in ("process_name", "thread_name", "thread_sort_index"), e
            assert isinstance(e["args"], dict) and isinstance(e["tid"], int)
            if e["name"] == "thread_name":
                assert isinstance(e["args"]["name"], str) and e["args"]["name"]
                assert e["tid"] not in names, f"tid {e['tid']} named twice"
                names[e["tid"]] = e["args"]["name"]
            elif e["name"] == "thread_sort_index":
                assert isinstance(e["args"]["sort_index"], int)
            else:
                assert isinstance(e["args"]["name"], str)
        else:
            assert _num(e["ts"]) and isinstance(e["args"], dict) and e["args"], e
            assert all(_num(v) for v in e["args"].values()), e
    by_tid: dict[int, list[dict]] = defaultdict(list)
    for e in evs:
        if e["ph"] == "X":
            by_tid[e["tid"]].append(e)
    assert set(by_tid) <= set(names), f"tracks without a thread_name: {set(by_tid) - set(names)}"
    # every track is one in-order queue (a stream, a copy engine, the host thread, the CPU worker, the steps):
    # in file order its ops start in order and never overlap
    for tid, xs in by_tid.items():
        for a, b in zip(xs, xs[1:]):
            assert b["ts"] >= a["ts"], (names[tid], a, b)
            assert a["ts"] + a["dur"] <= b["ts"] + EPS, (names[tid], a, b)
    counters: dict[str, list[float]] = defaultdict(list)
    for e in evs:
        if e["ph"] == "C":
            counters[e["name"]].append(e["ts"])
    for name, ts in counters.items():
        assert ts == sorted(ts), name
    return evs


@pytest.fixture(scope="module", params=[("lru", "slots_per_layer=16"), ("cpu-experts", None)],
                ids=["lru", "cpu-experts"])
def run(request, tmp_path_factory):
    """(events, steps table) of one real CLI run."""
    import os
    import subprocess

    from conftest import _simmoe_exe  # the fixture is function-scoped; reuse its runner directly

    policy, opt = request.param
    d = tmp_path_factory.mktemp(policy)
    args = [*_simmoe_exe(), "replay", str(TRACE), "--hw", "rtx3090", "--policy", policy, "--max-requests", "1",
            "--timeline", str(d / "tl.json"), "--timeline-steps", f"{WINDOW[0]}:{WINDOW[1]}",
            "--steps-csv", str(d / "steps.csv"), "--quiet"]
    if opt:
        args += ["--opt", opt]
    p = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="0"),
                       timeout=300)
    assert p.returncode == 0, p.stderr
    return policy, validate(json.loads((d / "tl.json").read_text())), pd.read_csv(d / "steps.csv", comment="#")


def _tid(track: str) -> int:
    return TRACKS[track][0]


def test_tracks_present(run):
    policy, evs, _ = run
    used = {e["tid"] for e in evs if e["ph"] == "X"}
    assert {_tid("dispatch"), _tid("gpu"), _tid("h2d"), _tid("steps")} <= used
    if policy == "cpu-experts":  # activations go to the host, experts run on the CPU
        assert {_tid("d2h"), _tid("cpu")} <= used
    else:
        assert not {_tid("d2h"), _tid("cpu")} & used
    names = {e["args"]["name"] for e in evs if e["name"] == "process_name"}
    assert len(names) == 1 and policy in names.pop()


def test_window_matches_step_table(run):
    _, evs, steps = run
    win = steps[(steps["step"] >= WINDOW[0]) & (steps["step"] < WINDOW[1])]
    xs = [e for e in evs if e["ph"] == "X"]
    step_evs = [e for e in xs if e["tid"] == _tid("steps")]
    assert [e["name"] for e in step_evs] == [f"{k} step {s}" for k, s in zip(win["kind"], win["step"])]
    for e, row in zip(step_evs, win.itertuples()):
        assert e["ts"] == pytest.approx(row.start_us, abs=1e-3)
        assert e["dur"] == pytest.approx(row.latency_us, abs=2e-3)
        assert (e["args"]["hits"], e["args"]["misses"]) == (row.hits, row.misses)
    t0, t1 = win["start_us"].iloc[0], win["end_us"].iloc[-1]
    assert all(t0 - 1e-3 <= e["ts"] and e["ts"] + e["dur"] <= t1 + 1e-3 for e in xs)
    # the ops drawn add up to the busy time the engine counted for these steps
    gpu = sum(e["args"]["busy_us"] for e in xs if e["tid"] == _tid("gpu"))
    assert gpu == pytest.approx(win["gpu_busy_us"].sum(), rel=1e-9)
    for track in ("h2d", "cpu"):  # each dur is rounded to 1 ns
        durs = [e["dur"] for e in xs if e["tid"] == _tid(track)]
        assert sum(durs) == pytest.approx(win[f"{track}_busy_us"].sum(), abs=1e-3 * len(durs) + 1e-9)


def test_counters(run):
    _, evs, steps = run
    occ = [e for e in evs if e["ph"] == "C" and e["name"] == "expert cache occupancy"]
    mem = [e for e in evs if e["ph"] == "C" and e["name"] == "GPU memory (GiB)"]
    # one sample before the window (its start), one at the end of every step in it
    n = WINDOW[1] - WINDOW[0] + 1
    assert len(occ) == len(mem) == n
    rows = steps[(steps["step"] >= WINDOW[0] - 1) & (steps["step"] < WINDOW[1])]
    assert [e["args"]["experts"] for e in occ] == rows["cache_occupancy"].tolist()
    assert [e["args"]["kv cache"] for e in mem] == pytest.approx((rows["kv_bytes"] / 2**30).tolist())
    assert all(e["args"]["kv cache"] > 0 for e in mem)


def test_rounding_never_overlaps_and_unknown_tracks_get_names():
    evs = [Event("gpu", "a", "compute", 0.0, 0.1234567), Event("gpu", "b", "compute", 0.1234567, 0.3000004),
           Event("gpu", "c", "compute", 0.3000004, 0.3000004), Event("nvme", "read", "copy", 1.0, 2.0)]
    out = validate({"traceEvents": trace_events(evs, pd.DataFrame(), "t", 1), "displayTimeUnit": "ms"})
    names = {e["tid"]: e["args"]["name"] for e in out if e["name"] == "thread_name"}
    nvme = [e for e in out if e["ph"] == "X" and e["name"] == "read"][0]
    assert names[nvme["tid"]] == "nvme" and nvme["tid"] not in {v[0] for v in TRACKS.values()}
    gpu = [e for e in out if e["ph"] == "X" and e["tid"] == _tid("gpu")]
    assert [e["ts"] for e in gpu] == [0.0, 0.123, 0.3]
    assert gpu[0]["ts"] + gpu[0]["dur"] <= gpu[1]["ts"] and gpu[2]["dur"] == 0


def test_memory_counter_with_plan():
    steps = pd.DataFrame({"step": [0, 1], "kind": ["prefill", "decode"], "tokens": [4, 1], "start_us": [0.0, 10.0],
                          "end_us": [10.0, 12.0], "latency_us": [10.0, 2.0], "hits": [0, 1], "misses": [2, 1],
                          "cache_occupancy": [2, 3], "kv_bytes": [2**30, 2**31]})
    mem = {"dense": 2**32, "activations": 2**29, "staging": 2**29, "expert_bytes": 2**28}
    out = trace_events([], steps, "t", mem["expert_bytes"], window=(0, 2), memory=mem)
    cs = [e["args"] for e in out if e["name"] == "GPU memory (GiB)"]
    assert cs == [{"dense weights": 4.0, "activations + staging": 1.0, "kv cache": 1.0, "expert cache": 0.5},
                  {"dense weights": 4.0, "activations + staging": 1.0, "kv cache": 2.0, "expert cache": 0.75}]
