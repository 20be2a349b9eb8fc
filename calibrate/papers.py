"""Published end-to-end results replayed with the simulator: Eliseev & Mazur 2023 ("Fast Inference of
Mixture-of-Experts Language Models with Offloading", arXiv 2312.17238), Table 2 — Mixtral-8x7B-Instruct,
batch 1 decode, tokens/s on 4 GPUs x 2 expert precisions x 4 algorithm variants.

Each figure is simulated with the `mixtral-offloading` runtime (derived from the released code:
docs/runtimes/mixtral-offloading.md), the paper's cache sizes and the bundled Mixtral-shaped trace:

    full         per-layer LRU of k experts + speculative next-layer loading (prefetch `next-layer`)
    no prefetch  per-layer LRU of k experts
    no LRU       every expert copied when it is needed, nothing kept (`ondemand`)
    naive        every expert of every layer copied each time the layer runs (experts.fetch: layer)

k = 2 on the RTX 3060, 4 on the others (the paper's setting). One figure of the runtime is fitted to this
table: `host.launch_scale` (the host time of an eager op of that software stack relative to the hardware
profile's), by least squares on log tokens/s over the table (`fit_launch_scale`); everything else comes from
code and microbenchmarks. Run `python -m simmoe.calibrate.papers --out docs/validation` to write the report
(and `--fit` to fit the scale again).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from simmoe.engine.config import ReplayConfig
from simmoe.engine.replay import Replay
from simmoe.hw.profile import load_profile
from simmoe.policies.base import PolicySet
from simmoe.runtime.profile import RuntimeProfile, load_runtime
from simmoe.trace.format import Trace, read_trace

# Table 2, tokens/s: (A100, RTX 3080 Mobile, RTX 3060, T4)
TABLE2: dict[tuple[str, int], tuple[float, float, float, float]] = {
    ("full", 2): (3.061, 2.655, 2.278, 2.092),
    ("no prefetch", 2): (2.918, 2.227, 2.051, 1.567),
    ("no LRU", 2): (2.265, 1.758, 1.547, 1.168),
    ("naive", 2): (1.392, 1.059, 0.919, 0.661),
    ("full", 3): (2.845, 2.475, 2.038, 1.603),
    ("no prefetch", 3): (2.683, 2.024, 1.857, 1.365),
    ("no LRU", 3): (2.055, 1.595, 1.346, 1.061),
    ("naive", 3): (1.246, 0.914, 1.791, 0.580),
}
# the paper's machines and the bundled profiles that describe them
GPUS = (("A100", "a100-80gb-sxm"), ("RTX 3080 Mobile", "rtx3080-laptop"), ("RTX 3060", "rtx3060"),
        ("T4", "t4"))
FORMATS = {2: "hqq2-g16", 3: "hqq3-g64"}
VARIANTS = ("full", "no prefetch", "no LRU", "naive")
# 3-bit naive on the RTX 3060 reads 1.791 tokens/s, faster than every other 3-bit figure of that GPU and than
# its own 2-bit naive (0.919): almost certainly a typo in the paper; reported, left out of the error summary
EXCLUDED = {("naive", 3, "RTX 3060")}
# Speculative loading's hit rate: "correct prefetch rates above 80-90%" (a secondary summary of the paper; ~)
SPECULATIVE_ACCURACY = 0.8
DEFAULT_TRACE = Path(__file__).resolve().parent.parent / "traces" / "mixtral-8x7b-synth.npz"


@dataclass(frozen=True)
class Config:
    variant: str
    bits: int
    gpu: str
    hw: str

    @property
    def slots(self) -> int:
        return 2 if self.gpu == "RTX 3060" else 4

    def policies(self) -> PolicySet:
        if self.variant in ("full", "no prefetch"):
            return PolicySet("lru", {"slots_per_layer": self.slots},
                             prefetch="next-layer" if self.variant == "full" else None,
                             prefetch_options={"accuracy": SPECULATIVE_ACCURACY} if self.variant == "full" else {})
        return PolicySet("ondemand")

    def runtime(self, launch_scale: float | None = None) -> RuntimeProfile:
        ov: dict = {"weights.experts": FORMATS[self.bits]}
        if self.variant == "naive":
            ov["experts.fetch"] = "layer"
        if launch_scale is not None:
            ov["host.launch_scale"] = launch_scale
        return load_runtime("mixtral-offloading", ov)


def configs() -> list[Config]:
    return [Config(v, b, g, hw) for b in (2, 3) for v in VARIANTS for g, hw in GPUS]


def simulate(trace: Trace | None = None, launch_scale: float | None = None,
             max_requests: int | None = None) -> pd.DataFrame:
    """One row per Table 2 figure: paper and simulated tokens/s, the error and what the run looked like."""
    tr = trace if trace is not None else read_trace(DEFAULT_TRACE)
    rows = []
    for c in configs():
        s = Replay(tr, load_profile(c.hw), c.policies(), ReplayConfig(max_requests=max_requests), hw_name=c.hw,
                   runtime=c.runtime(launch_scale)).run().summary
        paper = TABLE2[(c.variant, c.bits)][[g for g, _ in GPUS].index(c.gpu)]
        sim = s["tokens_per_s"]
        rows.append({"variant": c.variant, "bits": c.bits, "gpu": c.gpu, "hw": c.hw, "slots": c.slots,
                     "paper_tok_s": paper, "sim_tok_s": sim, "error": sim / paper - 1,
                     "excluded": (c.variant, c.bits, c.gpu) in EXCLUDED, "hit_rate": s["hit_rate"],
                     "pcie_busy": s["pcie_busy"], "gpu_busy": s["gpu_busy"],
                     "stall_copy_ms": s["stall_ms"]["copy"] / max(s["tokens"], 1),
                     "stall_dispatch_ms": s["stall_ms"]["dispatch"] / max(s["tokens"], 1)})
    return pd.DataFrame(rows)


def log_error(df: pd.DataFrame) -> float:
    d = df[~df["excluded"]]
    return float(np.sqrt(np.mean(np.log(d["sim_tok_s"] / d["paper_tok_s"]) ** 2)))


def fit_launch_scale(trace: Trace | None = None, bounds: tuple[float, float] = (0.5, 10.0),
                     max_requests: int | None = None) -> tuple[float, float]:
    """The runtime's one fitted figure: the launch scale minimising the RMS log error over the table."""
    from scipy.optimize import minimize_scalar

    tr = trace if trace is not None else read_trace(DEFAULT_TRACE)
    res = minimize_scalar(lambda x: log_error(simulate(tr, x, max_requests)), bounds=bounds, method="bounded",
                          options={"xatol": 0.02})
    return float(res.x), float(res.fun)


