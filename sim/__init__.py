"""simmoe: discrete-event simulator of Mixture-of-Experts serving on constrained hardware.

The notebook API (`simmoe.replay`, `simmoe.sweep`, `simmoe.load_trace`, ...: sim/api.py) is exported
lazily (PEP 562): `import simmoe` loads none of numpy, pandas, SimPy or matplotlib, so the command line
starts fast; the first use of a name imports its module.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
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
    "compare": ("simmoe.compare", "compare"),  # sim/compare.py, where this version has it
    "InputError": ("simmoe.errors", "InputError"),
    "Result": ("simmoe.engine.results", "Result"),
    "Trace": ("simmoe.trace.format", "Trace"),
    "HwProfile": ("simmoe.hw.profile", "HwProfile"),
    "RuntimeProfile": ("simmoe.runtime.profile", "RuntimeProfile"),
    "ModelSpec": ("simmoe.models.spec", "ModelSpec"),
    "PolicySet": ("simmoe.policies.base", "PolicySet"),
}


def _available(name: str) -> bool:
    """Whether an export's module is part of this version (`compare` arrives with sim/compare.py). Looked up
    as a file: importlib's find_spec would import the parent packages, and their dependencies."""
    rel = Path(*_EXPORTS[name][0].split(".")[1:])
    here = Path(__file__).parent
    return (here / rel).with_suffix(".py").is_file() or (here / rel / "__init__.py").is_file()


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None or not _available(name):
        raise AttributeError(f"module 'simmoe' has no attribute {name!r}")
    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value  # later look-ups skip __getattr__
    return value


class _Package(types.ModuleType):
    """`simmoe.compare` is a function of the module simmoe.compare: importing that module binds it on the
    package under the same name, which would replace the function. The function stays the export (the
    module is `sys.modules["simmoe.compare"]`; `from simmoe.compare import ...` works as usual)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name, ("",))[0] == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted({*globals(), *(n for n in _EXPORTS if _available(n))})


__all__ = ["__version__", *(n for n in _EXPORTS if _available(n))]
