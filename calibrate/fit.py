"""SciPy fits of the profile's timing models to measured medians.

Models (times in microseconds, bandwidths in GB/s = 1e9 bytes/s, compute in GFLOP/s = 1e9 FLOP/s):

- copy:     t(bytes) = latency_us + bytes / (gbps * 1e3)                         -> PcieSpec fields
- roofline: t(flops, bytes) = overhead_us + max(flops / (gflops * 1e3), bytes / (gbps * 1e3))
            fitted jointly over one or more kernel shapes and token counts        -> CpuSpec / GpuSpec
            efficiencies and the per-call overhead

Both are fitted on relative residuals (pred / measured - 1): the data span orders of magnitude and a 3 us
error matters at 5 us, not at 50 ms. `rel_rms` (root mean square of those) is what `calibration.residuals`
reports. A fit that cannot be determined from its data raises `FitError` naming the fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import curve_fit, least_squares


class FitError(ValueError):
    """The data cannot determine the fit (too few points, no spread, non-positive times...)."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        self.message = message
        super().__init__(f"fit {name!r}: {message}")


def rel_rms(pred: Sequence[float] | np.ndarray, meas: Sequence[float] | np.ndarray) -> float:
    """Relative RMS residual: sqrt(mean((pred / meas - 1)^2))."""
    p = np.asarray(pred, dtype=float)
    m = np.asarray(meas, dtype=float)
    return float(np.sqrt(np.mean((p / m - 1.0) ** 2)))


def _as_points(name: str, times_us: Sequence[float], *cols: Sequence[float]) -> list[np.ndarray]:
    arrs = [np.asarray(c, dtype=float).ravel() for c in (*cols, times_us)]
    n = len(arrs[-1])
    if any(len(a) != n for a in arrs):
        raise FitError(name, "inputs have different lengths")
    for a in arrs:
        if not np.all(np.isfinite(a)):
            raise FitError(name, "non-finite value in the measurements")
    if np.any(arrs[-1] <= 0):
        raise FitError(name, "measured times must be > 0")
    return arrs


# ---- copies ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CopyFit:
    """t = latency_us + bytes / (gbps * 1e3)."""

    name: str
    latency_us: float
    gbps: float
    rel_rms: float
    n_points: int

    def predict(self, size_bytes: float | np.ndarray) -> np.ndarray:
        return self.latency_us + np.asarray(size_bytes, dtype=float) / (self.gbps * 1e3)


def fit_copy(size_bytes: Sequence[float], times_us: Sequence[float], name: str = "copy") -> CopyFit:
    """Latency + bandwidth of a copy direction from (size, median time) points; needs >= 3 points over >= 2
    sizes, the largest at least 16x the smallest so that both terms show."""
    b, t = _as_points(name, times_us, size_bytes)
    if len(t) < 3:
        raise FitError(name, f"needs at least 3 measurements, got {len(t)}")
    if np.any(b <= 0):
        raise FitError(name, "sizes must be > 0 bytes")
    if b.max() < 16 * b.min():
        raise FitError(name, "sizes span less than 16x: latency and bandwidth cannot be separated")

    def model(x: np.ndarray, lat: float, inv_bw: float) -> np.ndarray:
        return lat + x * inv_bw

    # Start from the weighted linear least-squares solution (the model is linear in its parameters).
    w = 1.0 / t
    a = np.stack([w, b * w], axis=1)
    p0, *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
    p0 = np.array([max(p0[0], 0.0), max(p0[1], 1e-12 / 1e3)])
    try:
        popt, _ = curve_fit(model, b, t, p0=p0, sigma=t, bounds=([0.0, 0.0], [np.inf, np.inf]),
                            max_nfev=10_000)
    except (RuntimeError, ValueError) as e:
        raise FitError(name, f"did not converge ({e})") from None
    lat, inv_bw = (float(x) for x in popt)
    if not inv_bw > 0 or not np.isfinite(inv_bw):
        raise FitError(name, "times do not grow with size: bandwidth is undetermined")
    gbps = 1.0 / (inv_bw * 1e3)
    return CopyFit(name, lat, gbps, rel_rms(model(b, lat, inv_bw), t), len(t))


