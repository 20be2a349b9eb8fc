"""simmoe: discrete-event simulator of Mixture-of-Experts serving on constrained hardware.

The notebook API (`simmoe.replay`, `simmoe.sweep`, `simmoe.load_trace`, ...: sim/api.py) is exported
lazily (PEP 562): `import simmoe` loads none of numpy, pandas, SimPy or matplotlib, so the command line
starts fast; the first use of a name imports its module.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> (module, attribute) of the public API
_EXPORTS: dict[str, tuple[str, str]] = {
    "replay": ("simmoe.api", "replay"),
    "sweep": ("simmoe.api", "sweep"),
    "load_trace": ("simmoe.api", "load_trace"),
    "load_hw": ("simmoe.api", "load_hw"),
    "load_runtime": ("simmoe.api", "load_runtime"),
    "load_model": ("simmoe.api", "load_model"),
    "policy_set": ("simmoe.api", "policy_set"),
    "load_results": ("simmoe.sweeps.store", "load_results"),
    "synth_trace": ("simmoe.trace.synth", "synth_trace"),
    "plan": ("simmoe.planning", "plan"),
    "compare": ("simmoe.comparison", "compare"),
    "InputError": ("simmoe.errors", "InputError"),
    "Result": ("simmoe.engine.results", "Result"),
    "Trace": ("simmoe.trace.format", "Trace"),
    "HwProfile": ("simmoe.hw.profile", "HwProfile"),
    "RuntimeProfile": ("simmoe.runtime.profile", "RuntimeProfile"),
    "ModelSpec": ("simmoe.models.spec", "ModelSpec"),
    "PolicySet": ("simmoe.policies.base", "PolicySet"),
}


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'simmoe' has no attribute {name!r}")
    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = ["__version__", *_EXPORTS]
