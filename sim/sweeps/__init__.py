"""Parameter sweeps over traces, hardware profiles, policies and replay settings (see spec.py)."""

from simmoe.sweeps.runner import SweepReport, run_one, run_sweep
from simmoe.sweeps.spec import Config, SweepSpec, build_configs, expand, load_spec
from simmoe.sweeps.store import load_results

__all__ = ["Config", "SweepReport", "SweepSpec", "build_configs", "expand", "load_results", "load_spec",
           "run_one", "run_sweep"]