def directions(df: pd.DataFrame) -> pd.DataFrame:
    """Per GPU and precision: does prefetch help (full vs no prefetch) and the LRU cache (no prefetch vs no
    LRU), in the paper and in the simulation."""
    out = []
    for (gpu, bits), g in df.groupby(["gpu", "bits"], sort=False):
        v = {r.variant: r for r in g.itertuples()}
        for name, a, b in (("prefetch", "full", "no prefetch"), ("LRU cache", "no prefetch", "no LRU"),
                           ("cache vs naive", "no LRU", "naive")):
            if (b == "naive" and (b, bits, gpu) in EXCLUDED):
                continue
            pg, sg = v[a].paper_tok_s / v[b].paper_tok_s, v[a].sim_tok_s / v[b].sim_tok_s
            out.append({"gpu": gpu, "bits": bits, "ablation": name, "paper_gain": pg - 1, "sim_gain": sg - 1,
                        "same_direction": (pg > 1) == (sg > 1)})
    return pd.DataFrame(out)


def summary(df: pd.DataFrame) -> dict[str, float]:
    err = df[~df["excluded"]]["error"].abs()
    dirs = directions(df)
    return {"mae": float(err.mean()), "median": float(err.median()), "worst": float(err.max()),
            "within_25": int((err <= 0.25).sum()), "figures": int(len(err)),
            "directions": int(dirs["same_direction"].sum()), "ablations": int(len(dirs))}


