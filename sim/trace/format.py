"""The `simmoe-trace/1` routing-trace format: in-memory `Trace`, reading, writing, validation.

A trace is an .npz archive (no pickles) of per-request token rows in generation order:

    experts    int16   [N, L, K]  expert id per row, MoE layer, slot; -1 = no expert
    request    int32   [N]        request id; a request's rows are contiguous
    phase      int8    [N]        0 prefill, 1 decode (decode never followed by prefill in a request)
    meta       0-d str            JSON object: format, model (catalog name) or model_spec, source, ...
    gates      float32 [N, L, K]  optional; NaN exactly where experts == -1, otherwise >= 0
    arrival_s  float64 [R]        optional; arrival time of request id r, R = max request id + 1
    predicted  int16   [N, L, P]  optional; row l = experts layer l+1's router picks from layer l's
                                  hidden state (speculative prediction), -1 padded

Everything is checked with whole-array numpy operations, so 10^7-row traces load without Python loops.
Every problem is an `InputError(file, field, message)`.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from simmoe.errors import InputError
from simmoe.fileio import atomic_path
from simmoe.models import ModelSpec, get_model

FORMAT = "simmoe-trace/1"

REQUIRED = ("experts", "request", "phase", "meta")
OPTIONAL = ("gates", "arrival_s", "predicted")
ARRAYS = REQUIRED + OPTIONAL
DTYPES: dict[str, np.dtype] = {
    "experts": np.dtype(np.int16),
    "request": np.dtype(np.int32),
    "phase": np.dtype(np.int8),
    "gates": np.dtype(np.float32),
    "arrival_s": np.dtype(np.float64),
    "predicted": np.dtype(np.int16),
}
NDIM = {"experts": 3, "request": 1, "phase": 1, "gates": 3, "arrival_s": 1, "predicted": 3}
PREFILL, DECODE = 0, 1

# Rows per chunk for checks that build [rows, L, K, K] temporaries.
_CHUNK_ELEMS = 1 << 24


@dataclass(eq=False)
class Trace:
    """A routing trace in memory. Build one directly (then call `validate`) or with `read_trace`.

    Derived attributes are computed once and cached; do not mutate the arrays afterwards.
    """

    experts: np.ndarray
    request: np.ndarray
    phase: np.ndarray
    meta: dict
    gates: np.ndarray | None = None
    arrival_s: np.ndarray | None = None
    predicted: np.ndarray | None = None
    source: str = "<memory>"

    # ---- shapes ---------------------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        return int(self.experts.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.experts.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.experts.shape[2])

    @property
    def num_experts(self) -> int:
        return self.spec.num_experts

    @property
    def num_requests(self) -> int:
        return int(self.request_ids.size)

    # ---- requests -------------------------------------------------------------------------------------
    @cached_property
    def _runs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, starts, stops) of the runs of equal request ids, in row order."""
        req = self.request
        if req.size == 0:
            e = np.zeros(0, np.int64)
            return e.astype(np.int32), e, e
        starts = np.concatenate(([0], np.flatnonzero(req[1:] != req[:-1]) + 1)).astype(np.int64)
        stops = np.concatenate((starts[1:], [req.size])).astype(np.int64)
        return req[starts], starts, stops

    @cached_property
    def _id_order(self) -> np.ndarray:
        ids = self._runs[0]
        return np.argsort(ids, kind="stable")

    @cached_property
    def request_ids(self) -> np.ndarray:
        """Distinct request ids, ascending (the order the simulator replays them in)."""
        return np.ascontiguousarray(self._runs[0][self._id_order]).astype(np.int32)

    @cached_property
    def request_starts(self) -> np.ndarray:
        """First row of each request, aligned with `request_ids` (int64)."""
        return self._runs[1][self._id_order]

    @cached_property
    def request_stops(self) -> np.ndarray:
        """One past the last row of each request, aligned with `request_ids` (int64)."""
        return self._runs[2][self._id_order]

    @cached_property
    def request_slices(self) -> dict[int, slice]:
        """{request id: slice(start, stop)} of its rows, in id order: `trace.experts[trace.request_slices[r]]`."""
        return {int(r): slice(int(a), int(b))
                for r, a, b in zip(self.request_ids, self.request_starts, self.request_stops, strict=True)}

    @cached_property
    def replay_order(self) -> np.ndarray:
        """Row indices in replay order (requests in id order, rows in order); arange when already so."""
        starts, stops = self.request_starts, self.request_stops
        if starts.size == 0 or (starts[0] == 0 and np.all(starts[1:] == stops[:-1])):
            return np.arange(self.num_rows, dtype=np.int64)
        return _concat_ranges(starts, stops)

    # ---- model ----------------------------------------------------------------------------------------
    @cached_property
    def spec(self) -> ModelSpec:
        """The model: meta["model_spec"] if present, else the catalog entry meta["model"], truncated to the
        trace's layer count when the capture covers only the first L MoE layers (a partial capture: the
        simulated model is then the first L MoE layers, and its name says so; see ModelSpec.truncated)."""
        spec = self.model_spec
        L = self.num_layers
        if L > spec.num_moe_layers:
            raise InputError(self.source, "experts",
                             f"{L} MoE layers but model {spec.name!r} has {spec.num_moe_layers}")
        if L < spec.num_moe_layers:
            spec = spec.truncated(L)
        return spec

    @cached_property
    def model_spec(self) -> ModelSpec:
        """The whole model the trace names (meta.model_spec or the catalog's meta.model), before truncation."""
        meta = self.meta
        if meta.get("model_spec") is not None:
            spec = ModelSpec.from_dict(meta["model_spec"], source=self.source)
        else:
            name = meta.get("model")
            if not isinstance(name, str):
                raise InputError(self.source, "meta.model", f"must be a model name string, got {name!r}")
            try:
                spec = get_model(name)
            except InputError as e:
                raise InputError(self.source, "meta.model", e.message) from None
        return spec

    # ---- subsets --------------------------------------------------------------------------------------
    def select(self, requests: int | Iterable[int] | None = None, max_rows: int | None = None) -> Trace:
        """A sub-trace: `requests` = an int n (the first n request ids) or an iterable of request ids;
        `max_rows` caps the rows (taken in replay order, so the last request may be cut short).
        Rows come out in replay order; request ids are kept, arrival_s is cut to the largest id kept."""
        ids, starts, stops = self.request_ids, self.request_starts, self.request_stops
        if requests is not None:
            if isinstance(requests, (int, np.integer)):
                if requests < 0:
                    raise InputError(self.source, "requests", f"must be >= 0, got {requests}")
                pick = np.arange(min(int(requests), ids.size))
            else:
                want = np.unique(np.asarray(list(requests), dtype=np.int64))
                pick = np.searchsorted(ids, want)
                bad = (pick >= ids.size) | (ids[np.minimum(pick, ids.size - 1)] != want)
                if bad.any():
                    raise InputError(self.source, "requests", f"no request with id {int(want[bad][0])}")
            ids, starts, stops = ids[pick], starts[pick], stops[pick]
        rows = _concat_ranges(starts, stops)
        if max_rows is not None:
            if max_rows < 0:
                raise InputError(self.source, "max_rows", f"must be >= 0, got {max_rows}")
            rows = rows[:max_rows]
        req = self.request[rows]
        arrival = None
        if self.arrival_s is not None:
            arrival = self.arrival_s[: int(req.max()) + 1].copy() if req.size else self.arrival_s[:0].copy()

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[rows]

        return Trace(experts=self.experts[rows], request=req, phase=self.phase[rows], meta=dict(self.meta),
                     gates=take(self.gates), arrival_s=arrival, predicted=take(self.predicted),
                     source=self.source)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays as stored in the file (meta as its 0-d JSON string)."""
        out = {"experts": self.experts, "request": self.request, "phase": self.phase,
               "meta": np.array(_dump_meta(self.meta, self.source))}
        for name in OPTIONAL:
            a = getattr(self, name)
            if a is not None:
                out[name] = a
        return out


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, ModelSpec):
        return o.to_dict()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _dump_meta(meta: dict, source: str) -> str:
    try:
        return json.dumps(meta, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as e:
        raise InputError(source, "meta", f"cannot be written as JSON ({e})") from None


def _concat_ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """np.concatenate([arange(a, b) for a, b in zip(starts, stops)]) without a Python loop."""
    lens = (stops - starts).astype(np.int64)
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    keep = lens > 0
    starts, lens = starts[keep].astype(np.int64), lens[keep]
    offsets = np.cumsum(lens) - lens
    out = np.ones(total, np.int64)
    out[0] = starts[0]
    # at each run start, jump from the previous run's last row to this run's first row
    out[offsets[1:]] = starts[1:] - (starts[:-1] + lens[:-1] - 1)
    return np.cumsum(out)


# ---- meta ---------------------------------------------------------------------------------------------
def make_meta(model: str | None = None, model_spec: ModelSpec | dict | None = None, source: str = "",
              **fields: Any) -> dict:
    """A meta dict for a new trace. `model` is a catalog name; `model_spec` (a ModelSpec or its dict)
    embeds the shapes (and wins over `model` when reading). `source` says how the trace was made."""
    if model is None and model_spec is None:
        raise InputError("meta", "model", "give a catalog model name or a model_spec")
    meta: dict[str, Any] = {"format": FORMAT}
    if isinstance(model_spec, ModelSpec):
        model_spec = model_spec.to_dict()
    if model is None and model_spec is not None:
        model = model_spec.get("name")
    if model is not None:
        meta["model"] = model
    if model_spec is not None:
        meta["model_spec"] = model_spec
    meta["source"] = source
    for key in ("format", "model", "model_spec", "source"):
        if key in fields:
            raise InputError("meta", key, "pass it as make_meta's own argument")
    meta.update(fields)
    return meta


def _parse_meta(raw: np.ndarray, source: str) -> dict:
    if raw.dtype.kind != "U" or raw.ndim != 0:
        raise InputError(source, "meta", f"must be a 0-d unicode string array holding JSON, got dtype "
                         f"{raw.dtype.str} shape {raw.shape}")
    try:
        meta = json.loads(str(raw[()]))
    except ValueError as e:
        raise InputError(source, "meta", f"not valid JSON ({e})") from None
    except RecursionError:
        raise InputError(source, "meta", "not usable JSON (nested too deeply)") from None
    if not isinstance(meta, dict):
        raise InputError(source, "meta", f"must be a JSON object, got {type(meta).__name__}")
    return meta


# ---- validation ---------------------------------------------------------------------------------------
def _first(mask: np.ndarray) -> tuple[int, ...]:
    """Index tuple of the first True element (mask.any() must be true)."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def _where(idx: tuple[int, ...]) -> str:
    names = ("row", "layer", "slot")
    return " ".join(f"{n} {i}" for n, i in zip(names, idx, strict=False))


