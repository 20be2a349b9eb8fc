"""API parameter -> command-line flag: library errors name the parameter (simmoe.errors), the CLI its flag."""

from __future__ import annotations

# API parameters whose command-line flag is not `--` + the name with dashes (errors name parameters; the
# command line shows its flags: simmoe.errors).
PARAM_FLAGS = {"opts": "--opt", "runtime_opts": "--runtime-opt", "prefetch_opts": "--prefetch-opt",
               "placement_opts": "--placement-opt", "precision_opts": "--precision-opt",
               "routing_opts": "--routing-opt"}


def flag_of(param: str) -> str:
    """The command-line flag of an API parameter: batch -> --batch, max_requests -> --max-requests."""
    return PARAM_FLAGS.get(param) or "--" + param.replace("_", "-")