# ---- kernels --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RooflineFit:
    """t = overhead_us + max(flops / (gflops * 1e3), bytes / (gbps * 1e3)).

    `gflops` is the achieved compute rate (peak x matmul efficiency), `gbps` the achieved rate of streaming
    the weights (bandwidth x memory efficiency). `notes` says when one of them is only a bound because no
    measured point lies in its regime.
    """

    name: str
    overhead_us: float
    gflops: float
    gbps: float
    rel_rms: float
    n_points: int
    notes: tuple[str, ...] = field(default=())

    def predict(self, flops: float | np.ndarray, nbytes: float | np.ndarray) -> np.ndarray:
        f = np.asarray(flops, dtype=float) / (self.gflops * 1e3)
        m = np.asarray(nbytes, dtype=float) / (self.gbps * 1e3)
        return self.overhead_us + np.maximum(f, m)


def fit_roofline(
    flops: Sequence[float],
    nbytes: Sequence[float],
    times_us: Sequence[float],
    name: str = "kernel",
    overhead_us: float | None = None,
) -> RooflineFit:
    """Fit the roofline model to kernel timings over token counts (and shapes).

    The per-call overhead and the bandwidth trade off against each other when every point has the same
    weight bytes, so a free overhead needs points from at least two shapes (calibration adds a tiny probe
    expert for this); pass `overhead_us` to fix it instead.
    """
    f, m, t = _as_points(name, times_us, flops, nbytes)
    nfree = 3 if overhead_us is None else 2
    if len(t) < nfree + 1:
        raise FitError(name, f"needs at least {nfree + 1} measurements, got {len(t)}")
    if np.any(f <= 0) or np.any(m <= 0):
        raise FitError(name, "flops and bytes must be > 0")
    if len(np.unique(f)) < 2:
        raise FitError(name, "needs at least 2 distinct token counts")
    if overhead_us is None and len(np.unique(m)) < 2:
        raise FitError(name, "all points have the same weight bytes: the overhead cannot be separated from "
                             "the bandwidth (measure a second shape or fix overhead_us)")
    if overhead_us is not None and not (np.isfinite(overhead_us) and overhead_us >= 0):
        raise FitError(name, f"fixed overhead_us must be >= 0, got {overhead_us}")

    # Parameters: [overhead_us], log(compute rate in FLOP/us), log(bandwidth in bytes/us).
    tmin = float(t.min())
    lf0, lm0 = float(np.log(np.max(f / t))), float(np.log(np.max(m / t)))

    def unpack(p: np.ndarray) -> tuple[float, float, float]:
        if overhead_us is None:
            return float(p[0]), float(p[1]), float(p[2])
        return float(overhead_us), float(p[0]), float(p[1])

    def predict(p: np.ndarray) -> np.ndarray:
        c, lf, lm = unpack(p)
        return c + np.maximum(f * np.exp(-lf), m * np.exp(-lm))

    def resid(p: np.ndarray) -> np.ndarray:
        return predict(p) / t - 1.0

    span = 12.0  # rates searched within e^12 (~1.6e5x) of the data's best achieved rate
    lo_r, hi_r = [lf0 - span, lm0 - span], [lf0 + span, lm0 + span]
    best = None
    for cfrac in ((0.0, 0.2, 0.5, 0.8) if overhead_us is None else (None,)):
        for df, dm in ((0.0, 0.0), (0.7, 0.7), (0.7, -0.3), (-0.3, 0.7)):
            rates = [lf0 + df, lm0 + dm]
            if overhead_us is None:
                x0, lo, hi = [cfrac * tmin, *rates], [0.0, *lo_r], [1.5 * tmin, *hi_r]
            else:
                x0, lo, hi = rates, lo_r, hi_r
            x0 = np.clip(x0, np.add(lo, 1e-9), np.subtract(hi, 1e-9))
            try:
                r = least_squares(resid, x0, bounds=(lo, hi), method="trf", x_scale="jac", max_nfev=2000)
            except ValueError as e:  # pragma: no cover - defensive
                raise FitError(name, f"did not converge ({e})") from None
            if best is None or r.cost < best.cost:
                best = r
    assert best is not None
    c, lf, lm = unpack(best.x)
    rate_f, rate_m = float(np.exp(lf)), float(np.exp(lm))  # FLOP/us, bytes/us

    # A rate none of the points is limited by is only bounded: report the bound that changes no prediction.
    notes: list[str] = []
    comp, mem = f / rate_f, m / rate_m
    if not np.any(mem > comp):
        rate_m = float(np.max(m / comp))
        notes.append("no point is bandwidth-bound: gbps is a lower bound")
    elif not np.any(comp > mem):
        rate_f = float(np.max(f / mem))
        notes.append("no point is compute-bound: gflops is a lower bound")
    pred = c + np.maximum(f / rate_f, m / rate_m)
    if not all(np.isfinite([c, rate_f, rate_m])):
        raise FitError(name, "did not converge (non-finite parameters)")
    return RooflineFit(name, c, rate_f / 1e3, rate_m / 1e3, rel_rms(pred, t), len(t), tuple(notes))


