"""Calibration: measure this machine with PyTorch, fit the profile's models with SciPy, write a profile.

    from simmoe.calibrate import calibrate
    profile, measurements = calibrate(["mixtral-8x7b"], device="cuda", quick=True)

Modules: `measure` (the torch timing harness; the only module that imports torch, and only inside its
functions), `fit` (SciPy fits, no torch), `machine` (machine facts), `profile_writer` (assemble the
`HwProfile`, write YAML + CSV atomically). This package's `__init__` stays light: `simmoe replay` and the
simulator import `shape_key` from here without pulling in torch or SciPy.

Validation: `executor` (a real offloaded MoE executor driven by the simulator's own policy objects) and
`validate` (executor vs simulator on the same trace and configurations, and the report; `simmoe validate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from simmoe.hw.profile import HwProfile
    from simmoe.models.spec import ModelSpec

# Precisions torch computes with natively. Experts stored in a narrower format (int4, mxfp4, fp8 ...) are
# timed at bf16: a dequantising kernel is at least as slow as the bf16 GEMM of the same shape.
TORCH_DTYPES = ("bf16", "fp16", "fp32")


def shape_key(d_model: int, d_ff: int, activation: str, dtype: str) -> str:
    """Kernel-table key of an expert shape: 'd_model x d_ff x activation : dtype' (e.g. '4096x14336xswiglu:bf16')."""
    return f"{int(d_model)}x{int(d_ff)}x{activation}:{dtype}"


def compute_dtype(spec: ModelSpec) -> str:
    """The precision calibration times a model's experts at (its expert dtype when torch has it, else bf16)."""
    return spec.expert_dtype if spec.expert_dtype in TORCH_DTYPES else "bf16"


def model_shape_key(spec: ModelSpec, dtype: str | None = None) -> str:
    """Kernel-table key of a model's routed expert at `dtype` (default: the dtype calibration measures at)."""
    return shape_key(spec.d_model, spec.expert_d_ff, spec.activation, dtype or compute_dtype(spec))


def calibrate(
    models: Sequence[str],
    *,
    device: str = "cuda",
    quick: bool = False,
    base: HwProfile | None = None,
    name: str = "calibrated",
    threads: int | None = None,
    progress: bool = True,
) -> tuple[HwProfile, pd.DataFrame]:
    """Measure this machine and return (calibrated profile, raw measurements). Needs torch.

    device "cuda" measures the GPU, PCIe, host launch costs and the CPU; "cpu" measures the CPU only and
    takes the GPU, PCIe and host sections from `base` (required then). Nothing is written; see
    `profile_writer.write_profile`.
    """
    from simmoe.calibrate.profile_writer import run_calibration

    res = run_calibration(models, device=device, quick=quick, base=base, name=name, threads=threads,
                          progress=progress)
    return res.profile, res.measurements


__all__ = ["TORCH_DTYPES", "calibrate", "compute_dtype", "model_shape_key", "shape_key"]
