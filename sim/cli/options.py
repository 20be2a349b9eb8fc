"""Shared CLI helpers: key=value options, output-path checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from simmoe.errors import InputError


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
        try:
            val = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            val = raw
        if isinstance(val, (dict, list)):
            val = raw
        out[key] = val
    return out


def check_output(path: str | None, flag: str) -> None:
    """Fail before any work if an output cannot be written (nothing half-written afterwards)."""
    if path is None:
        return
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(flag, str(p), f"output folder {str(parent)!r} does not exist")
    if p.is_dir():
        raise InputError(flag, str(p), "is a folder")
