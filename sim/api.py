"""The notebook API: `import simmoe; simmoe.replay(...)`, `simmoe.sweep(...)`, the loaders.

Every argument takes what a user has at hand: a path or bundled name, or the loaded object (a Trace, an
HwProfile, a RuntimeProfile, a ModelSpec, a PolicySet). Bad values raise `simmoe.InputError` naming the
parameter (`batch: must be >= 1, got 0`, `opts.slots_per_layer: cache of ... does not fit`). These functions are
exported lazily from `simmoe` (sim/__init__.py), so `import simmoe` stays cheap.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simmoe.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from simmoe.engine.results import Result
    from simmoe.hw.profile import HwProfile
    from simmoe.models.spec import ModelSpec
    from simmoe.policies.base import PolicySet
    from simmoe.runtime.profile import RuntimeProfile
    from simmoe.trace.format import Trace

KINDS = ("prefetch", "placement", "precision", "routing")


def load_trace(path: str | Path) -> Trace:
    """A simmoe-trace/1 .npz file (validated)."""
    from simmoe.trace.format import read_trace

    return read_trace(path)


def load_hw(name_or_path: str | Path) -> HwProfile:
    """A bundled hardware profile (`rtx3090`) or a profile YAML."""
    from simmoe.hw.profile import load_profile

    return load_profile(name_or_path)


def load_runtime(name_or_path: str | Path | None = None, opts: Mapping[str, Any] | None = None) -> RuntimeProfile:
    """A bundled runtime profile (default `generic`) or a runtime YAML, with `SECTION.FIELD: value` changes."""
    from simmoe.runtime.profile import load_runtime as load

    return load(name_or_path, dict(opts) if opts else None)


def load_model(ref: str | Path | ModelSpec) -> ModelSpec:
    """A catalog name, a Hugging Face config.json (or its folder) or a spec .yaml (simmoe.models.load)."""
    from simmoe.models.load import load_model as load

    return load(ref)


def _opts(value: Any, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InputError(None, None, f"must be a mapping of option: value, got {type(value).__name__}", param=param)
    return dict(value)


def policy_set(policy: str | Path | PolicySet = "lru", opts: Mapping[str, Any] | None = None,
               **kinds: Any) -> PolicySet:
    """A PolicySet from `replay`'s policy arguments: `policy` (a cache policy, a named system or a policy
    .yaml) with `opts`, and `prefetch=`, `prefetch_opts=`, ... (placement, precision, routing)."""
    from simmoe.policies.base import PolicySet
    from simmoe.policies.config import policy_set as build

    unknown = sorted(set(kinds) - {*KINDS, *(f"{k}_opts" for k in KINDS)})
    if unknown:
        raise InputError(None, None, "unknown policy argument", param=unknown[0])
    if isinstance(policy, PolicySet):
        given = [k for k, v in {"opts": opts, **kinds}.items() if v]
        if given:
            raise InputError(None, None, "a PolicySet holds every kind and its options: give them in it, not "
                                         "beside it", param=given[0])
        return policy
    if not isinstance(policy, (str, Path)):
        raise InputError(None, None, f"must be a policy name, a policy .yaml or a PolicySet, got "
                                     f"{type(policy).__name__}", param="policy")
    cli: dict[str, Any] = {"cache": str(policy), "cache_options": _opts(opts, "opts")}
    for kind in KINDS:
        name = kinds.get(kind)
        if name is not None and not isinstance(name, str):
            raise InputError(None, None, f"must be a policy name, got {type(name).__name__}", param=kind)
        cli[kind] = name
        cli[f"{kind}_options"] = _opts(kinds.get(f"{kind}_opts"), f"{kind}_opts")
    return build(cli)


def with_model(trace: Trace, model: str | Path | ModelSpec) -> Trace:
    """The trace replayed as another model of the same routing shape (a config.json, a spec .yaml with other
    precisions or attention, ...): its meta names that model, and the trace is checked against it."""
    from simmoe.models import CATALOG
    from simmoe.trace.format import validate

    spec = load_model(model)
    meta = {k: v for k, v in trace.meta.items() if k not in ("model", "model_spec")}
    meta["model"] = spec.name
    if CATALOG.get(spec.name) != spec:
        meta["model_spec"] = spec.to_dict()
    out = dataclasses.replace(trace, meta=meta)
    validate(out)
    return out


def replay(trace: str | Path | Trace, hw: str | Path | HwProfile, policy: str | Path | PolicySet = "lru",
           opts: Mapping[str, Any] | None = None, *, runtime: str | Path | RuntimeProfile | None = None,
           runtime_opts: Mapping[str, Any] | None = None, model: str | Path | ModelSpec | None = None,
           progress: bool = False, **kwargs: Any) -> Result:
    """Replay `trace` on `hw` and return the Result (`.summary`, `.steps`, `.layers`, `.to_frame()`,
    `.write_timeline()`; shown as a table in Jupyter).

    policy, opts: a cache policy (`lru`), a named system (`mixtral-offloading`) or a policy .yaml, and its
    options (`{"slots_per_layer": 4}`); or a PolicySet. `prefetch=`, `placement=`, `precision=`, `routing=`
    and their `*_opts=` compose the other kinds. runtime: a bundled runtime name, a YAML path or a
    RuntimeProfile (default: a named system's own, else `generic`); runtime_opts: `{"experts.order": "index"}`.
    model: replay the trace as this model (a catalog name, config.json, spec .yaml or ModelSpec) instead of
    the one it names. Every other keyword is a replay setting (simmoe.engine.config.ReplayConfig: batch,
    max_requests, arrivals, rate, timeline_steps, ...).
    """
    from simmoe.engine.config import ReplayConfig
    from simmoe.engine.replay import Replay
    from simmoe.engine.setup import resolve
    from simmoe.hw.profile import HwProfile, load_profile
    from simmoe.runtime.profile import RuntimeProfile, apply_overrides, runtime_from_dict
    from simmoe.trace.format import Trace

    kinds = {k: kwargs.pop(k) for k in [*KINDS, *(f"{k}_opts" for k in KINDS)] if k in kwargs}
    pset = policy_set(policy, opts, **kinds)
    cfg = ReplayConfig(**kwargs)
    if isinstance(runtime, RuntimeProfile):
        rt = runtime_from_dict(apply_overrides(runtime.model_dump(), dict(runtime_opts), None, param="runtime_opts"),
                               f"{runtime.name} with runtime_opts") if runtime_opts else runtime
    elif runtime is not None or runtime_opts:
        rt = load_runtime(runtime or resolve(pset).runtime, _opts(runtime_opts, "runtime_opts"))
    else:
        rt = None  # the named system's runtime, else generic
    if isinstance(hw, HwProfile):
        profile, hw_name = hw, None
    elif isinstance(hw, (str, Path)):
        profile, hw_name = load_profile(hw), str(hw)
    else:
        raise InputError(None, None, f"must be a profile name, a YAML path or an HwProfile, got {type(hw).__name__}",
                         param="hw")
    if isinstance(trace, Trace):
        tr = trace
    elif isinstance(trace, (str, Path)):
        tr = load_trace(trace)
    else:
        raise InputError(None, None, f"must be a .npz path or a Trace, got {type(trace).__name__}", param="trace")
    if model is not None:
        tr = with_model(tr, model)
    return Replay(tr, profile, pset, cfg, hw_name=hw_name, runtime=rt).run(progress=progress)


def sweep(spec: str | Path | Mapping[str, Any] | Sequence[Mapping[str, Any]] | pd.DataFrame,
          out: str | Path | None = None, *, workers: int | None = 1, progress: bool = False,
          folder: str | Path | None = None) -> pd.DataFrame:
    """Run a sweep; returns its table (one row per configuration: parameters, status, error, metrics).

    spec: a sweep spec .yaml, the same mapping as a dict (`{"trace": ..., "grid": {...}}`), or the
    configurations themselves as rows (a list of dicts or a DataFrame) with the spec's parameter names
    (`trace`, `hw`, `policy`, `policy_options.slots_per_layer`, `batch`, ...). Relative paths are relative to
    the spec file's folder, else `folder` (default: the working folder). out: the results file (.parquet or
    .csv): a sweep resumes where one with the same `out` stopped; None keeps the results in memory only.
    workers: processes (None: one per core). A configuration that fails is a row with its error; a sweep in
    which every configuration failed raises InputError quoting the first."""
    import pandas as pd

    from simmoe.sweeps.runner import run_sweep
    from simmoe.sweeps.spec import build_configs, expand, load_spec

    base = Path(folder) if folder is not None else Path.cwd()
    if isinstance(spec, (str, Path)):
        configs = load_spec(spec).configs
        source = str(spec)
    elif isinstance(spec, Mapping):
        source = "spec"
        configs = expand(dict(spec), source, base).configs
    elif isinstance(spec, (pd.DataFrame, Sequence)):
        rows = spec.to_dict("records") if isinstance(spec, pd.DataFrame) else list(spec)
        if not rows or not all(isinstance(r, Mapping) for r in rows):
            raise InputError(None, None, "give a spec path, a spec mapping, or a non-empty list of configuration "
                                         "mappings", param="spec")
        source = "spec"
        configs = build_configs([dict(r) for r in rows], base, source)
    else:
        raise InputError(None, None, f"must be a spec path, a mapping or rows, got {type(spec).__name__}",
                         param="spec")
    with tempfile.TemporaryDirectory(prefix="simmoe-sweep-") as tmp:
        report = run_sweep(configs, Path(tmp) / "results.parquet" if out is None else out, workers=workers,
                           progress=progress)
    keys = {c.key for c in configs}  # `out` may also hold rows of an earlier, larger sweep: not returned
    mine = report.results[report.results["key"].isin(keys)].reset_index(drop=True)
    if len(mine) and not (mine["status"] == "ok").any():
        raise InputError(source, None, f"every configuration failed ({len(mine)}); the first: "
                                       f"{mine['error'].iloc[0]}")
    return mine