# ---- tables ---------------------------------------------------------------------------------------------
def kernel_table(tokens: Sequence[int], times_us: Sequence[float]) -> dict[str, list]:
    """A KernelTable mapping {tokens, us} from measured medians: sorted, duplicates merged by their median."""
    tok = np.asarray(tokens, dtype=np.int64)
    t = np.asarray(times_us, dtype=float)
    if len(tok) == 0 or len(tok) != len(t):
        raise FitError("kernel_table", "needs equal-length, non-empty tokens and times")
    if np.any(tok < 1) or np.any(~np.isfinite(t)) or np.any(t <= 0):
        raise FitError("kernel_table", "tokens must be >= 1 and times finite and > 0")
    out_tok, out_us = [], []
    for n in np.unique(tok):
        out_tok.append(int(n))
        out_us.append(round(float(np.median(t[tok == n])), 3))
    return {"tokens": out_tok, "us": out_us}


# ---- copy tables ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CopyTableFit:
    """Measured copy medians made non-decreasing in size (isotonic regression on relative errors)."""

    name: str
    size_bytes: tuple[int, ...]
    us: tuple[float, ...]
    rel_rms: float  # how far the monotone table is from the medians (0 when they were monotone already)

    def as_table(self) -> dict[str, list]:
        return {"bytes": list(self.size_bytes), "us": list(self.us)}


def monotone_table(size_bytes: Sequence[float], times_us: Sequence[float], name: str = "copy") -> CopyTableFit:
    """A copy table from (size, median time) points: sorted by size, noise that makes a larger copy faster
    than a smaller one pooled away by isotonic regression (weights 1/t^2: relative errors count equally).
    Needs >= 2 distinct sizes; values are rounded to 0.001 us (rounding keeps the order)."""
    from scipy.optimize import isotonic_regression

    b, t = _as_points(name, times_us, size_bytes)
    if np.any(b < 1) or np.any(b != np.round(b)):
        raise FitError(name, "sizes must be whole numbers of bytes >= 1")
    order = np.argsort(b, kind="stable")
    b, t = b[order], t[order]
    if len(np.unique(b)) != len(b):
        raise FitError(name, "a size is measured twice")
    if len(b) < 2:
        raise FitError(name, "needs at least 2 sizes")
    y = isotonic_regression(t, weights=1.0 / t**2, increasing=True).x
    us = tuple(round(float(v), 3) for v in y)
    return CopyTableFit(name, tuple(int(v) for v in b), us, rel_rms(us, t))


# ---- eager expert calls (host launch gaps included) ----------------------------------------------------
GATED = ("swiglu", "geglu")


def call_kernels(activation: str) -> int:
    """Kernels the benchmarked expert function launches: linear, act, linear, mul, linear for a gated
    activation, linear, act, linear otherwise (measure._expert_fn; the H100 file's method is the same)."""
    return 5 if activation in GATED else 3


@dataclass(frozen=True)
class ExpertCallFit:
    """One eager expert call timed from before the Python call to after it, as the simulator's timeline
    plays n kernels of total GPU time D launched L apart on an idle GPU:

        t = max(L + D, n L + D / n),   D = max(flops / (gflops * 1e3), bytes / (gbps * 1e3))

    GPU-bound calls (D >= n L) show D; host-bound ones (small experts) show n L: the launch cost.
    """

    name: str
    launch_us: float
    gflops: float
    gbps: float
    rel_rms: float
    n_points: int
    n_gpu_bound: int
    notes: tuple[str, ...] = field(default=())

    def gpu_us(self, flops: float | np.ndarray, nbytes: float | np.ndarray) -> np.ndarray:
        f = np.asarray(flops, dtype=float) / (self.gflops * 1e3)
        m = np.asarray(nbytes, dtype=float) / (self.gbps * 1e3)
        return np.maximum(f, m)

    def predict(self, flops: float | np.ndarray, nbytes: float | np.ndarray,
                kernels: float | np.ndarray) -> np.ndarray:
        d, n, L = self.gpu_us(flops, nbytes), np.asarray(kernels, dtype=float), self.launch_us
        return np.maximum(L + d, n * L + d / n)

    def gpu_bound(self, flops: float | np.ndarray, nbytes: float | np.ndarray,
                  kernels: float | np.ndarray) -> np.ndarray:
        return self.gpu_us(flops, nbytes) >= np.asarray(kernels, dtype=float) * self.launch_us


