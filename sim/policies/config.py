"""Policy sets from the command line or a YAML file.

A policy file names one policy per kind, each with its options:

    cache: mrs            # or a named system (hybrimoe, cpu-experts, ...)
    cache_options: {slots_per_layer: 8, alpha: 0.5}
    prefetch: next-layer
    prefetch_options: {accuracy: 0.8}
    placement: fiddler
    precision: quantized
    precision_options: {bits: 4}
    routing: adaptive-k
    routing_options: {top_p: 0.9}

Unknown keys are errors; command-line flags given beside a file override the file's entries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simmoe.errors import InputError
from simmoe.policies.base import PolicySet
from simmoe.yamlio import load_yaml, scalar

KINDS = ("cache", "prefetch", "placement", "precision", "routing")
FILE_KEYS = KINDS + tuple(f"{k}_options" for k in KINDS)


def is_policy_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml"))


def load_policy_file(path: str | Path) -> dict[str, Any]:
    src = str(path)
    raw = load_yaml(path, "policy file")
    if not isinstance(raw, dict):
        raise InputError(src, None, "must be a mapping of kind: policy name (and KIND_options)")
    for key, value in raw.items():
        if key not in FILE_KEYS:
            raise InputError(src, str(key), f"unknown key; valid keys: {', '.join(FILE_KEYS)}")
        if key.endswith("_options"):
            if value is None:
                raw[key] = {}
            elif not isinstance(value, dict):
                raise InputError(src, key, "must be a mapping of option: value")
        elif not isinstance(value, str):
            raise InputError(src, key, "must be a policy name")
    if "cache" not in raw:
        raise InputError(src, "cache", "missing (a cache policy or a named system)")
    for kind in KINDS[1:]:
        if raw.get(f"{kind}_options") and not raw.get(kind):
            raise InputError(src, f"{kind}_options", f"given without a {kind} policy (they would have no effect)")
    return raw


def policy_set(cli: dict[str, Any]) -> PolicySet:
    """Build a PolicySet from {kind: name, kind_options: {...}}; a cache entry ending in .yaml is a file
    whose entries the other command-line entries override."""
    merged: dict[str, Any] = {}
    cache = cli.get("cache") or "lru"
    if is_policy_file(cache):
        merged.update(load_policy_file(cache))
        for kind in KINDS[1:]:
            if cli.get(kind):
                merged[kind] = cli[kind]
                merged[f"{kind}_options"] = cli.get(f"{kind}_options") or {}
            elif cli.get(f"{kind}_options") and merged.get(kind):  # options for the file's policy of this kind
                merged[f"{kind}_options"] = {**merged.get(f"{kind}_options", {}), **cli[f"{kind}_options"]}
        if cli.get("cache_options"):
            merged["cache_options"] = {**merged.get("cache_options", {}), **cli["cache_options"]}
    else:
        merged = {k: v for k, v in cli.items() if v}
        merged["cache"] = cache
    for kind in KINDS[1:]:  # options of a kind with no policy of that kind would have no effect
        if cli.get(f"{kind}_options") and not merged.get(kind):
            first = next(iter(cli[f"{kind}_options"]))
            raise InputError(f"--{kind}-opt", first, f"given without --{kind} (it would have no effect)")
    return PolicySet(**{k: v for k, v in merged.items() if v is not None})


def parse_kv(items: list[str] | None, flag: str) -> dict[str, Any]:
    """['slots_per_layer=4', 'scope=layer'] -> {'slots_per_layer': 4, 'scope': 'layer'} (YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(flag, item, "expected key=value")
        if key in out:
            raise InputError(flag, key, "given twice")
        val = scalar(raw)
        if isinstance(val, (dict, list)):
            val = raw
        out[key] = val
    return out
