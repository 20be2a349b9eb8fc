"""Sweep specifications: a YAML file naming trace(s) and a grid and/or explicit list of configurations.

    trace: [traces/a.npz, traces/b.npz]   # one path or a list (an outer grid axis)
    base:                                  # values every configuration shares
      max_requests: 4
    grid:                                  # cartesian product of these lists
      hw: [rtx3090, rtx4090]
      policy_options.slots_per_layer: [4, 8, 16]
    cases:                                 # explicit configurations, each crossed with the grid
      - {policy: lru}
      - {policy: lfu, batch: 4}

A configuration is a flat mapping of parameters: `trace`, `hw`, `runtime` (a bundled runtime profile or a
YAML path; default: the named system's, else generic) with its fields changed as
`runtime_options.SECTION.FIELD`, `policy` (cache policy, named system or policy YAML; default lru),
`prefetch` / `placement` / `precision` / `routing`, their options as `KIND_options.NAME` (a whole
`KIND_options: {...}` mapping is accepted and flattened), and any ReplayConfig
field (batch, prefill_chunk, max_requests, ...; new fields work as soon as ReplayConfig has them). `base`
values are overridden by grid and case values; a case may not set a parameter the grid sweeps. Relative
paths (trace, hw and policy files) are relative to the spec file's folder.

Names, shapes and value types are checked when the spec is loaded (unknown keys, parameters, policies,
options, profiles, missing traces, a mapping or list where a single value belongs, `batch: "4"`: one error
naming the file and key; the models are in schema.py, which also gives the spec's JSON Schema). Bounds
and combinations are checked when a configuration runs (by the same strict ReplayConfig and policy options as `replay`), and
a bad one is recorded in the results rather than stopping the sweep: a grid may hold combinations that do
not go together (batch 8 with max_batched_tokens 4). A sweep in which no configuration succeeds exits 2.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from simmoe.errors import InputError
from simmoe.sweeps.schema import spec_model
from simmoe.validation import describe, first_error
from simmoe.yamlio import load_yaml

POLICY_KINDS = ("policy", "prefetch", "placement", "precision", "routing")
OPTION_GROUPS = tuple(f"{k}_options" for k in POLICY_KINDS)
RUNTIME_OPTIONS = "runtime_options"  # runtime_options.SECTION.FIELD
EXCLUDED_CONFIG_FIELDS = frozenset({"timeline_steps"})  # recording a timeline is not a sweep parameter


def config_fields() -> list[str]:
    """ReplayConfig fields a sweep may set (read at call time so that new fields are picked up)."""
    from simmoe.engine.config import ReplayConfig

    return [name for name in ReplayConfig.model_fields if name not in EXCLUDED_CONFIG_FIELDS]


def param_names() -> list[str]:
    """Scalar parameter names, in column order (options are `KIND_options.NAME` on top of these)."""
    return ["trace", "hw", "runtime", *POLICY_KINDS, *config_fields()]


def _hint(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


@dataclass(frozen=True)
class Config:
    """One configuration: `params` as written (columns and hash), `resolved` with paths made absolute."""

    params: dict[str, Any]
    resolved: dict[str, Any]
    key: str = field(compare=False)


def _check_key(key: str, source: str, where: str) -> None:
    group, dot, opt = key.partition(".")
    if key in param_names() or key in OPTION_GROUPS or (group in (*OPTION_GROUPS, RUNTIME_OPTIONS) and opt):
        return
    valid = param_names() + [f"{g}.NAME" for g in OPTION_GROUPS] + [f"{RUNTIME_OPTIONS}.SECTION.FIELD"]
    raise InputError(source, f"{where}.{key}", f"unknown parameter; {_hint(key, valid)}valid: {', '.join(valid)}")


def _flatten(raw: dict[str, Any], source: str, where: str) -> dict[str, Any]:
    """Checks parameter names and flattens KIND_options mappings into KIND_options.NAME keys."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        key = str(key)
        _check_key(key, source, where)
        if key in OPTION_GROUPS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise InputError(source, f"{where}.{key}", "must be a mapping of option: value")
            for k, v in value.items():
                out[f"{key}.{k}"] = v
        else:
            out[key] = value
    return out