def _check_array(trace: Trace, name: str) -> None:
    a = getattr(trace, name)
    src = trace.source
    if not isinstance(a, np.ndarray):
        raise InputError(src, name, f"must be a numpy array, got {type(a).__name__}")
    want = DTYPES[name]
    if a.dtype != want:
        raise InputError(src, name, f"dtype must be {want.name} ({want.str}), got {a.dtype.str}")
    if a.ndim != NDIM[name]:
        raise InputError(src, name, f"must have {NDIM[name]} dimensions, got shape {a.shape}")


def _check_meta(trace: Trace) -> None:
    src, meta = trace.source, trace.meta
    if not isinstance(meta, dict):
        raise InputError(src, "meta", f"must be a JSON object, got {type(meta).__name__}")
    fmt = meta.get("format")
    if fmt != FORMAT:
        raise InputError(src, "meta.format", f"must be {FORMAT!r}, got {fmt!r}")
    if meta.get("model") is None and meta.get("model_spec") is None:
        raise InputError(src, "meta", "needs 'model' (a catalog name) or 'model_spec'")


def _check_unique_in_row(ids: np.ndarray, src: str, field: str) -> None:
    """No expert twice in one row's layer (ignoring -1)."""
    n, L, K = ids.shape
    if K < 2 or n == 0:
        return
    if K <= 8:
        bad = None
        for i in range(K - 1):
            a = ids[:, :, i]
            valid = a >= 0
            eq = (ids[:, :, i + 1:] == a[:, :, None]).any(axis=2) & valid
            bad = eq if bad is None else (bad | eq)
        if bad.any():
            r, layer = _first(bad)
            raise InputError(src, field, f"expert {_dup_value(ids[r, layer])} appears twice at row {r} "
                             f"layer {layer}")
        return
    step = max(1, _CHUNK_ELEMS // max(1, L * K))
    for s in range(0, n, step):
        block = np.sort(ids[s:s + step], axis=2)
        bad = ((block[:, :, 1:] == block[:, :, :-1]) & (block[:, :, 1:] >= 0)).any(axis=2)
        if bad.any():
            r, layer = _first(bad)
            raise InputError(src, field, f"expert {_dup_value(ids[s + r, layer])} appears twice at row "
                             f"{s + r} layer {layer}")


def _dup_value(row: np.ndarray) -> int:
    vals, counts = np.unique(row[row >= 0], return_counts=True)
    return int(vals[counts > 1][0])


def validate(trace: Trace) -> None:
    """Checks every rule of the format; raises InputError(trace.source, field, message) on the first."""
    src = trace.source
    for name in ("experts", "request", "phase"):
        _check_array(trace, name)
    for name in OPTIONAL:
        if getattr(trace, name) is not None:
            _check_array(trace, name)
    _check_meta(trace)

    ex, req, ph = trace.experts, trace.request, trace.phase
    n, L, K = ex.shape
    if n == 0:
        raise InputError(src, "experts", "empty trace (no rows)")
    if L == 0 or K == 0:
        raise InputError(src, "experts", f"shape {ex.shape} has no layers or no slots")
    for name, a in (("request", req), ("phase", ph)):
        if a.shape[0] != n:
            raise InputError(src, name, f"has {a.shape[0]} rows, experts has {n}")
    if trace.gates is not None and trace.gates.shape != ex.shape:
        raise InputError(src, "gates", f"shape {trace.gates.shape} differs from experts {ex.shape}")
    if trace.predicted is not None and trace.predicted.shape[:2] != (n, L):
        raise InputError(src, "predicted", f"shape {trace.predicted.shape} must be [N={n}, L={L}, P]")

    spec = trace.spec  # meta.model / model_spec, layer count
    E = spec.num_experts
    if K > E:
        raise InputError(src, "experts", f"{K} slots per layer exceed the model's {E} experts")
    if K > spec.top_k:  # slots beyond top_k may only pad with -1: the model routes each token to top_k experts
        routed = (ex >= 0).sum(axis=2, dtype=np.int16)
        bad = routed > spec.top_k
        if bad.any():
            r, layer = _first(bad)
            raise InputError(src, "experts", f"row {r} layer {layer} routes {int(routed[r, layer])} experts but "
                             f"{spec.name} routes each token to top-{spec.top_k} (a trace of the model run with "
                             "more experts per token must embed a meta.model_spec with that top_k)")

    # expert ids
    lo, hi = int(ex.min()), int(ex.max())
    if lo < -1 or hi >= E:
        bad = (ex < -1) | (ex >= E)
        idx = _first(bad)
        raise InputError(src, "experts", f"expert id {int(ex[idx])} out of range [-1, {E}) at {_where(idx)}")
    _check_unique_in_row(ex, src, "experts")

    # gates
    g = trace.gates
    if g is not None:
        nan = np.isnan(g)
        valid = ex >= 0
        bad = nan & valid
        if bad.any():
            raise InputError(src, "gates", f"NaN gate for expert {int(ex[_first(bad)])} at {_where(_first(bad))}")
        bad = ~nan & ~valid
        if bad.any():
            raise InputError(src, "gates", f"gate must be NaN where experts is -1, got {float(g[_first(bad)])} "
                             f"at {_where(_first(bad))}")
        with np.errstate(invalid="ignore"):
            bad = (g < 0) | np.isinf(g)
        if bad.any():
            raise InputError(src, "gates", f"gate {float(g[_first(bad)])} at {_where(_first(bad))} must be "
                             "finite and >= 0")

    # phase
    if ph.min() < 0 or ph.max() > 1:
        i = int(np.argmax((ph < 0) | (ph > 1)))
        raise InputError(src, "phase", f"must be 0 (prefill) or 1 (decode), got {int(ph[i])} at row {i}")
    back = (ph[1:] < ph[:-1]) & (req[1:] == req[:-1])
    if back.any():
        i = int(np.argmax(back)) + 1
        raise InputError(src, "phase", f"request {int(req[i])} goes from decode back to prefill at row {i}")

    # requests
    if req.min() < 0:
        i = int(np.argmax(req < 0))
        raise InputError(src, "request", f"request id {int(req[i])} at row {i} is negative")
    run_ids, run_starts, _ = trace._runs
    if np.unique(run_ids).size != run_ids.size:
        order = np.argsort(run_ids, kind="stable")
        s = run_ids[order]
        j = int(np.argmax(s[1:] == s[:-1]))
        rid = int(s[j])
        first, second = sorted((int(run_starts[order[j]]), int(run_starts[order[j + 1]])))
        raise InputError(src, "request", f"rows of request {rid} are not contiguous (they start again at row "
                         f"{second} after a run starting at row {first})")

    # arrivals
    a = trace.arrival_s
    if a is not None:
        want = int(run_ids.max()) + 1
        if a.shape[0] != want:
            raise InputError(src, "arrival_s", f"has {a.shape[0]} entries, needs max request id + 1 = {want}")
        bad = ~np.isfinite(a) | (a < 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(src, "arrival_s", f"arrival time {float(a[i])} of request {i} must be finite "
                             "and >= 0")

    # predictions
    p = trace.predicted
    if p is not None and p.size:
        lo, hi = int(p.min()), int(p.max())
        if lo < -1 or hi >= E:
            idx = _first((p < -1) | (p >= E))
            raise InputError(src, "predicted", f"expert id {int(p[idx])} out of range [-1, {E}) at {_where(idx)}")


# ---- files --------------------------------------------------------------------------------------------
def read_trace(path: str | Path) -> Trace:
    """Loads and validates a trace file. Bad files raise InputError(path, field, message)."""
    src = str(path)
    p = Path(path)
    if not p.is_file():
        raise InputError(src, None, "no such file" if not p.exists() else "not a file")
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
    except zipfile.BadZipFile:
        raise InputError(src, None, "not a .npz (zip) archive, or the file is truncated") from None
    except OSError as e:
        raise InputError(src, None, f"cannot read: {e.strerror or e}") from None
    members = {}
    for name in names:
        key = name[:-4] if name.endswith(".npy") else name
        members[key] = name
    unknown = sorted(set(members) - set(ARRAYS))
    if unknown:
        raise InputError(src, unknown[0], f"unknown array; valid arrays: {', '.join(ARRAYS)}")
    for name in REQUIRED:
        if name not in members:
            raise InputError(src, name, "missing array")
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(p, allow_pickle=False) as npz:
            for key in members:
                try:
                    arrays[key] = npz[key]
                except ValueError as e:
                    if "pickle" in str(e).lower():
                        raise InputError(src, key, "holds Python objects (pickles are not allowed)") from None
                    raise InputError(src, key, f"cannot read array: {e}") from None
    except InputError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise InputError(src, None, f"corrupt or truncated archive ({type(e).__name__}: {e})") from None
    meta = _parse_meta(arrays.pop("meta"), src)
    trace = Trace(experts=arrays["experts"], request=arrays["request"], phase=arrays["phase"], meta=meta,
                  gates=arrays.get("gates"), arrival_s=arrays.get("arrival_s"),
                  predicted=arrays.get("predicted"), source=src)
    validate(trace)
    return trace


def write_trace(trace: Trace, path: str | Path, compress: bool = True) -> None:
    """Validates `trace` and writes it to `path` atomically (whole file or nothing)."""
    validate(trace)
    arrays = trace.arrays()
    save = np.savez_compressed if compress else np.savez
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
        save(f, **arrays)
