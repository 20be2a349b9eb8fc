"""The calibration loop closed on a CPU: calibrate this machine's CPU as the compute device, then run the real
executor on it (`validate --device cpu`) and compare with the simulator, repeated to show the run-to-run
spread beside the error.

    python -m simmoe.calibrate.cpu_loop --out docs/validation      # writes cpu.md, cpu.csv, cpu-steps.csv,
                                                                   # and the profile it fitted (cpu-profile.*)

Configurations: resident, ondemand, LRU at 1/4, 1/2 and 3/4 of a layer's experts, cpu-experts, LRU 1/2 with
the oracle prefetch; batch 1 and 4. Each is measured `repeats` times (a fresh executor each time) and the
error is the simulated mean decode-step latency against the median of the measured ones. Both sides run the
`simmoe-executor` runtime (the executor's own code, counted).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from simmoe.trace.format import Trace, read_trace

DEFAULT_TRACE = Path(__file__).resolve().parent.parent / "traces" / "tinymoe-stdlib.npz"


def configs(num_experts: int) -> list[str]:
    q = [max(1, num_experts * k // 4) for k in (1, 2, 3)]
    return ["resident", "ondemand", *(f"lru:slots_per_layer={s}" for s in q), "cpu-experts",
            f"lru:slots_per_layer={q[1]}+prefetch=oracle"]


def calibrate_cpu(trace: Trace, out: Path, threads: int = 1) -> Path:
    """`simmoe calibrate --device cpu --as-device --model TRACE --max-tokens 64` into `out`; the profile."""
    from simmoe.calibrate import profile_writer

    res = profile_writer.run_calibration([trace.spec], device="cpu", quick=False, base=None, name="cpu-profile",
                                         threads=threads, progress=False, as_device=True, max_tokens=64)
    yaml_path, _ = profile_writer.write_profile(res.profile, res.raw, out / "cpu-profile.yaml")
    return yaml_path


def run_loop(trace: Trace, profile: Path, *, repeats: int = 5, batches=(1, 4), max_requests: int = 4,
             threads: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per configuration and batch: measured median and spread, simulated, error; the per-step table
    of the first repetition)."""
    from simmoe.calibrate.validate import parse_config, run_validation
    from simmoe.hw.profile import load_profile

    hw = load_profile(profile)
    cfgs = [parse_config(c) for c in configs(trace.spec.num_experts)]
    reps = []
    steps = None
    for _ in range(repeats):
        rep = run_validation(trace, hw, cfgs, batches, device="cpu", threads=threads, max_requests=max_requests)
        reps.append(rep)
        if steps is None:
            steps = rep.steps
    rows = []
    for i, r in enumerate(reps[0].rows):
        meas = np.array([rep.rows[i].measured_mean_ms for rep in reps])
        med = float(np.median(meas))
        rows.append({"config": r.config, "batch": r.batch, "decode_steps": r.decode_steps,
                     "measured_median_ms": med, "measured_min_ms": float(meas.min()),
                     "measured_max_ms": float(meas.max()), "spread": float((meas.max() - meas.min()) / med),
                     "simulated_ms": r.simulated_mean_ms, "error": r.simulated_mean_ms / med - 1,
                     "counts_match": all(rep.rows[i].counts_match for rep in reps)})
    return pd.DataFrame(rows), steps


def where_the_error_is(steps: pd.DataFrame) -> list[str]:
    """The per-step table's error by step kind and batch: prefill steps, decode steps."""
    out = []
    for (b, kind), g in steps.groupby(["batch", "kind"]):
        err = g["simulated_us"].sum() / g["measured_us"].sum() - 1
        out.append(f"batch {b} {kind} steps: simulated / measured - 1 = {100 * err:+.1f}% over {len(g)} steps")
    return out


def report(df: pd.DataFrame, steps: pd.DataFrame, profile: str, trace: str, repeats: int, machine: str) -> str:
    err = df["error"].abs()
    lines = [
        "# The calibration loop on a CPU",
        "",
        f"`python -m simmoe.calibrate.cpu_loop --out docs/validation` (calibrate/cpu_loop.py) on {machine}, "
        f"{_dt.date.today().isoformat()}: `simmoe calibrate --device cpu --as-device --model {trace} --max-tokens 64 "
        f"--threads 1` wrote `{profile}`; then the real executor (`simmoe validate --device cpu --threads 1`, "
        f"runtime `simmoe-executor`) ran every configuration {repeats} times. Error = simulated mean decode-step "
        "latency / median measured - 1; spread = (max - min) / median of the measured means.",
        "",
        f"- **mean absolute error {100 * err.mean():.1f}%** against the median, worst {100 * err.max():.1f}%; "
        f"{int((err <= 0.2).sum())} of {len(err)} configurations within 20%",
        f"- run-to-run spread: median {100 * df['spread'].median():.1f}%, largest {100 * df['spread'].max():.1f}%",
        f"- cache decisions equal in every configuration and repetition: "
        f"{'yes' if df['counts_match'].all() else '**NO**'}",
        "",
        "| batch | configuration | decode steps | measured median | min .. max | spread | simulated | error |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in df.itertuples():
        lines.append(f"| {r.batch} | `{r.config}` | {r.decode_steps} | {r.measured_median_ms:.3f} | "
                     f"{r.measured_min_ms:.3f} .. {r.measured_max_ms:.3f} | {100 * r.spread:.1f}% | "
                     f"{r.simulated_ms:.3f} | {100 * r.error:+.1f}% |")
    lines += ["", "Latencies in ms per decode step. Per-step times of the first repetition: `cpu-steps.csv`.", "",
              "## Where the remaining error comes from", ""]
    lines += [f"- {x}" for x in where_the_error_is(steps)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simmoe.calibrate.cpu_loop", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", metavar="DIR", help="write cpu.md, cpu.csv, cpu-steps.csv and the fitted profile here")
    p.add_argument("--trace", default=str(DEFAULT_TRACE))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-requests", type=int, default=4)
    args = p.parse_args(argv)
    from simmoe.calibrate.machine import machine_facts
    from simmoe.fileio import atomic_path

    trace = read_trace(args.trace)
    with tempfile.TemporaryDirectory(prefix="simmoe-cpu-loop-") as tmp:
        where = Path(args.out) if args.out else Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        profile = calibrate_cpu(trace, where)
        df, steps = run_loop(trace, profile, repeats=args.repeats, max_requests=args.max_requests)
        facts = machine_facts("cpu", 1)
        machine = f"{facts.get('cpu', 'this CPU')} ({facts.get('cpu_threads_used', 1)} thread)"
        text = report(df, steps, profile.name, Path(args.trace).name, args.repeats, machine)
        print(text)
        if args.out:
            with atomic_path(where / "cpu.md") as t:
                t.write_text(text)
            with atomic_path(where / "cpu.csv") as t:
                df.to_csv(t, index=False, float_format="%.4f")
            with atomic_path(where / "cpu-steps.csv") as t:
                steps.to_csv(t, index=False, float_format="%.3f")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
