"""The measurements file: raw microbenchmarks that `simmoe calibrate --from` fits a profile from.

`simmoe calibrate` writes one beside every profile it measures (NAME.json), and the same format holds
measurements taken elsewhere (hwprofiles/h100-sxm-calibrated.json came from an H100 host this way), so that
measuring and fitting can happen on different machines. The format is documented in hwprofiles/README.md
("Measurements files"). Times are seconds, as {median, min, max} over the repetitions; sizes are bytes.

Sections (all optional except `machine`; at least one of transfer, gpu_ffn, cpu_ffn):
    machine, method   facts about the machine and how each table was taken (strings; numbers allowed)
    device            "cuda" (a GPU host, the default) or "cpu" (the CPU measured as a device)
    gpu_ffn_timing    "call" (the default): events around the Python call, so a small expert's time includes
                      the host's launch gaps; "gpu": GPU time only (the queue was filled before the start event)
    host              per-operation host costs: launch, copy_issue, sync (cuda); dispatch, copy_issue, sync (cpu)
    kernel_min        GPU time of the smallest kernel
    membw, gemm       a large device copy (bytes read + written) and a large square matmul, per device
    transfer          copy time vs size, pinned or pageable, h2d_s / d2h_s (memcpy on a CPU device)
    gpu_ffn, cpu_ffn  one routed expert's FFN time vs tokens, per shape and dtype (cpu_ffn: per thread count)
    blocks            a model's dense blocks (attention, router, head, gather) vs tokens, keyed as kernel tables
    overlap           an H2D copy alone, compute alone and both on two streams (and optionally D2H, H2D + D2H)

This module only reads, checks, converts and writes; it needs neither torch nor SciPy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simmoe.errors import InputError
from simmoe.fileio import atomic_path
from simmoe.hw.kernel_keys import shape_key

Device = Literal["cuda", "cpu"]
Activation = Literal["swiglu", "geglu", "relu", "gelu"]
# torch's names and simmoe's: both appear in measurement files (the H100 file uses both)
DTypeName = Literal["bf16", "fp16", "fp32", "bfloat16", "float16", "float32"]
DTYPES = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "fp32": "fp32", "float32": "fp32"}
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
Count = Annotated[int, Field(ge=1)]
Seconds = Annotated[float, Field(gt=0)]

# Columns of the rows the fits work on (one row per measured point; times in microseconds).
COLUMNS = ["kind", "device", "name", "dtype", "size_bytes", "tokens", "flops", "bytes", "median_us", "min_us",
           "max_us", "reps", "threads", "model", "context", "ops"]
COPY_KINDS = ("h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable")


class _Strict(BaseModel):
    # strict: a bool is not a count, "3" is not a number; floats must be finite
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Stat(_Strict):
    """One measured point: median, min and max over the repetitions, seconds."""

    median: Seconds
    min: Seconds
    max: Seconds
    reps: Count | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Stat:
        if not self.min <= self.median <= self.max:
            raise ValueError(f"needs min <= median <= max, got {self.min:g}, {self.median:g}, {self.max:g}")
        return self

    def us(self) -> dict[str, float]:
        return {"median_us": self.median * 1e6, "min_us": self.min * 1e6, "max_us": self.max * 1e6,
                "reps": self.reps or 0}


class HostRow(_Strict):
    device: Device
    op: Literal["launch", "copy_issue", "sync", "dispatch"]
    time_s: Stat  # per operation


class KernelMin(_Strict):
    time_s: Stat


class MembwRow(_Strict):
    device: Device
    bytes: Count  # bytes read + written
    time_s: Stat


class GemmRow(_Strict):
    device: Device
    n: Count  # an n x n x n matmul: 2 n^3 FLOP
    dtype: DTypeName
    time_s: Stat


class TransferRow(_Strict):
    bytes: Count
    pinned: bool
    h2d_s: Stat | None = None
    d2h_s: Stat | None = None

    @model_validator(mode="after")
    def _some(self) -> TransferRow:
        if self.h2d_s is None and self.d2h_s is None:
            raise ValueError("needs h2d_s or d2h_s")
        return self


class _Ffn(_Strict):
    @property
    def dt(self) -> str:
        return DTYPES[self.dtype]  # type: ignore[attr-defined]


class GpuFfnRow(_Ffn):
    model: str = ""
    d_model: Count
    d_ff: Count
    activation: Activation
    tokens: Count
    dtype: DTypeName
    time_s: Stat
    probe: bool = False  # a smaller shape timed only to separate overhead from bandwidth in the fit


class CpuFfnRow(_Ffn):
    model: str = ""
    d_model: Count | None = None  # the shape; taken from the model catalog when left out
    d_ff: Count | None = None
    activation: Activation | None = None
    tokens: Count
    dtype: DTypeName
    threads: Count
    time_s: Stat
    probe: bool = False


# a block's kernel-table key (sim/hw/kernel_keys.py): its kind, its shape, its dtype
BLOCK_KEY = r"^(attn:\d+x\d+x\d+x\d+|router:\d+x\d+x\d+|head:\d+x\d+|gather:\d+):(bf16|fp16|fp32)$"
BLOCK_TABLES = {"attn": "attention_gpu", "router": "router_gpu", "head": "head_gpu", "gather": "gather_gpu"}


class BlockRow(_Strict):
    """One dense block of a model (calibrate/blocks.py) at one token count."""

    device: Device
    key: Annotated[str, Field(pattern=BLOCK_KEY)]
    model: str = ""
    tokens: Count
    context: Annotated[int, Field(ge=0)] = 0  # attention: cached tokens per sequence
    ops: Count  # eager ops the block dispatches (a CPU device's tables take each one's dispatch out)
    threads: Count | None = None  # cpu
    time_s: Stat

    @model_validator(mode="after")
    def _context_of_attention(self) -> BlockRow:
        if self.key.startswith("attn:") != (self.context > 0):
            raise ValueError("attention blocks need a context (cached tokens per sequence), other blocks have none")
        return self


class Overlap(_Strict):
    bytes: Count  # of the H2D copy (pinned), on a second stream
    copy_s: Stat  # the copy alone
    compute20_s: Stat | None = None  # 20 calls of the expert whose weights are `bytes`, at 64 tokens, alone
    compute_s: Stat | None = None  # other compute (the method says what), alone
    both_s: Stat  # the copy and the compute together
    d2h_s: Stat | None = None  # a D2H copy of `bytes` alone
    h2d_d2h_s: Stat | None = None  # an H2D and a D2H copy of `bytes` together (two streams)

    @model_validator(mode="after")
    def _one_compute(self) -> Overlap:
        if (self.compute20_s is None) == (self.compute_s is None):
            raise ValueError("needs exactly one of compute20_s and compute_s")
        if (self.d2h_s is None) != (self.h2d_d2h_s is None):
            raise ValueError("d2h_s and h2d_d2h_s come together")
        return self


class Measurements(_Strict):
    machine: dict[str, str | int | float]
    method: dict[str, str] = {}
    device: Device = "cuda"
    gpu_ffn_timing: Literal["call", "gpu"] = "call"
    host: list[HostRow] = []
    kernel_min: KernelMin | None = None
    membw: list[MembwRow] = []
    gemm: list[GemmRow] = []
    transfer: list[TransferRow] = []
    gpu_ffn: list[GpuFfnRow] = []
    cpu_ffn: list[CpuFfnRow] = []
    blocks: list[BlockRow] = []
    overlap: Overlap | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Measurements:
        if not (self.transfer or self.gpu_ffn or self.cpu_ffn):
            raise ValueError("nothing to fit: no transfer, gpu_ffn or cpu_ffn rows")
        if self.device == "cpu" and (self.gpu_ffn or self.kernel_min or self.overlap):
            raise ValueError("a CPU measurement (device: cpu) has no gpu_ffn, kernel_min or overlap")
        if self.device == "cpu" and any(r.pinned for r in self.transfer):
            raise ValueError("a CPU measurement (device: cpu) has no pinned transfers (memcpy only)")
        _unique("transfer", ((r.bytes, r.pinned) for r in self.transfer), "bytes and pinned")
        _unique("gpu_ffn", ((r.d_model, r.d_ff, r.activation, r.dt, r.tokens, r.probe) for r in self.gpu_ffn),
                "shape, dtype, tokens and probe")
        _unique("cpu_ffn", ((r.model, r.d_model, r.d_ff, r.activation, r.dt, r.tokens, r.threads, r.probe)
                            for r in self.cpu_ffn), "model, shape, dtype, tokens, threads and probe")
        _unique("host", ((r.device, r.op) for r in self.host), "device and op")
        _unique("blocks", ((r.device, r.key, r.tokens, r.context, r.threads) for r in self.blocks),
                "device, key, tokens, context and threads")
        return self

    @property
    def date(self) -> str:
        return str(self.machine.get("date", ""))


def _unique(section: str, keys: Iterable[tuple], what: str) -> None:
    seen: set[tuple] = set()
    for i, k in enumerate(keys):
        if k in seen:
            raise ValueError(f"{section}[{i}] repeats an earlier row's {what}")
        seen.add(k)


# ---- reading and writing ------------------------------------------------------------------------------------
def _loc(loc: tuple[Any, ...]) -> str | None:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def measurements_from_dict(data: object, source: str | Path) -> Measurements:
    if not isinstance(data, dict):
        raise InputError(source, None, "a measurements file must be a JSON object")
    try:
        meas = Measurements.model_validate(data)
    except ValidationError as e:
        err = next((x for x in e.errors() if x["type"] == "extra_forbidden"), e.errors()[0])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (see 'Measurements files' in hwprofiles/README.md)"
        elif err["type"] not in ("missing",) and isinstance(err.get("input"), (int, float, str, bool)):
            msg = f"{msg} (got {err['input']!r})"
        raise InputError(source, _loc(err["loc"]), msg) from None
    for i, r in enumerate(meas.cpu_ffn):  # the shape comes from the row or from the catalog
        _cpu_shape(r, f"cpu_ffn[{i}]", source)
    return meas


def load_measurements(path: str | Path) -> Measurements:
    p = Path(path)
    if p.is_dir():
        raise InputError(p, None, "is a folder, not a measurements file")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(p, None, "measurements file not found") from None
    except UnicodeDecodeError:
        raise InputError(p, None, "not valid JSON (not UTF-8 text)") from None
    except OSError as e:
        raise InputError(p, None, f"cannot read ({e.strerror})") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise InputError(p, f"line {e.lineno}", f"not valid JSON ({e.msg})") from None
    except ValueError as e:  # NaN / Infinity
        raise InputError(p, None, f"not valid JSON ({e})") from None
    return measurements_from_dict(data, p)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def dumps(meas: Measurements) -> str:
    """JSON text of the measurements (indent 1, defaults left out: a file read and written back is unchanged)."""
    return json.dumps(meas.model_dump(mode="json", exclude_defaults=True), indent=1)


def write_measurements(meas: Measurements, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(dumps(meas), encoding="utf-8")
    return path


# ---- rows for fitting -----------------------------------------------------------------------------------------
def _cpu_shape(r: CpuFfnRow, where: str, source: str | Path) -> tuple[int, int, str]:
    if r.d_model is not None and r.d_ff is not None and r.activation is not None:
        return r.d_model, r.d_ff, r.activation
    if r.d_model is not None or r.d_ff is not None or r.activation is not None:
        raise InputError(source, where, "give all of d_model, d_ff and activation, or none (shape from the model)")
    from simmoe.models.catalog import CATALOG

    spec = CATALOG.get(r.model)
    if spec is None:
        raise InputError(source, f"{where}.model", f"unknown model {r.model!r} and no d_model/d_ff/activation "
                                                   "given: the expert's shape is unknown")
    return spec.d_model, spec.expert_d_ff, spec.activation


def _mats(activation: str) -> int:
    return 3 if activation in ("swiglu", "geglu") else 2


def _expert_row(device: str, d_model: int, d_ff: int, act: str, dt: str, tokens: int, st: Stat, probe: bool,
                threads: int, model: str) -> dict[str, Any]:
    m = _mats(act)
    return {"kind": "expert_probe" if probe else "expert_ffn", "device": device,
            "name": shape_key(d_model, d_ff, act, dt), "dtype": dt, "size_bytes": 0, "tokens": tokens,
            "flops": 2.0 * m * d_model * d_ff * tokens, "bytes": float(m * d_model * d_ff * DTYPE_BYTES[dt]),
            **st.us(), "threads": threads, "model": model, "context": 0, "ops": 0}


def _row(kind: str, device: str, name: str, st: Stat, **kw: Any) -> dict[str, Any]:
    row = {"kind": kind, "device": device, "name": name, "dtype": "", "size_bytes": 0, "tokens": 0, "flops": 0.0,
           "bytes": 0.0, **st.us(), "threads": 0, "model": "", "context": 0, "ops": 0}
    row.update(kw)
    return row


def to_frame(meas: Measurements) -> pd.DataFrame:
    """One row per measured point (COLUMNS; times in microseconds), the form the fits take."""
    dev = meas.device
    rows: list[dict[str, Any]] = [_row("host", r.device, r.op, r.time_s) for r in meas.host]
    if meas.kernel_min is not None:
        rows.append(_row("kernel_min", "cuda", "add1", meas.kernel_min.time_s))
    rows += [_row("membw", r.device, "copy", r.time_s, size_bytes=r.bytes // 2, bytes=float(r.bytes))
             for r in meas.membw]
    rows += [_row("gemm", r.device, f"matmul{r.n}", r.time_s, dtype=DTYPES[r.dtype], tokens=r.n,
                  flops=2.0 * r.n**3) for r in meas.gemm]
    for r in meas.transfer:
        for direction, st in (("h2d", r.h2d_s), ("d2h", r.d2h_s)):
            if st is not None:
                name = f"{direction}_{'pinned' if r.pinned else 'pageable'}"
                rows.append(_row("copy", dev, name, st, size_bytes=r.bytes, bytes=float(r.bytes)))
    rows += [_expert_row("cuda", r.d_model, r.d_ff, r.activation, r.dt, r.tokens, r.time_s, r.probe, 0, r.model)
             for r in meas.gpu_ffn]
    for r in meas.cpu_ffn:
        d, f, a = _cpu_shape(r, "cpu_ffn", "measurements")
        rows.append(_expert_row("cpu", d, f, a, r.dt, r.tokens, r.time_s, r.probe, r.threads, r.model))
    rows += [_row("block", r.device, r.key, r.time_s, dtype=r.key.rsplit(":", 1)[1], tokens=r.tokens,
                  threads=r.threads or 0, model=r.model, context=r.context, ops=r.ops) for r in meas.blocks]
    ov = meas.overlap
    if ov is not None:
        comp = ov.compute20_s or ov.compute_s
        assert comp is not None
        rows += [_row("overlap", "cuda", "copy_alone", ov.copy_s, size_bytes=ov.bytes),
                 _row("overlap", "cuda", "compute20_alone" if ov.compute20_s else "compute_alone", comp),
                 _row("overlap", "cuda", "overlapped", ov.both_s, size_bytes=ov.bytes)]
        if ov.d2h_s is not None and ov.h2d_d2h_s is not None:
            rows += [_row("overlap", "cuda", "d2h_alone", ov.d2h_s, size_bytes=ov.bytes),
                     _row("overlap", "cuda", "h2d_d2h_overlapped", ov.h2d_d2h_s, size_bytes=ov.bytes)]
    return pd.DataFrame(rows, columns=COLUMNS)


_KEY = re.compile(r"(\d+)x(\d+)x(\w+):(\w+)")


def _stat(r: pd.Series) -> dict[str, Any]:
    out: dict[str, Any] = {"median": float(r["median_us"]) / 1e6, "min": float(r["min_us"]) / 1e6,
                           "max": float(r["max_us"]) / 1e6}
    if int(r.get("reps", 0) or 0) >= 1:
        out["reps"] = int(r["reps"])
    return out


def from_frame(df: pd.DataFrame, *, device: str, machine: dict[str, Any], method: dict[str, str]) -> Measurements:
    """The measurements file of rows `calibrate/measure.py` took on this machine (the inverse of to_frame)."""
    data: dict[str, Any] = {"machine": machine, "method": method, "device": device, "host": [], "membw": [],
                            "gemm": [], "gpu_ffn": [], "cpu_ffn": [], "blocks": []}
    if device == "cuda":
        data["gpu_ffn_timing"] = "gpu"  # measure.py parks the stream on a spin kernel: GPU time only
    transfer: dict[tuple[int, bool], dict[str, Any]] = {}
    ov: dict[str, Any] = {}
    for _, r in df.iterrows():
        kind, dev = r["kind"], r["device"]
        if kind == "host":
            data["host"].append({"device": dev, "op": r["name"], "time_s": _stat(r)})
        elif kind == "kernel_min":
            data["kernel_min"] = {"time_s": _stat(r)}
        elif kind == "membw":
            data["membw"].append({"device": dev, "bytes": int(r["bytes"]), "time_s": _stat(r)})
        elif kind == "gemm":
            data["gemm"].append({"device": dev, "n": int(r["tokens"]), "dtype": r["dtype"], "time_s": _stat(r)})
        elif kind == "copy":
            direction, _, mem = str(r["name"]).partition("_")
            t = transfer.setdefault((int(r["size_bytes"]), mem == "pinned"),
                                    {"bytes": int(r["size_bytes"]), "pinned": mem == "pinned"})
            t[f"{direction}_s"] = _stat(r)
        elif kind in ("expert_ffn", "expert_probe"):
            m = _KEY.fullmatch(str(r["name"]))
            if m is None:  # pragma: no cover - measure.py writes shape keys
                raise ValueError(f"not a shape key: {r['name']!r}")
            row: dict[str, Any] = {"model": str(r["model"] or ""), "d_model": int(m.group(1)),
                                   "d_ff": int(m.group(2)), "activation": m.group(3), "tokens": int(r["tokens"]),
                                   "dtype": m.group(4)}
            if dev == "cpu":
                row["threads"] = int(r["threads"])
            row["time_s"] = _stat(r)
            if kind == "expert_probe":
                row["probe"] = True
            data["gpu_ffn" if dev == "cuda" else "cpu_ffn"].append(row)
        elif kind == "block":
            block: dict[str, Any] = {"device": dev, "key": str(r["name"]), "model": str(r["model"] or ""),
                                     "tokens": int(r["tokens"]), "ops": int(r["ops"])}
            if int(r["context"]):
                block["context"] = int(r["context"])
            if dev == "cpu":
                block["threads"] = int(r["threads"])
            block["time_s"] = _stat(r)
            data["blocks"].append(block)
        elif kind == "overlap":
            ov[str(r["name"])] = r
    if ov:
        data["overlap"] = {"bytes": int(ov["copy_alone"]["size_bytes"]), "copy_s": _stat(ov["copy_alone"]),
                           "compute_s": _stat(ov["compute_alone"]), "both_s": _stat(ov["overlapped"])}
        if "d2h_alone" in ov and "h2d_d2h_overlapped" in ov:
            data["overlap"].update(d2h_s=_stat(ov["d2h_alone"]), h2d_d2h_s=_stat(ov["h2d_d2h_overlapped"]))
    data["transfer"] = sorted(transfer.values(), key=lambda t: (t["bytes"], not t["pinned"]))
    return measurements_from_dict(data, "measurements")