def _is_path(value: str) -> bool:
    return value.endswith((".yaml", ".yml", ".npz")) or "/" in value


def _resolve_path(value: Any, folder: Path) -> Any:
    if isinstance(value, str) and _is_path(value) and not Path(value).is_absolute():
        return str(folder / value)
    return value


@cache
def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def config_key(params: dict[str, Any], resolved: dict[str, Any]) -> str:
    """Stable hash of a configuration: its parameters plus the contents of its trace and profile files
    (so that a regenerated trace or an edited profile is not mistaken for a done configuration)."""
    from simmoe.hw.profile import resolve_profile_path
    from simmoe.runtime.profile import resolve_runtime_path

    material = {
        "params": params,
        "trace_sha": _digest(str(resolved["trace"])),
        "hw_sha": _digest(str(resolve_profile_path(resolved["hw"]))),
    }
    if resolved.get("runtime") is not None:
        material["runtime_sha"] = _digest(str(resolve_runtime_path(resolved["runtime"])))
    text = json.dumps(material, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _check_names(params: dict[str, Any], resolved: dict[str, Any], source: str, where: str) -> None:
    """Fail fast on names: a trace that is missing, an unknown profile, policy or option."""
    from simmoe.hw.profile import resolve_profile_path
    from simmoe.policies.config import is_policy_file, load_policy_file
    from simmoe.policies.registry import get_policy

    for req in ("trace", "hw"):
        if params.get(req) is None:
            raise InputError(source, f"{where}.{req}" if where else req, "missing (set it in base, grid or cases)")
        if not isinstance(params[req], str):
            raise InputError(source, req, f"must be a {'file name' if req == 'trace' else 'profile name or path'}"
                                          f", got {_short(params[req])}")
    for k, v in params.items():  # replay settings and options are single values (an option may be a list)
        group = k.partition(".")[0]
        if not _is_scalar(v) and not (group in OPTION_GROUPS and isinstance(v, list) and _all_scalar(v)):
            raise InputError(source, k, f"must be a single value, got {_short(v)}")
    if not Path(resolved["trace"]).is_file():
        raise InputError(source, "trace", f"trace file not found: {params['trace']}")
    try:
        resolve_profile_path(resolved["hw"])
    except InputError as e:
        raise InputError(source, "hw", e.line()) from None
    _check_runtime(params, resolved, source)
    for kind in POLICY_KINDS:
        name = resolved.get(kind)
        if name is None:
            continue
        if not isinstance(name, str):
            raise InputError(source, kind, f"must be a policy name, got {name!r}")
        if kind == "policy" and is_policy_file(name):
            load_policy_file(name)
            continue
        cls = get_policy(name, "cache" if kind == "policy" else kind, source=f"{source}: {kind}")
        valid = sorted(cls.Options.model_fields)
        for k in params:
            group, _, opt = k.partition(".")
            if group == f"{kind}_options" and opt not in valid:
                raise InputError(source, k, f"unknown option of {name!r}; {_hint(opt, valid)}"
                                            f"valid: {', '.join(valid) or '(none)'}")
    for k in params:
        group = k.partition(".")[0]
        if group in OPTION_GROUPS and resolved.get(group.removesuffix("_options")) is None:
            raise InputError(source, k, f"options given but no {group.removesuffix('_options')} policy")


def _check_runtime(params: dict[str, Any], resolved: dict[str, Any], source: str) -> None:
    from simmoe.runtime.profile import SECTIONS, resolve_runtime_path

    rt = resolved.get("runtime")
    if rt is not None:
        if not isinstance(rt, str):
            raise InputError(source, "runtime", f"must be a runtime name or path, got {_short(rt)}")
        try:
            resolve_runtime_path(rt)
        except InputError as e:
            raise InputError(source, "runtime", e.line()) from None
    known = [f"{s}.{f}" for s, m in SECTIONS.items() for f in m.model_fields]
    for k in params:
        group, _, field = k.partition(".")
        if group == RUNTIME_OPTIONS and field not in known:
            raise InputError(source, k, f"unknown runtime field; {_hint(field, known)}keys are "
                                        "runtime_options.SECTION.FIELD")


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _all_scalar(v: list[Any]) -> bool:
    return all(_is_scalar(x) or (isinstance(x, list) and _all_scalar(x)) for x in v)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _order(params: dict[str, Any]) -> dict[str, Any]:
    names = param_names()
    rank = {n: i for i, n in enumerate(names)}
    return dict(sorted(params.items(), key=lambda kv: (rank.get(kv[0].partition(".")[0].removesuffix("_options"),
                                                                len(names)), kv[0])))


@dataclass
class SweepSpec:
    source: str
    configs: list[Config]

    def __len__(self) -> int:
        return len(self.configs)


def build_configs(rows: list[dict[str, Any]], folder: Path, source: str) -> list[Config]:
    """Configurations from flat parameter mappings (checked names, resolved paths, keys)."""
    out: list[Config] = []
    seen: set[str] = set()
    for params in rows:
        params = _order({"policy": "lru", **params})
        resolved = {k: (_resolve_path(v, folder) if k in ("trace", "hw", "runtime", "policy") else v)
                    for k, v in params.items()}
        _check_names(params, resolved, source, "")
        key = config_key(params, resolved)
        if key in seen:  # the same configuration listed twice runs once
            continue
        seen.add(key)
        out.append(Config(params, resolved, key))
    return out


def expand(data: object, source: str, folder: Path) -> SweepSpec:
    """Configurations from a parsed spec mapping."""
    if not isinstance(data, dict):
        raise InputError(source, None, "a sweep spec must be a YAML mapping (trace, base, grid, cases)")
    model = spec_model(bounds=False)  # names and value types now; bounds when each configuration runs
    try:
        model.model_validate(data)
    except ValidationError as e:
        err = first_error(e)
        loc = ".".join(str(x) for x in err["loc"]) or None
        if err["type"] == "extra_forbidden":
            valid = list(model.model_fields)
            raise InputError(source, loc, f"unknown key; {_hint(str(err['loc'][-1]), valid)}"
                                          f"valid keys: {', '.join(valid)}") from None
        if err["type"] == "too_short":
            raise InputError(source, loc, "empty list (a sweep over nothing)") from None
        raise InputError(source, loc, describe(err)) from None
    # the values as written (validation would turn an integer rate into a float, and change the keys)
    trace = data.get("trace")
    base = _flatten(data.get("base") or {}, source, "base")
    grid_raw = data.get("grid") or {}
    if trace is not None:
        if "trace" in grid_raw or "trace" in base:
            raise InputError(source, "trace", "given at the top level and in base/grid")
        grid_raw = {"trace": trace if isinstance(trace, list) else [trace], **grid_raw}
    axes: list[tuple[str, list[Any]]] = []
    for key, values in grid_raw.items():
        _check_key(str(key), source, "grid")
        if not values:
            raise InputError(source, f"grid.{key}", "empty list (a sweep over nothing)")
        if str(key) in OPTION_GROUPS:  # a list of whole option mappings
            for v in values:
                if not isinstance(v, dict):
                    raise InputError(source, f"grid.{key}", "each value must be a mapping of option: value")
        axes.append((str(key), values))
    cases = [_flatten(c, source, f"cases[{i}]") for i, c in enumerate(data.get("cases") or [])] or [{}]
    swept = {k for k, _ in axes}
    for i, case in enumerate(cases):
        for k in case:
            if k in swept or k.partition(".")[0] in swept:
                raise InputError(source, f"cases[{i}].{k}", "also a grid axis (a case may set only what the "
                                                            "grid does not sweep)")
    rows: list[dict[str, Any]] = []
    for case in cases:
        for combo in itertools.product(*(v for _, v in axes)):
            params = {**base, **case}
            for (key, _), value in zip(axes, combo):
                params.update(_flatten({key: value}, source, "grid"))
            rows.append(params)
    return SweepSpec(source, build_configs(rows, folder, source))


def load_spec(path: str | Path) -> SweepSpec:
    p = Path(path)
    return expand(load_yaml(p, "sweep spec"), str(p), p.parent)