def fit_expert_calls(flops: Sequence[float], nbytes: Sequence[float], kernels: Sequence[float],
                     times_us: Sequence[float], name: str = "expert_calls") -> ExpertCallFit:
    """Fit the launch cost L and the GPU's achieved compute and streaming rates to eager expert calls over
    token counts and shapes (relative residuals, multi-start least squares). Needs host-bound calls (small
    experts) for L and GPU-bound ones (a large expert) for the rates; a rate no GPU-bound call is limited by
    is reported as a bound in `notes`."""
    f, m, n, t = _as_points(name, times_us, flops, nbytes, kernels)
    if len(t) < 4:
        raise FitError(name, f"needs at least 4 measurements, got {len(t)}")
    if np.any(f <= 0) or np.any(m <= 0) or np.any(n < 1):
        raise FitError(name, "flops and bytes must be > 0 and kernels >= 1")
    if len(np.unique(f)) < 2:
        raise FitError(name, "needs at least 2 distinct token counts")
    tmin = float(t.min())
    lf0, lm0 = float(np.log(np.max(f / t))), float(np.log(np.max(m / t)))

    def predict(p: np.ndarray) -> np.ndarray:
        d = np.maximum(f * np.exp(-p[1]), m * np.exp(-p[2]))
        return np.maximum(p[0] + d, n * p[0] + d / n)

    def resid(p: np.ndarray) -> np.ndarray:
        return predict(p) / t - 1.0

    span = 12.0
    lo, hi = [0.0, lf0 - 2.0, lm0 - 2.0], [tmin, lf0 + span, lm0 + span]
    best = None
    for lfrac in (0.1, 0.3, 0.6):
        for df, dm in ((0.0, 0.0), (0.7, 0.7), (0.7, -0.3), (-0.3, 0.7), (2.0, 2.0)):
            x0 = np.clip([lfrac * tmin / max(1.0, float(n.min())), lf0 + df, lm0 + dm],
                         np.add(lo, 1e-9), np.subtract(hi, 1e-9))
            r = least_squares(resid, x0, bounds=(lo, hi), method="trf", x_scale="jac", max_nfev=3000)
            if best is None or r.cost < best.cost:
                best = r
    assert best is not None
    L, rate_f, rate_m = float(best.x[0]), float(np.exp(best.x[1])), float(np.exp(best.x[2]))
    if not all(np.isfinite([L, rate_f, rate_m])):
        raise FitError(name, "did not converge (non-finite parameters)")
    notes: list[str] = []
    comp, mem = f / rate_f, m / rate_m
    gpu_bound = np.maximum(comp, mem) >= n * L
    if not gpu_bound.any():
        notes.append("no call is GPU-bound: the GPU's rates are undetermined (only lower bounds)")
    elif not np.any(gpu_bound & (mem > comp)):
        rate_m = float(np.max(m[gpu_bound] / comp[gpu_bound]))
        notes.append("no GPU-bound call is bandwidth-bound: gbps is a lower bound")
    elif not np.any(gpu_bound & (comp > mem)):
        rate_f = float(np.max(f[gpu_bound] / mem[gpu_bound]))
        notes.append("no GPU-bound call is compute-bound: gflops is a lower bound")
    if gpu_bound.all():
        notes.append("no call is host-bound: launch_us is determined only through the GPU-bound calls")
    out = ExpertCallFit(name, L, rate_f / 1e3, rate_m / 1e3, 0.0, len(t), int(gpu_bound.sum()), tuple(notes))
    return ExpertCallFit(name, L, out.gflops, out.gbps, rel_rms(out.predict(f, m, n), t), len(t),
                         int(gpu_bound.sum()), tuple(notes))
