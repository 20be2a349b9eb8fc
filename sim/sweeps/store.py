"""Sweep results: one flat record per configuration, appended to a JSONL journal as each one finishes,
merged into the output table (parquet or CSV) at the end.

The journal `OUT.partial.jsonl` is what makes a sweep resumable: an interrupted sweep leaves it behind, and
the next run skips the configurations it (or the output table) already holds. Records are keyed by the
configuration's stable hash (`key`); a later record for the same key replaces an earlier one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import pandas as pd

from simmoe.errors import InputError
from simmoe.fileio import atomic_path, check_output

STATUS_COLUMNS = ("key", "status", "error", "run_s")
# A configuration whose record has one of these statuses is not run again; "crash" (an unexpected
# exception, likely a simulator bug) is retried on resume.
DONE = frozenset({"ok", "error"})
FORMATS = (".parquet", ".csv")


def flatten(summary: dict[str, Any], reserved: Iterable[str] = ()) -> dict[str, Any]:
    """{'tpot_ms': {'p90': 1.0}} -> {'tpot_ms.p90': 1.0} (pandas.json_normalize); lists become JSON text, NaN
    and infinity None; top-level keys in `reserved` (parameter names) become 'summary.KEY' so that a metric
    never overwrites a parameter column."""
    reserved = set(reserved)
    named = {f"summary.{k}" if k in reserved else str(k): v for k, v in summary.items()}
    if not named:
        return {}
    df = pd.json_normalize(named, sep=".")
    flat = dict(zip(df.columns, df.to_numpy(dtype=object)[0], strict=True))  # 10x faster than to_dict
    row: dict[str, Any] = {}
    for name, v in named.items():  # json_normalize puts nested keys after the plain ones: keep summary order
        if isinstance(v, dict):
            row.update((c, x) for c, x in flat.items() if c.startswith(name + "."))
        else:
            row[name] = flat[name]
    return {k: json.dumps(v, default=_jsonable) if isinstance(v, (list, tuple)) else _jsonable(v)
            for k, v in row.items()}


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):  # numpy scalars
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.jsonl")


def check_out(out: str | Path) -> Path:
    p = Path(out)
    if p.suffix not in FORMATS:
        raise InputError(None, None, f"must end in {' or '.join(FORMATS)}, got {str(p)!r}", param="out")
    check_output(str(p), "--out")  # folder exists and takes files, not a folder itself
    return p


def _read_table(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as e:  # a corrupt or foreign file: say so rather than overwrite it silently
        raise InputError(path, None, f"cannot read existing results ({e.__class__.__name__}: {e})") from None
    if "key" not in df.columns:
        raise InputError(path, None, "existing file is not a sweep result table (no 'key' column)")
    df = df.astype(object).where(df.notna(), None)
    return [{k: v for k, v in row.items() if v is not None} for row in df.to_dict("records")]


def _read_journal(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    # errors="replace": a kill may cut a line inside a multi-byte character; that line is dropped anyway
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError):  # a line cut short when the sweep was killed mid-write
            continue
        if isinstance(rec, dict) and "key" in rec:
            rows.append(rec)
    return rows


def _torn(path: Path) -> bool:
    """Whether the file's last line lacks its newline (the sweep was killed while writing it)."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return False
        f.seek(-1, 2)
        return f.read(1) != b"\n"


def read_records(out: str | Path) -> dict[str, dict[str, Any]]:
    """All records of a sweep output (table + journal), by key, later ones winning."""
    out = Path(out)
    recs: dict[str, dict[str, Any]] = {}
    for rec in [*_read_table(out), *_read_journal(partial_path(out))]:
        recs[rec["key"]] = rec
    return recs


class ResultStore:
    """Appends records to the journal as they arrive; `finish()` writes the table and drops the journal."""

    def __init__(self, out: str | Path) -> None:
        self.out = check_out(out)
        self.journal = partial_path(self.out)
        self.records = read_records(self.out)
        self._f: IO[str] | None = None

    def done_keys(self) -> set[str]:
        return {k for k, r in self.records.items() if r.get("status") in DONE}

    def _journal(self) -> IO[str]:
        if self._f is None:
            self._f = open(self.journal, "a", encoding="utf-8")
            if _torn(self.journal):  # a line cut short by a kill: the next record starts on a new line
                self._f.write("\n")
        return self._f

    def add(self, rec: dict[str, Any]) -> None:
        f = self._journal()
        f.write(json.dumps(rec, default=_jsonable) + "\n")
        f.flush()  # one line per finished configuration: a kill loses at most the running ones
        self.records[rec["key"]] = rec

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def finish(self, order: list[str], param_cols: list[str]) -> pd.DataFrame:
        """Writes the table: the configurations in `order` first (spec order), then older records."""
        self.close()
        df = to_frame(self.records, order, param_cols)
        write_table(df, self.out)
        self.journal.unlink(missing_ok=True)
        return df


def to_frame(records: dict[str, dict[str, Any]], order: list[str] | None = None,
             param_cols: list[str] | None = None) -> pd.DataFrame:
    order = order or []
    keys = [k for k in order if k in records] + [k for k in records if k not in set(order)]
    rows = [records[k] for k in keys]
    df = pd.DataFrame.from_records(rows) if rows else pd.DataFrame(columns=list(STATUS_COLUMNS))
    params = [c for c in (param_cols or []) if c in df.columns]
    rest = [c for c in df.columns if c not in params and c not in STATUS_COLUMNS]
    lead = params + [c for c in rest if _is_param_col(c) and c not in params]
    metrics = [c for c in rest if c not in lead]
    return df[lead + [c for c in STATUS_COLUMNS if c in df.columns] + metrics].reset_index(drop=True)


def _is_param_col(col: str) -> bool:
    from simmoe.sweeps.spec import OPTION_GROUPS, RUNTIME_OPTIONS, param_names

    return col in param_names() or col.partition(".")[0] in (*OPTION_GROUPS, RUNTIME_OPTIONS)


def _arrow_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Parquet needs one type per column: a column mixing numbers and strings (e.g. an option that is
    sometimes 16 and sometimes 'auto') is stored as strings."""
    df = df.copy()
    for col in df.columns:
        if df[col].dtype == object:
            kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1 and not kinds <= {int, float}:
                df[col] = df[col].map(lambda v: None if v is None else str(v))
    return df


def write_table(df: pd.DataFrame, out: Path) -> None:
    with atomic_path(out) as tmp:
        if out.suffix == ".parquet":
            _arrow_safe(df).to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)


def load_results(path: str | Path) -> pd.DataFrame:
    """A sweep's results as a DataFrame: one row per configuration, one column per parameter (`hw`,
    `policy`, `policy_options.slots_per_layer`, `batch`, ...), `key`, `status` (ok / error / crash),
    `error`, `run_s`, and one column per flattened summary metric (`tokens_per_s`, `tpot_ms.p90`, ...).
    Reads the journal of an unfinished sweep too."""
    p = Path(path)
    if not p.exists() and not partial_path(p).exists():
        raise InputError(p, None, "no sweep results here")
    return to_frame(read_records(p))