def report(df: pd.DataFrame, runtime: RuntimeProfile, trace: str, unfitted: pd.DataFrame | None = None) -> str:
    d = df[~df["excluded"]]
    err = d["error"].abs()
    dirs = directions(df)
    lines = [
        "# Eliseev & Mazur 2023, Table 2, simulated",
        "",
        f"Mixtral-8x7B, batch 1 decode, tokens/s. Runtime `{runtime.name}` (host.launch_scale "
        f"{runtime.host.launch_scale:g}, the one figure fitted to this table), trace `{trace}`. Made by "
        "`python -m simmoe.calibrate.papers --out docs/validation` (calibrate/papers.py).",
        "",
        f"- **mean absolute error {100 * err.mean():.1f}%**, median {100 * err.median():.1f}%, worst "
        f"{100 * err.max():.1f}%; {int((err <= 0.25).sum())} of {len(err)} figures within 25% "
        f"(3-bit naive on the RTX 3060, 1.791 tok/s, is left out: almost certainly a typo in the paper)",
        f"- ablations in the paper's direction: {int(dirs['same_direction'].sum())} of {len(dirs)}",
    ]
    if unfitted is not None:
        u = summary(unfitted)
        lines.append(f"- without the fitted figure (host.launch_scale 1, every figure from code, microbenchmarks "
                     f"and the hardware profiles): mean absolute error {100 * u['mae']:.1f}%, {u['within_25']} of "
                     f"{u['figures']} within 25%, {u['directions']} of {u['ablations']} ablations in the paper's "
                     "direction; every cache-based figure too fast")
    lines += [
        "",
        "| experts | algorithm | " + " | ".join(g for g, _ in GPUS) + " |",
        "|---|---|" + "---:|" * len(GPUS),
    ]
    for bits in (2, 3):
        for v in VARIANTS:
            cells = []
            for g, _ in GPUS:
                r = df[(df.bits == bits) & (df.variant == v) & (df.gpu == g)].iloc[0]
                mark = " (excluded)" if r.excluded else ""
                cells.append(f"{r.sim_tok_s:.2f} / {r.paper_tok_s:.2f} ({100 * r.error:+.0f}%){mark}")
            lines.append(f"| {bits}-bit | {v} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: simulated / paper tokens/s (error). Hardware: the bundled profiles "
              + ", ".join(f"`{hw}` ({g})" for g, hw in GPUS) + ".", "",
              "## Ablations", "", "| GPU | experts | ablation | paper gain | simulated gain | same direction |",
              "|---|---|---|---:|---:|---|"]
    for r in dirs.itertuples():
        lines.append(f"| {r.gpu} | {r.bits}-bit | {r.ablation} | {100 * r.paper_gain:+.0f}% | "
                     f"{100 * r.sim_gain:+.0f}% | {'yes' if r.same_direction else '**no**'} |")
    wrong = dirs[~dirs["same_direction"]]
    lines += ["", "## Where the error comes from", "",
              "- Derived, not fitted: hit counts (the runtime's loader: a layer's resident experts first, ascending "
              "index; per-layer LRU), copy sizes (HQQ formats: 66.4 / 82.7 MB per expert), the write-back of every "
              "evicted expert on the default stream, 26 eager ops + 3 Triton launches + 3 index read-backs per "
              "expert, 63 eager ops + 4 Triton launches per layer, the dequantisation traffic (peak-bandwidth "
              "lower bound), the speculative loader's accuracy (~0.8, from a summary of the paper).",
              "- The fitted launch scale stands for everything per op that the op count misses (module calls, "
              "HQQ's Python, PyTorch 2.1's dispatch on the paper's hosts); its size (52-78 us per op) says the "
              "paper's software stack, not its hardware, sets most of a token's time.",
              "- The write-back doubles the PCIe time of a miss. With 2 slots per layer (RTX 3060, ~32% hits on "
              "this trace) that makes the LRU cache cost more than it saves in the simulation, while the paper "
              "measures it helping. Either the runs behind Table 2 did not pay the write-back (the released "
              "cache does), or the real hit rate with 2 slots was higher than this trace's."
              if len(wrong) else "- Every ablation goes the paper's way.",
              "- naive offloading (every expert of every layer copied each token) is copy-bound: its error is the "
              "profiles' link bandwidth and what of the host time overlaps the copies in the authors' "
              "(unpublished) naive implementation.",
              "- Trace: a synthetic Mixtral-shaped trace tuned to the LRU curve of real Mixtral routing "
              "(traces/README.md); no real Mixtral routing is bundled."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simmoe.calibrate.papers", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", metavar="DIR", help="write papers.md and papers.csv here")
    p.add_argument("--fit", action="store_true", help="fit host.launch_scale again and print it")
    p.add_argument("--trace", default=str(DEFAULT_TRACE))
    args = p.parse_args(argv)
    tr = read_trace(args.trace)
    if args.fit:
        x, err = fit_launch_scale(tr)
        print(f"fitted host.launch_scale {x:.2f} (RMS log error {err:.3f})")
    df = simulate(tr)
    rt = configs()[0].runtime()
    text = report(df, rt, Path(args.trace).name, unfitted=simulate(tr, launch_scale=1.0))
    print(text)
    if args.out:
        from simmoe.fileio import atomic_path

        out = Path(args.out)
        with atomic_path(out / "papers.md") as tmp:
            tmp.write_text(text)
        with atomic_path(out / "papers.csv") as tmp:
            df.to_csv(tmp, index=False, float_format="%.4f")
    return 0 if math.isfinite(log_error(df)) else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
