"""Calibration: measure this machine with PyTorch, fit the profile's models with SciPy, write a profile.

    from simmoe.calibrate import calibrate
    profile, measurements = calibrate(["mixtral-8x7b"], device="cuda", quick=True)

Modules: `measure` (the torch timing harness; the only module that imports torch, and only inside its
functions), `measurements` (the measurements file: what `simmoe calibrate` writes and `--from` reads),
`fit` (SciPy fits, no torch), `assemble` (a profile from measurements, with the origin of every figure),
`machine` (machine facts), `profile_writer` (measure + fit, write YAML + JSON atomically). This package's
`__init__` stays light: `simmoe replay` and the simulator import `shape_key` from here without pulling in
torch or SciPy.

Validation: `executor` (a real offloaded MoE executor driven by the simulator's own policy objects) and
`validate` (executor vs simulator on the same trace and configurations, and the report; `simmoe validate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from simmoe.hw.kernel_keys import TORCH_DTYPES, compute_dtype, model_shape_key, shape_key

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from simmoe.hw.profile import HwProfile

def calibrate(
    models: Sequence[str],
    *,
    device: str = "cuda",
    quick: bool = False,
    base: HwProfile | None = None,
    name: str = "calibrated",
    threads: int | Sequence[int] | None = None,
    progress: bool = True,
    as_device: bool = False,
) -> tuple[HwProfile, pd.DataFrame]:
    """Measure this machine and return (calibrated profile, raw measurements). Needs torch.

    device "cuda" measures the GPU, PCIe, host launch costs and the CPU; "cpu" measures the CPU (experts per
    thread count, memcpy, dispatch) and takes the GPU, PCIe and host sections from `base` (required then),
    unless `as_device` describes the CPU itself as the compute device. Nothing is written; see
    `profile_writer.write_profile`.
    """
    from simmoe.calibrate.profile_writer import run_calibration

    res = run_calibration(models, device=device, quick=quick, base=base, name=name, threads=threads,
                          progress=progress, as_device=as_device)
    return res.profile, res.measurements


__all__ = ["TORCH_DTYPES", "calibrate", "compute_dtype", "model_shape_key", "shape_key"]
