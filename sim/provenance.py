"""Provenance: what produced an output, so that a number can be traced back to its inputs.

A run's provenance (`Result.provenance`, the `provenance` block of `replay --json`, the `# simmoe-provenance:`
line heading `--steps-csv` / `--requests-csv`, the timeline's `otherData`, the HTML report, the flat columns of
sweep rows):

- `simmoe_version`
- `trace`, `trace_sha256`: the trace file and the SHA-256 of its bytes (None for a trace made in memory);
- `hw`, `hw_sha256`: the hardware profile's name (as given) and the SHA-256 of its canonical content (the
  validated profile as sorted JSON: a comment or key order in the YAML does not change it, a figure does);
- `runtime`, `runtime_sha256`: the runtime profile as run (with `--runtime-opt` changes applied), likewise;
- `policy` (as the summary writes it) and `policies`: every kind's name and options;
- `settings`: every replay setting (ReplayConfig, defaults included);
- `command`: the shell-quoted command line, when run from the CLI.

CSV outputs carry it as one comment line above the header: read them with `pd.read_csv(path, comment="#")`
or `read_csv(path)` here, which returns the provenance too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel

from simmoe import __version__

CSV_PREFIX = "# simmoe-provenance: "

# (real path, size, mtime_ns, inode) -> SHA-256: a file is hashed once per process however many runs read it
# (a sweep's workers replay the same trace many times); a changed file gets a new key.
_FILE_HASHES: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: str | Path) -> str | None:
    """SHA-256 of a file's bytes, read in blocks (a 10^7-row trace is never held twice); None if it is not a
    readable regular file (a trace made in memory has source '<memory>')."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except (OSError, ValueError):
        return None
    if not os.path.isfile(real):
        return None
    key = (real, st.st_size, st.st_mtime_ns, st.st_ino)
    digest = _FILE_HASHES.get(key)
    if digest is None:
        try:
            with open(real, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError:
            return None
        _FILE_HASHES[key] = digest
    return digest


def content_sha256(model: BaseModel | Mapping[str, Any]) -> str:
    """SHA-256 of a validated profile's canonical JSON (sorted keys, no whitespace)."""
    data = model.model_dump(mode="json") if isinstance(model, BaseModel) else dict(model)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def policy_set_dict(pset: Any) -> dict[str, Any]:
    """A PolicySet's kinds with their options (kinds not set are left out)."""
    out: dict[str, Any] = {}
    if getattr(pset, "system", None):
        out["system"] = pset.system
    for kind in ("cache", "prefetch", "placement", "precision", "routing"):
        name = getattr(pset, kind)
        if name is None:
            continue
        out[kind] = name
        opts = dict(getattr(pset, f"{kind}_options"))
        if opts:
            out[f"{kind}_options"] = {k: _plain(v) for k, v in sorted(opts.items())}
    return out


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):  # numpy scalars
        return v.item()
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    return str(v)


def run_provenance(trace_source: str, hw: BaseModel, hw_name: str, runtime: BaseModel, runtime_name: str,
                   pset: Any, policy: str, settings: BaseModel) -> dict[str, Any]:
    """The provenance of one replay (see the module docstring); `command` is added by the CLI."""
    return {
        "simmoe_version": __version__,
        "trace": trace_source,
        "trace_sha256": file_sha256(trace_source),
        "hw": hw_name,
        "hw_sha256": content_sha256(hw),
        "runtime": runtime_name,
        "runtime_sha256": content_sha256(runtime),
        "policy": policy,
        "policies": policy_set_dict(pset),
        "settings": settings.model_dump(mode="json"),
    }


def command_line(argv: Sequence[str], prog: str = "simmoe") -> str:
    """The command as a shell would take it back."""
    return shlex.join([prog, *map(str, argv)])


# Flat columns a sweep row carries (the parameters already name trace, hw, runtime and policy)
FLAT_KEYS = ("simmoe_version", "trace_sha256", "hw_sha256", "runtime_sha256")


def flat_columns(prov: Mapping[str, Any]) -> dict[str, Any]:
    """Provenance as flat scalar columns for a results table: the hashes and version, and the policy set and
    replay settings as JSON text (`policies`, `settings`)."""
    out = {k: prov.get(k) for k in FLAT_KEYS}
    out["policies"] = json.dumps(prov.get("policies", {}), sort_keys=True)
    out["settings"] = json.dumps(prov.get("settings", {}), sort_keys=True)
    return out


def sweep_provenance(spec_path: str | Path, results: Any, command: str | None = None) -> dict[str, Any]:
    """A sweep's provenance: the spec file and its sha256, and the distinct versions, traces, hardware and
    runtime profiles (name: sha256) its successful rows ran with."""
    head = {"simmoe_version": __version__, "spec": str(spec_path), "spec_sha256": file_sha256(spec_path)}
    return table_provenance(head, results, command)


def plan_provenance(trace: str | Path, results: Any, command: str | None = None) -> dict[str, Any]:
    """A plan's provenance: its trace and sha256, and the distinct versions and profiles its runs used."""
    head = {"simmoe_version": __version__, "trace": str(trace), "trace_sha256": file_sha256(trace)}
    return table_provenance(head, results, command)


def table_provenance(head: dict[str, Any], results: Any, command: str | None = None) -> dict[str, Any]:
    """`head` plus the distinct traces, hardware and runtime profiles (name: sha256) and simmoe versions of
    a results table's rows (sweep rows carry them as columns), plus the command."""
    out = dict(head)
    cols = set(getattr(results, "columns", ()))
    for what, name_col, sha_col in (("traces", "trace", "trace_sha256"), ("hw", "hw", "hw_sha256"),
                                    ("runtimes", "runtime", "runtime_sha256")):
        if {name_col, sha_col} <= cols:
            pairs = results[[name_col, sha_col]].dropna().drop_duplicates()
            out[what] = {str(n): str(h) for n, h in pairs.itertuples(index=False)}
        elif sha_col in cols:
            out[what] = sorted({str(h) for h in results[sha_col].dropna()})
    if "simmoe_version" in cols:
        out["row_versions"] = sorted({str(v) for v in results["simmoe_version"].dropna()})
    if command:
        out["command"] = command
    return out


def write_csv_header(f: IO[str], prov: Mapping[str, Any]) -> None:
    """The provenance as one comment line (JSON) above a CSV's header."""
    f.write(CSV_PREFIX + json.dumps(dict(prov), sort_keys=False, default=str) + "\n")


def read_csv(path: str | Path):
    """(DataFrame, provenance dict or None) of a CSV written with `write_csv_header`."""
    import pandas as pd

    prov = None
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    if first.startswith(CSV_PREFIX):
        prov = json.loads(first[len(CSV_PREFIX):])
    return pd.read_csv(path, comment="#"), prov
