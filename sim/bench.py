"""Replay benchmark: expert activations simulated per second, and how run time grows with trace length.

Run with `simmoe bench` (figures go to stdout; nothing is asserted: speed is measured, not tested).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from simmoe.engine.config import ReplayConfig
from simmoe.engine.replay import Replay
from simmoe.hw.profile import load_profile
from simmoe.policies.base import PolicySet
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


def _trace(case: Case, tokens: int, requests: int = 20):
    per = tokens // requests
    prompt = max(per // 8, 1)
    return synth_trace(case.model, requests=requests, prompt_tokens=prompt, decode_tokens=per - prompt, seed=0,
                       **PRESETS[case.preset])


def _time(trace, hw, slots: int, batch: int, engine: str = "fast", repeat: int = 1) -> tuple[float, dict]:
    best = float("inf")
    summary = {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = Replay(trace, hw, PolicySet("lru", {"slots_per_layer": slots}), ReplayConfig(batch=batch,
                                                                                            engine=engine)).run()
        best = min(best, time.perf_counter() - t0)
        summary = res.summary
    return best, summary


def run_bench(quick: bool = False, batches: tuple[int, ...] = (1, 8), simpy_ref: bool = True) -> list[dict]:
    rows = []
    for case in CASES:
        hw = load_profile(case.hw)
        tokens = case.tokens // 10 if quick else case.tokens
        full = _trace(case, tokens)
        half = _trace(case, tokens // 2)
        for b in batches:
            t_full, s = _time(full, hw, case.slots, b)
            t_half, _ = _time(half, hw, case.slots, b)
            acts = s["activations"]
            row = {"case": case.label, "tokens": full.num_rows, "batch": b, "activations": acts,
                   "wall_s": t_full, "activations_per_s": acts / t_full, "growth_2x": t_full / t_half,
                   "sim_s": s["makespan_s"], "speedup_vs_modelled": s["makespan_s"] / t_full,
                   "hit_rate": s["hit_rate"]}
            rows.append(row)
            print(f"{case.label:<30} batch {b}: {full.num_rows:>6} tokens, {acts:>9,} activations in "
                  f"{t_full:6.2f} s = {acts / t_full:>10,.0f} activations/s; time x{t_full / t_half:.2f} when "
                  f"the trace doubles; simulated {s['makespan_s']:.1f} s of execution "
                  f"({s['makespan_s'] / t_full:,.0f}x faster than modelled), hit rate {100 * s['hit_rate']:.1f}%",
                  flush=True)
        if simpy_ref:
            small = _trace(case, max(tokens // 20, 200))
            t_fast, _ = _time(small, hw, case.slots, 1, repeat=3)
            t_simpy, _ = _time(small, hw, case.slots, 1, engine="simpy")
            print(f"{case.label:<30} engine=simpy (one SimPy event per kernel) on {small.num_rows} tokens: "
                  f"{t_simpy:.2f} s vs fast {t_fast:.3f} s ({t_simpy / t_fast:.0f}x slower)", flush=True)
    return rows
