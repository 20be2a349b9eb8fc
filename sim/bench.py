"""Replay benchmark: expert activations simulated per second, how run time grows with trace length, and (with
`baseline`) the same cases run by another git revision of simmoe in the same run, for a ratio.

Run with `simmoe bench` (figures go to stdout; nothing is asserted: speed is measured, not tested). Times
are the best of `repeat` runs, in process CPU time (less disturbed than wall time by other jobs on a shared
machine); wall time is reported beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from simmoe.engine.config import ReplayConfig
from simmoe.engine.replay import Replay
from simmoe.errors import InputError
from simmoe.hw.profile import load_profile
from simmoe.policies.base import PolicySet
from simmoe.trace.format import write_trace
from simmoe.trace.synth import PRESETS, synth_trace


@dataclass
class Case:
    label: str
    model: str
    preset: str
    tokens: int
    hw: str
    slots: int


CASES = [
    Case("deepseek-v2-lite 26x64 top-6", "deepseek-v2-lite", "deepseek-v2-lite-like", 20_000, "a100-80gb-sxm", 16),
    Case("mixtral-8x7b 32x8 top-2", "mixtral-8x7b", "mixtral-like", 10_000, "a100-80gb-sxm", 4),
]

# What a run of one configuration looks like, in any version of simmoe since the first release of the
# engine: only Replay, ReplayConfig, PolicySet, load_profile and read_trace are used.
_DRIVER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from simmoe.engine.config import ReplayConfig
from simmoe.engine.replay import Replay
from simmoe.hw.profile import load_profile
from simmoe.policies.base import PolicySet
from simmoe.trace.format import read_trace
a = json.loads(sys.argv[2])
tr, hw = read_trace(a["trace"]), load_profile(a["hw"])
best = None
for _ in range(a["repeat"]):
    c0, w0 = time.process_time(), time.perf_counter()
    s = Replay(tr, hw, PolicySet("lru", {"slots_per_layer": a["slots"]}), ReplayConfig(batch=a["batch"],
               engine=a["engine"])).run().summary
    c, w = time.process_time() - c0, time.perf_counter() - w0
    if best is None or c < best[0]:
        best = (c, w)
import simmoe
print(json.dumps({"cpu_s": best[0], "wall_s": best[1], "activations": s["activations"], "hits": s["hits"],
                  "makespan_s": s["makespan_s"], "where": simmoe.__file__}))
"""


