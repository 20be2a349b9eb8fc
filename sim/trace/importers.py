"""Importers: routing logs (JSONL from patched vLLM `select_experts` loggers, per-layer CSV dumps) into
`simmoe-trace/1`, and a JSONL exporter (the importer's inverse, for round-trip tests and other tools).

One record = one (request, MoE layer, token): the token's experts (and optionally their gate weights).
Accepted field names (first name is canonical; aliases in brackets):

    request   [request_id, req_id, seq_id]       int or string; strings are numbered in order of first
                                                 appearance (names kept in meta.request_names)
    layer     [layer_id, layer_idx]              MoE layer index from 0 (--layer-index moe, default), or the
                                                 model's transformer-layer index (--layer-index model)
    token     [token_idx, position, pos]         0-based position of the token in its request
    experts   [topk_ids, expert_ids]             up to top_k expert ids; -1 = no expert; fewer ids are
                                                 padded with -1 on the right
    weights   [topk_weights, gates]              optional, one per expert (null where the expert is -1);
                                                 all records or none
    phase     [is_prefill]                       optional: "prefill"/"decode", 0/1 (0 = prefill), or
                                                 is_prefill true/false
    prompt_len [prompt_tokens, num_prompt_tokens] optional, per request: rows with token < prompt_len are
                                                 prefill

Phase rules: a `phase` field wins (all records of one row must agree); else a request's `prompt_len`
field; else the --prompt-len option; else it is an error. Rows with no record at all (gaps) take the
prompt_len rule when one is known, otherwise the phase of the nearest earlier row of the request (or
the next one for a leading gap).

Gaps: a request has rows 0..max(token); every (row, layer) without a record is all -1 (NaN gates), so
nothing is ever shifted. Duplicated (request, layer, token) records, expert ids outside [-1, E), layers
outside the model, negative tokens, NaN or negative weights and unknown fields are InputErrors naming the
file, the field and (JSONL) the line. CSV: the same columns, `experts` either as one column of ids
separated by spaces, ';' or '|' or as columns expert_0..expert_{k-1} (weights likewise: `weights` or
weight_0..); one CSV with a `layer` column, or one CSV per layer with the layer as the last number in
the file name (layer_12.csv).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simmoe.errors import InputError
from simmoe.fileio import atomic_open
from simmoe.models import CATALOG, ModelSpec
from simmoe.models.load import load_model
from simmoe.trace.format import Trace, make_meta, validate
from simmoe.validation import check_memory

ALIASES: dict[str, tuple[str, ...]] = {
    "request": ("request", "request_id", "req_id", "seq_id"),
    "layer": ("layer", "layer_id", "layer_idx"),
    "token": ("token", "token_idx", "position", "pos"),
    "experts": ("experts", "topk_ids", "expert_ids"),
    "weights": ("weights", "topk_weights", "gates"),
    "phase": ("phase", "is_prefill"),
    "prompt_len": ("prompt_len", "prompt_tokens", "num_prompt_tokens"),
}
_CANON = {alias: canon for canon, names in ALIASES.items() for alias in names}
_PHASE_WORDS = {"prefill": 0, "decode": 1, 0: 0, 1: 1}


class _Records:
    """Column lists of parsed records plus where each came from (for error messages)."""

    def __init__(self) -> None:
        self.request: list[Any] = []
        self.layer: list[int] = []
        self.token: list[int] = []
        self.experts: list[list[int]] = []
        self.weights: list[list[float] | None] = []
        self.phase: list[int] = []  # -1 = not given
        self.prompt_len: list[int] = []  # -1 = not given
        self.where: list[tuple[str, int | None]] = []  # (file, line or row)


# Integers in a record (layer, token, expert id, prompt_len, request id) live in [-2^31, 2^31): a trace's
# rows and ids are 32-bit.
_INT_LIMIT = 2**31


def _int(v: Any, src: str, field: str) -> int:
    if isinstance(v, bool) or v is None:
        raise InputError(src, field, f"must be an integer, got {v!r}")
    if isinstance(v, float):
        if not v.is_integer():
            raise InputError(src, field, f"must be an integer, got {v!r}")
        out = int(v)
    elif isinstance(v, str):
        try:
            out = int(v.strip())
        except ValueError:
            raise InputError(src, field, f"must be an integer, got {v!r}") from None
    elif isinstance(v, (int, np.integer)):
        out = int(v)
    else:
        raise InputError(src, field, f"must be an integer, got {v!r}")
    if not -_INT_LIMIT <= out < _INT_LIMIT:
        raise InputError(src, field, f"{out} is out of range (a 32-bit integer)")
    return out


def _phase(v: Any, key: str, src: str) -> int:
    if key == "is_prefill":
        if isinstance(v, bool):
            return 0 if v else 1
        if not isinstance(v, (list, dict)) and v in (0, 1, "0", "1", "true", "false", "True", "False"):
            return 0 if str(v).lower() in ("1", "true") else 1
        raise InputError(src, "is_prefill", f"must be true or false, got {v!r}")
    key_v = v.strip().lower() if isinstance(v, str) else v
    if isinstance(key_v, str) and key_v in ("0", "1"):
        key_v = int(key_v)
    if isinstance(key_v, (bool, list, dict)) or key_v not in _PHASE_WORDS:
        raise InputError(src, "phase", f"must be 'prefill', 'decode', 0 or 1, got {v!r}")
    return _PHASE_WORDS[key_v]


def _add(rec: _Records, fields: dict[str, Any], src: str, where: tuple[str, int | None],
         ignore: frozenset[str]) -> None:
    """Adds one record (a dict of raw field values); `src` names file and line for errors."""
    got: dict[str, tuple[str, Any]] = {}
    for key, v in fields.items():
        if key in ignore:
            continue
        canon = _CANON.get(key)
        if canon is None:
            raise InputError(src, key, "unknown field (pass --ignore-fields to skip it); accepted: "
                             + ", ".join(sorted(_CANON)))
        if canon in got:
            raise InputError(src, key, f"given twice (also as {got[canon][0]!r})")
        got[canon] = (key, v)
    for need in ("request", "layer", "token", "experts"):
        if need not in got:
            raise InputError(src, need, "missing field")
    req = got["request"][1]
    if isinstance(req, float) and req.is_integer():
        req = int(req)
    if not isinstance(req, (int, str)) or isinstance(req, bool):
        raise InputError(src, got["request"][0], f"must be an integer or a string, got {req!r}")
    if isinstance(req, int):
        _int(req, src, got["request"][0])  # in range
    ex_key, ex = got["experts"]
    if not isinstance(ex, list):
        raise InputError(src, ex_key, f"must be a list of expert ids, got {ex!r}")
    experts = [_int(e, src, ex_key) for e in ex]
    weights = None
    if "weights" in got:
        w_key, w = got["weights"]
        if not isinstance(w, list) or len(w) != len(experts):
            raise InputError(src, w_key, f"must be a list of {len(experts)} numbers (one per expert), got {w!r}")
        weights = []
        for e, x in zip(experts, w, strict=True):
            if x is None:
                weights.append(math.nan)
                continue
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
                raise InputError(src, w_key, f"weight {x!r} of expert {e} must be a finite number >= 0")
            weights.append(float(x))
    rec.request.append(req)
    rec.layer.append(_int(got["layer"][1], src, got["layer"][0]))
    rec.token.append(_int(got["token"][1], src, got["token"][0]))
    rec.experts.append(experts)
    rec.weights.append(weights)
    rec.phase.append(_phase(got["phase"][1], got["phase"][0], src) if "phase" in got else -1)
    rec.prompt_len.append(_int(got["prompt_len"][1], src, got["prompt_len"][0]) if "prompt_len" in got else -1)
    rec.where.append(where)


def _src(where: tuple[str, int | None], unit: str = "line") -> str:
    f, n = where
    return f if n is None else f"{f}:{unit} {n}"


def _named(spec: ModelSpec) -> dict[str, Any]:
    """How the trace names its model: the catalog name, or the whole spec when the catalog does not hold it."""
    return {"model": spec.name} if CATALOG.get(spec.name) == spec else {"model_spec": spec}


def _build(rec: _Records, spec: ModelSpec, model: str | Path | ModelSpec, source: str, layer_index: str,
           prompt_len: int | None, unit: str, fmt: str) -> Trace:
    """Records -> a validated Trace (the shared back end of both importers)."""
    m = len(rec.request)
    if m == 0:
        raise InputError(source, None, "no records")
    where = rec.where

    def fail(i: int, field: str, msg: str) -> InputError:
        return InputError(_src(where[i], unit), field, msg)

    L, E, K = spec.num_moe_layers, spec.num_experts, spec.top_k
    # layers
    layer = np.asarray(rec.layer, np.int64)
    if layer_index == "model":
        to_moe = np.full(spec.num_layers, -1, np.int64)
        to_moe[list(spec.moe_layers)] = np.arange(L)
        bad = (layer < 0) | (layer >= spec.num_layers)
        if not bad.any():
            moe = to_moe[layer]
            bad = moe < 0
        if bad.any():
            i = int(np.argmax(bad))
            raise fail(i, "layer", f"transformer layer {rec.layer[i]} is not one of {spec.name}'s MoE layers "
                       f"{list(spec.moe_layers)}")
        layer = moe
    elif layer_index == "moe":
        bad = (layer < 0) | (layer >= L)
        if bad.any():
            i = int(np.argmax(bad))
            raise fail(i, "layer", f"MoE layer {rec.layer[i]} out of range [0, {L}) for {spec.name}")
    else:
        raise InputError(source, "layer_index", f"must be 'moe' or 'model', got {layer_index!r}")
    token = np.asarray(rec.token, np.int64)
    if (token < 0).any():
        i = int(np.argmax(token < 0))
        raise fail(i, "token", f"must be >= 0, got {rec.token[i]}")

    # experts: [m, K], padded with -1. A record may list more than K ids only if the extra ones are -1 (they
    # are dropped); more routed experts than top-k is an error, as when reading a trace.
    for i, e in enumerate(rec.experts):
        if len(e) > K:
            keep = [j for j, x in enumerate(e) if x != -1]
            if len(keep) > K:
                raise fail(i, "experts", f"{len(keep)} experts but {spec.name} routes each token to top-{K}")
            rec.experts[i] = [e[j] for j in keep]
            if rec.weights[i] is not None:
                rec.weights[i] = [rec.weights[i][j] for j in keep]
    lens = np.fromiter((len(e) for e in rec.experts), np.int64, m)
    flat = np.fromiter((x for e in rec.experts for x in e), np.int64, int(lens.sum()))
    rows_of = np.repeat(np.arange(m), lens)
    cols = np.arange(flat.size) - np.repeat(np.cumsum(lens) - lens, lens)
    bad = (flat < -1) | (flat >= E)
    if bad.any():
        j = int(np.argmax(bad))
        raise fail(int(rows_of[j]), "experts", f"expert id {int(flat[j])} out of range [-1, {E}) for {spec.name}")
    ex = np.full((m, K), -1, np.int64)
    ex[rows_of, cols] = flat
    srt = np.sort(ex, axis=1)
    dup = ((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)).any(axis=1)
    if dup.any():
        i = int(np.argmax(dup))
        raise fail(i, "experts", f"an expert appears twice in {rec.experts[i]}")
    has_w = np.fromiter((w is not None for w in rec.weights), bool, m)
    gates = None
    if has_w.any():
        if not has_w.all():
            i = int(np.argmax(~has_w))
            raise fail(i, "weights", "missing here but given in other records (give weights in all or none)")
        wflat = np.fromiter((x for w in rec.weights for x in w), np.float64, int(lens.sum()))
        mism = np.isnan(wflat) != (flat < 0)
        if mism.any():
            j = int(np.argmax(mism))
            raise fail(int(rows_of[j]), "weights", f"weight must be null exactly where the expert is -1 "
                       f"(expert {int(flat[j])}, weight {wflat[j]})")
        g = np.full((m, K), np.nan, np.float32)
        g[rows_of, cols] = wflat.astype(np.float32)
        gates = g

    # requests: integer ids are kept; string ids are numbered in order of first appearance
    names: list[str] | None = None
    if all(isinstance(r, int) for r in rec.request):
        rid = np.asarray(rec.request, np.int64)
        if (rid < 0).any() or (rid >= 2**31).any():
            i = int(np.argmax((rid < 0) | (rid >= 2**31)))
            raise fail(i, "request", f"integer request id {rec.request[i]} must be in [0, 2^31)")
    else:
        keys = [str(r) for r in rec.request]
        uniq, first, inv = np.unique(np.asarray(keys), return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty(order.size, np.int64)
        rank[order] = np.arange(order.size)
        rid = rank[inv.ravel()]
        names = [str(uniq[j]) for j in order]
    ids, inv = np.unique(rid, return_inverse=True)
    inv = inv.ravel()
    nrows = np.zeros(ids.size, np.int64)
    np.maximum.at(nrows, inv, token + 1)
    offsets = np.concatenate(([0], np.cumsum(nrows)[:-1]))
    N = int(nrows.sum())
    row = offsets[inv] + token

    # duplicates
    key = row * L + layer
    order = np.argsort(key, kind="stable")
    sk = key[order]
    d = np.flatnonzero(sk[1:] == sk[:-1])
    if d.size:
        a, b = sorted((int(order[d[0]]), int(order[d[0] + 1])))
        raise fail(b, "token", f"request {rec.request[b]!r} layer {rec.layer[b]} token {rec.token[b]} "
                   f"already given at {_src(where[a], unit)}")

    # gaps become -1 rows: a stray token number must not ask for terabytes (one line instead of MemoryError)
    cells = L * K * (2 + (4 if gates is not None else 0))
    i = int(np.argmax(token))
    check_memory(N * (cells + 48), _src(where[i], unit),
                 f"token {rec.token[i]} makes request {rec.request[i]!r} {rec.token[i] + 1:,} rows long (rows "
                 f"without records are filled with -1), {N:,} rows in all", field="token")
    experts = np.full((N, L, K), -1, np.int16)
    experts[row, layer] = ex
    gate_arr = None
    if gates is not None:
        gate_arr = np.full((N, L, K), np.nan, np.float32)
        gate_arr[row, layer] = gates
    request = np.repeat(ids, nrows).astype(np.int32)

    # phase
    ph_rec = np.asarray(rec.phase, np.int64)
    pl_rec = np.asarray(rec.prompt_len, np.int64)
    phase = np.full(N, -1, np.int64)
    rule = "phase field"
    if (ph_rec >= 0).any():
        if (ph_rec < 0).any():
            i = int(np.argmax(ph_rec < 0))
            raise fail(i, "phase", "missing here but given in other records (give it in all or none)")
        lo = np.full(N, 2, np.int64)
        hi = np.full(N, -1, np.int64)
        np.minimum.at(lo, row, ph_rec)
        np.maximum.at(hi, row, ph_rec)
        mixed = (hi >= 0) & (lo != hi)
        if mixed.any():
            r = int(np.argmax(mixed))
            i = int(np.flatnonzero(row == r)[0])
            raise fail(i, "phase", f"records of request {rec.request[i]!r} token {rec.token[i]} disagree on the "
                       "phase")
        phase = np.where(hi >= 0, hi, -1)
    plen = np.full(ids.size, -1, np.int64)
    if (pl_rec >= 0).any():
        if (pl_rec < 0).any():
            i = int(np.argmax(pl_rec < 0))
            raise fail(i, "prompt_len", "missing here but given in other records (give it in all or none)")
        lo = np.full(ids.size, np.iinfo(np.int64).max)
        np.minimum.at(lo, inv, pl_rec)
        np.maximum.at(plen, inv, pl_rec)
        if (lo != plen).any():
            r = int(np.argmax(lo != plen))
            i = int(np.flatnonzero(inv == r)[0])
            raise fail(i, "prompt_len", f"request {rec.request[i]!r} has different prompt_len values")
    elif prompt_len is not None:
        if prompt_len < 0:
            raise InputError("--prompt-len", None, f"must be >= 0, got {prompt_len}")
        plen[:] = prompt_len
    pos = np.arange(N) - np.repeat(offsets, nrows)
    if (plen >= 0).any():
        by_len = (pos >= np.repeat(plen, nrows)).astype(np.int64)
        if (phase >= 0).any():
            phase = np.where(phase >= 0, phase, by_len)  # gaps only
        else:
            phase, rule = by_len, "prompt_len field" if (pl_rec >= 0).any() else "--prompt-len"
    elif (phase < 0).all():
        raise InputError(source, "phase", "no phase or prompt_len field: give --prompt-len N (rows with token "
                         "< N are prefill)")
    if (phase < 0).any():  # gaps with only a phase field: nearest earlier row of the request, else next
        idx = np.where(phase >= 0, np.arange(N), -1)
        starts = np.repeat(offsets, nrows)
        prev = np.maximum.accumulate(idx)
        ok = prev >= starts
        rev = np.where(phase >= 0, np.arange(N), N)[::-1]
        nxt = np.minimum.accumulate(rev)[::-1]
        phase = np.where(ok, phase[np.maximum(prev, 0)], phase[np.minimum(nxt, N - 1)])

    meta_extra: dict[str, Any] = {"import": {"format": fmt, "records": m, "layer_index": layer_index,
                                             "phase_rule": rule,
                                             "gaps": int((experts < 0).all(axis=2).sum())}}
    if names is not None:
        meta_extra["request_names"] = names
    trace = Trace(experts=experts, request=request, phase=phase.astype(np.int8),
                  meta=make_meta(**_named(spec), source=f"imported from {fmt} ({source})", **meta_extra),
                  gates=gate_arr, source=source)
    validate(trace)
    return trace


def _spec(model: str | Path | ModelSpec, source: str) -> ModelSpec:
    """A catalog name, a config.json or spec .yaml path, or a ModelSpec (simmoe.models.load)."""
    return load_model(model)


# ---- JSONL --------------------------------------------------------------------------------------------
def import_jsonl(path: str | Path, model: str | Path | ModelSpec, layer_index: str = "moe", prompt_len: int | None = None,
                 ignore_fields: Iterable[str] = ()) -> Trace:
    """One JSON object per line (blank lines skipped); see the module doc for the fields and rules."""
    src = str(path)
    spec = _spec(model, src)
    ignore = frozenset(ignore_fields)
    rec = _Records()
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise InputError(src, None, f"cannot read: {e.strerror or e}") from None
    with f:
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{src}:line {n}"
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise InputError(where, None, f"not valid JSON ({e})") from None
                except RecursionError:
                    raise InputError(where, None, "not usable JSON (nested too deeply)") from None
                if not isinstance(obj, dict):
                    raise InputError(where, None, f"must be a JSON object, got {type(obj).__name__}")
                _add(rec, obj, where, (src, n), ignore)
        except UnicodeDecodeError as e:
            raise InputError(src, None, f"not UTF-8 text ({e.reason})") from None
    return _build(rec, spec, model, src, layer_index, prompt_len, "line", "jsonl")


def export_jsonl(trace: Trace, path: str | Path, weights: bool = True) -> None:
    """Writes one record per (row, layer) in the importer's canonical fields (request, layer = MoE layer,
    token, phase, experts with -1 kept, weights with null where the expert is -1). Atomic."""
    ex, g = trace.experts, trace.gates
    n, L, K = ex.shape
    pos = _positions(trace)
    with atomic_open(path) as f:
        for r in range(n):
            base = {"request": int(trace.request[r]), "token": int(pos[r]),
                    "phase": "prefill" if trace.phase[r] == 0 else "decode"}
            for layer in range(L):
                d = dict(base, layer=layer, experts=ex[r, layer].tolist())
                if weights and g is not None:
                    d["weights"] = [None if math.isnan(x) else x for x in g[r, layer].tolist()]
                f.write(json.dumps(d) + "\n")


def _positions(trace: Trace) -> np.ndarray:
    """Each row's position within its request."""
    n = trace.num_rows
    pos = np.empty(n, np.int64)
    order = trace.replay_order
    lens = trace.request_stops - trace.request_starts
    pos[order] = np.arange(n) - np.repeat(np.cumsum(lens) - lens, lens)
    return pos


