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
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, ValidationError, model_validator

from simmoe.errors import InputError, param_ref
from simmoe.policies.base import PolicySet
from simmoe.validation import STRICT, describe, error_loc, first_error
from simmoe.yamlio import load_yaml, scalar

KINDS = ("cache", "prefetch", "placement", "precision", "routing")
FILE_KEYS = KINDS + tuple(f"{k}_options" for k in KINDS)

# A KIND_options mapping as written: `cache_options:` left empty (YAML null) means no options.
OptionMap = Annotated[dict[str, Any], BeforeValidator(lambda v: {} if v is None else v)]


class PolicyFile(BaseModel):
    """The schema of a policy file (STRICT: unknown keys and wrong types are errors). Option values are
    checked later, by each policy's own Options model, once the names are resolved."""

    model_config = STRICT

    cache: str = Field(description="cache policy or named system")
    cache_options: OptionMap = {}
    prefetch: str | None = None
    prefetch_options: OptionMap = {}
    placement: str | None = None
    placement_options: OptionMap = {}
    precision: str | None = None
    precision_options: OptionMap = {}
    routing: str | None = None
    routing_options: OptionMap = {}

    @model_validator(mode="after")
    def _options_need_their_policy(self) -> PolicyFile:
        for kind in KINDS[1:]:
            if getattr(self, f"{kind}_options") and getattr(self, kind) is None:
                raise ValueError(f"{kind}_options: given without a {kind} policy (they would have no effect)")
        return self


def _file_error(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return f"unknown key; valid keys: {', '.join(FILE_KEYS)}"
    if err["type"] == "missing":
        return "missing (a cache policy or a named system)"
    if err["type"] == "string_type" and len(err["loc"]) == 1:  # a kind's policy name (not an option key)
        return f"must be a policy name{describe(err).removeprefix('must be a string')}"
    if err["type"] == "dict_type":
        return "must be a mapping of option: value"
    if err["type"] == "model_type":
        return "must be a mapping of kind: policy name (and KIND_options)"
    return describe(err)


def is_policy_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml"))


def load_policy_file(path: str | Path) -> dict[str, Any]:
    """The file's entries (those it gives, options as mappings), validated by PolicyFile."""
    src = str(path)
    raw = load_yaml(path, "policy file")
    try:
        PolicyFile.model_validate(raw)
    except ValidationError as e:
        err = first_error(e)
        loc = error_loc(err)
        msg = _file_error(err)
        if err["type"] == "value_error":  # the model validator names the key in its message
            loc, _, msg = msg.partition(": ")
        raise InputError(src, loc or None, msg) from None
    return {k: ({} if v is None else v) if k.endswith("_options") else v for k, v in raw.items()}


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
            raise InputError(None, first, f"given without {param_ref(kind)} (it would have no effect)",
                             param=f"{kind}_opts")
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