def _trace(case: Case, tokens: int, requests: int = 20):
    per = tokens // requests
    prompt = max(per // 8, 1)
    return synth_trace(case.model, requests=requests, prompt_tokens=prompt, decode_tokens=per - prompt, seed=0,
                       **PRESETS[case.preset])


def _time(trace, hw, slots: int, batch: int, engine: str = "fast", repeat: int = 1) -> tuple[float, float, dict]:
    """Best (CPU s, wall s) of `repeat` runs, and the summary."""
    best = (float("inf"), float("inf"))
    summary: dict = {}
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        res = Replay(trace, hw, PolicySet("lru", {"slots_per_layer": slots}),
                     ReplayConfig(batch=batch, engine=engine)).run()
        c, w = time.process_time() - c0, time.perf_counter() - w0
        if c < best[0]:
            best = (c, w)
        summary = res.summary
    return best[0], best[1], summary


class Baseline:
    """Another revision of simmoe, unpacked from git into a temporary folder laid out as the installed
    package (sim/ as simmoe, calibrate/ as simmoe.calibrate, hwprofiles/ as simmoe.hwprofiles), run in a
    subprocess that imports it first."""

    def __init__(self, rev: str, repo: Path | None = None) -> None:
        self.rev = rev
        repo = repo or Path(__file__).resolve().parent.parent
        self.tmp = Path(tempfile.mkdtemp(prefix="simmoe-baseline-"))
        src = self.tmp / "src"
        src.mkdir()
        try:
            archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", rev], check=True,
                                     capture_output=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            shutil.rmtree(self.tmp, ignore_errors=True)
            err = getattr(e, "stderr", b"") or b""
            raise InputError("--baseline", rev, f"cannot read this revision from git in {repo} "
                             f"({err.decode(errors='replace').strip() or e})") from None
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        pkg = self.tmp / "pkg" / "simmoe"
        shutil.move(str(src / "sim"), str(pkg.parent / "simmoe"))
        shutil.move(str(src / "calibrate"), str(pkg / "calibrate"))
        shutil.move(str(src / "hwprofiles"), str(pkg / "hwprofiles"))
        self.path = self.tmp / "pkg"
        self.commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", rev], check=True,
                                     capture_output=True, text=True).stdout.strip()

    def time(self, trace_path: Path, hw: str, slots: int, batch: int, repeat: int, engine: str = "fast") -> dict:
        args = {"trace": str(trace_path), "hw": hw, "slots": slots, "batch": batch, "repeat": repeat,
                "engine": engine}
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        out = subprocess.run([sys.executable, "-c", _DRIVER, str(self.path), json.dumps(args)], check=True,
                             capture_output=True, text=True, env=env)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        if not res["where"].startswith(str(self.path)):  # the subprocess must not fall back to this version
            raise RuntimeError(f"baseline run imported {res['where']}, not the baseline in {self.path}")
        return res

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def run_bench(quick: bool = False, batches: tuple[int, ...] = (1, 8), simpy_ref: bool = True,
              baseline: str | None = None, repeat: int = 3) -> list[dict]:
    base = Baseline(baseline) if baseline else None
    if base is not None:
        print(f"baseline: revision {baseline} ({base.commit}), run in a subprocess on the same traces", flush=True)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="simmoe-bench-") as tmp:
            for case in CASES:
                hw = load_profile(case.hw)
                tokens = case.tokens // 10 if quick else case.tokens
                full = _trace(case, tokens)
                half = _trace(case, tokens // 2)
                path = Path(tmp) / f"{case.model}.npz"
                if base is not None:
                    write_trace(full, path)
                for b in batches:
                    c_full, w_full, s = _time(full, hw, case.slots, b, repeat=repeat)
                    c_half, _, _ = _time(half, hw, case.slots, b, repeat=repeat)
                    acts = s["activations"]
                    row = {"case": case.label, "tokens": full.num_rows, "batch": b, "activations": acts,
                           "cpu_s": c_full, "wall_s": w_full, "activations_per_s": acts / c_full,
                           "growth_2x": c_full / c_half, "sim_s": s["makespan_s"],
                           "speedup_vs_modelled": s["makespan_s"] / w_full, "hit_rate": s["hit_rate"]}
                    line = (f"{case.label:<30} batch {b}: {full.num_rows:>6} tokens, {acts:>9,} activations in "
                            f"{c_full:6.2f} s CPU ({w_full:.2f} s wall) = {acts / c_full:>10,.0f} activations/s; "
                            f"x{c_full / c_half:.2f} when the trace doubles; simulated {s['makespan_s']:.1f} s "
                            f"({s['makespan_s'] / w_full:,.0f}x faster than modelled), hit rate "
                            f"{100 * s['hit_rate']:.1f}%")
                    if base is not None:
                        ref = base.time(path, case.hw, case.slots, b, repeat)
                        same = ref["hits"] == s["hits"] and ref["makespan_s"] == s["makespan_s"]
                        row.update(baseline=baseline, baseline_cpu_s=ref["cpu_s"],
                                   baseline_activations_per_s=ref["activations"] / ref["cpu_s"],
                                   ratio=ref["cpu_s"] / c_full, baseline_same_result=same)
                        line += (f"\n{'':<30} baseline {base.commit}: {ref['activations'] / ref['cpu_s']:>10,.0f} "
                                 f"activations/s; this version x{ref['cpu_s'] / c_full:.2f} "
                                 f"({'same' if same else 'DIFFERENT'} hits and simulated time)")
                    rows.append(row)
                    print(line, flush=True)
                if simpy_ref:
                    small = _trace(case, max(tokens // 20, 200))
                    c_fast, _, _ = _time(small, hw, case.slots, 1, repeat=3)
                    c_simpy, _, _ = _time(small, hw, case.slots, 1, engine="simpy")
                    print(f"{case.label:<30} engine=simpy (one SimPy event per kernel) on {small.num_rows} tokens: "
                          f"{c_simpy:.2f} s vs fast {c_fast:.3f} s ({c_simpy / c_fast:.0f}x slower)", flush=True)
    finally:
        if base is not None:
            base.close()
    return rows