# ---- CSV ----------------------------------------------------------------------------------------------
_SPLIT = re.compile(r"[\s;|,]+")


def _csv_list(v: Any) -> list[str]:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return []
    s = str(v).strip().strip("[]")
    return [x for x in _SPLIT.split(s) if x]


def import_csv(paths: str | Path | Sequence[str | Path], model: str | Path | ModelSpec, layer_index: str = "moe",
               prompt_len: int | None = None, ignore_fields: Iterable[str] = ()) -> Trace:
    """One CSV with a `layer` column, or several CSVs (one per layer, layer = last number in the file name).
    Row numbers in errors count the header as row 1 (as a spreadsheet shows them)."""
    import pandas as pd

    files = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not files:
        raise InputError("import", "FILE", "no CSV files given")
    spec = _spec(model, str(files[0]))
    ignore = frozenset(ignore_fields)
    rec = _Records()
    for path in files:
        src = str(path)
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        except FileNotFoundError:
            raise InputError(src, None, "no such file") from None
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise InputError(src, None, f"cannot read as CSV ({e})") from None
        cols = [c.strip() for c in df.columns]
        df.columns = cols
        ex_cols = sorted((c for c in cols if re.fullmatch(r"expert_\d+", c)), key=lambda c: int(c[7:]))
        w_cols = sorted((c for c in cols if re.fullmatch(r"weight_\d+", c)), key=lambda c: int(c[7:]))
        plain = [c for c in cols if c not in ex_cols and c not in w_cols]
        file_layer = None
        if not any(_CANON.get(c) == "layer" for c in plain):
            nums = re.findall(r"\d+", Path(src).stem)
            if not nums:
                raise InputError(src, "layer", "no layer column and no layer number in the file name")
            file_layer = int(nums[-1])
        if ex_cols and any(_CANON.get(c) == "experts" for c in plain):
            raise InputError(src, "experts", "give either an experts column or expert_0.. columns, not both")
        if not ex_cols and not any(_CANON.get(c) == "experts" for c in plain):
            raise InputError(src, "experts", "missing column (experts, or expert_0, expert_1, ...)")
        records = df.to_dict("records")
        for i, r in enumerate(records):
            where = f"{src}:row {i + 2}"
            fields: dict[str, Any] = {}
            for c in plain:
                v = r[c]
                canon = _CANON.get(c)
                if canon in ("experts", "weights"):
                    fields[c] = _csv_list(v)
                elif canon is None:
                    fields[c] = v
                elif v.strip() == "":
                    continue  # an empty cell is a missing field
                elif canon == "request":
                    fields[c] = int(v) if re.fullmatch(r"\d+", v.strip()) else v
                else:
                    fields[c] = v
            if ex_cols:
                fields["experts"] = [r[c] for c in ex_cols if r[c] != ""]
            if w_cols:
                fields["weights"] = [r[c] for c in w_cols if r[c] != ""]
            if file_layer is not None:
                fields["layer"] = file_layer
            for wk in [c for c in fields if _CANON.get(c) == "weights"]:
                fields[wk] = [_csv_float(x, where, wk) for x in fields[wk]]
            _add(rec, fields, where, (src, i + 2), ignore)
    source = str(files[0]) if len(files) == 1 else f"{files[0]} (+{len(files) - 1} files)"
    return _build(rec, spec, model, source, layer_index, prompt_len, "row", "csv")


def _csv_float(x: Any, where: str, field: str) -> float | None:
    s = str(x).strip()
    if s.lower() in ("", "nan", "null", "none"):
        return None
    try:
        return float(s)
    except ValueError:
        raise InputError(where, field, f"weight {s!r} is not a number") from None
