"""Hardware profiles: a strict YAML schema (units in key names, unknown keys rejected).

A profile describes one machine: the GPU, the host thread that launches work on it, the PCIe link, the CPU
and optionally an NVMe tier. `source` says whether the figures come from a datasheet or from `simmoe
calibrate`; calibrated profiles may carry measured kernel tables that replace the roofline estimates.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from simmoe.errors import InputError
from simmoe.hw.topology import TopologySpec
from simmoe.validation import STRICT, Figure, FigureOrZero, describe, first_error
from simmoe.yamlio import load_yaml

# Numbers go through simmoe.validation (strict types, finite, within [1e-6, 1e9] of their unit).
Pos = Figure
NonNeg = FigureOrZero
Frac = Annotated[float, Field(gt=0, le=1)]


# Names accepted as keys of gpu.peak_tflops (a closed set, so that a typo such as `bf61` is an error).
PeakDtype = Literal["fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8", "fp4", "int4"]


class _Strict(BaseModel):
    # STRICT: `.inf` for a bandwidth would make every copy free, `true` is not 1 GB/s; rejected like a negative.
    model_config = STRICT


class GpuSpec(_Strict):
    name: str
    memory_gib: Pos
    reserved_gib: NonNeg = 0.75  # CUDA context, allocator slack, workspace
    hbm_gbps: Pos
    # Dense tensor-core peaks by dtype name (bf16, fp16, fp8, int8, fp32), TFLOP/s.
    peak_tflops: Annotated[dict[PeakDtype, Pos], Field(min_length=1)]
    matmul_efficiency: Frac = 0.7  # achieved fraction of peak for large GEMMs
    membw_efficiency: Frac = 0.8  # achieved fraction of hbm_gbps when streaming weights
    kernel_min_us: NonNeg = 3.0  # the shortest kernel's duration on the GPU
    # host and GPU share DRAM (Jetson, Apple): experts are read in place, never copied; a replay needs every
    # expert resident in that memory (`--policy resident`) or on the CPU
    unified_memory: bool = False
    # the "GPU" is the host's own cores (a CPU profile from `calibrate --as-device`): the host thread runs each
    # kernel itself and waits for it; copies are memcpys on that thread
    executes_on_host: bool = False
    sm_count: int | None = Field(None, ge=1)

    @field_validator("reserved_gib")
    @classmethod
    def _reserved_below_memory(cls, v: float, info: ValidationInfo) -> float:
        mem = info.data.get("memory_gib")  # absent when memory_gib itself failed validation
        if mem is not None and v >= mem:
            raise ValueError(f"must be below gpu.memory_gib ({mem:g}), got {v:g}")
        return v


class HostSpec(_Strict):
    """The host thread that drives the GPU: what launching work costs it. How many launches a step makes is
    the runtime's (sim/runtime/); these are the machine's costs per launch."""

    launch_overhead_us: NonNeg = 8.0  # host time of one eager PyTorch op launched from Python
    # host time of one kernel launched from C++ (llama.cpp without graphs); estimate: a raw cuLaunchKernel takes
    # ~1.3 us (meta-pytorch/tritonbench PR #1016), plus the framework's node dispatch
    native_launch_us: NonNeg = 3.0
    # host time to replay one captured CUDA graph (a whole step's kernels); estimate: cudaGraphLaunch costs a few
    # microseconds whatever the graph holds (NVIDIA, "Getting Started with CUDA Graphs")
    graph_launch_us: NonNeg = 10.0
    copy_issue_us: NonNeg = 6.0  # host time to issue one async copy
    sync_us: NonNeg = 15.0  # host time for a synchronising read-back (.cpu(), .item())


class CopyTable(_Strict):
    """Measured time of one copy direction and memory kind against its size (calibrated profiles).

    The cost model interpolates it linearly; below the smallest size a copy takes the smallest size's time
    (the latency floor); beyond the largest it grows at the last segment's rate. Times must not decrease
    with size (calibration makes noisy medians monotone before writing them), so neither can the model's.
    """

    bytes: list[Annotated[int, Field(ge=1)]]
    us: list[Pos]

    @model_validator(mode="after")
    def _check(self) -> CopyTable:
        if len(self.bytes) != len(self.us) or len(self.bytes) < 2:
            raise ValueError("bytes and us must be of equal length, with at least 2 sizes")
        if any(b <= a for a, b in zip(self.bytes, self.bytes[1:], strict=False)):
            raise ValueError("bytes must be strictly increasing")
        if any(b < a for a, b in zip(self.us, self.us[1:], strict=False)):
            raise ValueError("us must not decrease with size (a larger copy cannot take less time)")
        return self


# Direction and memory kind of a measured copy table (a closed set, so that a typo is an error).
CopyKind = Literal["h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable"]


class PcieSpec(_Strict):
    link: str = ""  # e.g. "PCIe 4.0 x16" (documentation)
    h2d_pinned_gbps: Pos
    d2h_pinned_gbps: Pos
    h2d_pageable_gbps: Pos
    d2h_pageable_gbps: Pos
    latency_us: NonNeg = 10.0
    copy_engines: int = Field(2, ge=1, le=8)  # 1: H2D and D2H share one DMA engine
    # Measured copy time vs size; where a table is given it replaces latency_us + bytes / bandwidth.
    copy_tables: dict[CopyKind, CopyTable] = {}


class CpuSpec(_Strict):
    name: str
    cores: int = Field(ge=1)
    memory_gib: Pos
    memory_gbps: Pos
    peak_gflops: Pos  # dense GEMM peak at the experts' working precision, all cores
    matmul_efficiency: Frac = 0.5
    membw_efficiency: Frac = 0.6
    expert_overhead_us: NonNeg = 30.0  # fixed cost per expert call (thread-pool dispatch)


class NvmeSpec(_Strict):
    """The SSD that holds the model's files: read when experts do not fit host memory (sim/engine/tiers.py,
    docs/tiers.md). A read of n bytes is split into requests of `request_kib`, `queue_depth` of them in flight:
    per request latency_us + request / read_gbps, throughput min(read_gbps, queue_depth x request / that)."""

    read_gbps: Pos  # sustained sequential read bandwidth of the drive
    latency_us: NonNeg = 80.0  # service time of one small (4 KiB) read at queue depth 1, minus its transfer
    # requests the reader keeps in flight, and their size. Defaults: 128 KiB at QD32, the conditions under
    # which consumer NVMe sequential-read figures are measured (KitGuru's "128KB Sequential" at QD32, e.g. its
    # Samsung 970 EVO review), so a large read reaches read_gbps
    queue_depth: int = Field(32, ge=1, le=65535)
    request_kib: Pos = 128.0
    # GPUDirect Storage: an expert missing from host memory is read straight into GPU memory (cuFile), not
    # through a host buffer and an H2D copy
    gpudirect: bool = False


class KernelTable(_Strict):
    """Measured time of one kernel shape over token counts (interpolated linearly, extrapolated by slope)."""

    tokens: list[Annotated[int, Field(ge=1)]]
    us: list[Pos]

    @model_validator(mode="after")
    def _check(self) -> KernelTable:
        if len(self.tokens) != len(self.us) or not self.tokens:
            raise ValueError("tokens and us must be non-empty and of equal length")
        if any(b <= a for a, b in zip(self.tokens, self.tokens[1:], strict=False)):
            raise ValueError("tokens must be strictly increasing")
        return self


class AttentionTable(_Strict):
    """Measured time of an attention block over token counts (columns) and cached tokens per new token (rows:
    `context`), interpolated linearly in both; beyond the last context it grows at the last two rows' rate."""

    tokens: list[Annotated[int, Field(ge=1)]]
    context: list[Annotated[int, Field(ge=1)]]
    us: list[list[Pos]]  # one row per context, one column per token count

    @model_validator(mode="after")
    def _check(self) -> AttentionTable:
        if not self.tokens or not self.context:
            raise ValueError("tokens and context must be non-empty")
        for name in ("tokens", "context"):
            v = getattr(self, name)
            if any(b <= a for a, b in zip(v, v[1:], strict=False)):
                raise ValueError(f"{name} must be strictly increasing")
        if len(self.us) != len(self.context) or any(len(r) != len(self.tokens) for r in self.us):
            raise ValueError("us needs one row per context, each with one time per token count")
        return self


class KernelTables(_Strict):
    """Calibrated kernel times. Expert tables are keyed by expert shape 'd_model x d_ff x activation : dtype';
    the blocks of the dense part by the keys of sim/hw/kernel_keys.py ('attn:...', 'router:...', 'head:...',
    'gather:...'). A table is the device's time (the host's launches are the runtime's and modelled apart)
    of all of the block's kernels together, and replaces the block's roofline estimate."""

    expert_ffn_gpu: dict[str, KernelTable] = {}
    expert_ffn_cpu: dict[str, KernelTable] = {}
    attention_gpu: dict[str, AttentionTable] = {}  # pre-norm, projections, KV write and read, attention, residual
    router_gpu: dict[str, KernelTable] = {}  # post-attention norm, gate, softmax, top-k
    head_gpu: dict[str, KernelTable] = {}  # final norm, lm_head, argmax (tokens: the sampled rows)
    gather_gpu: dict[str, KernelTable] = {}  # an eager expert's gather, gate weighting and scatter-add


class FigureOrigin(_Strict):
    """Where one figure (or a whole section) of a calibrated profile comes from."""

    # measured: read off one measurement (or the machine); fitted: a fit over measurements; borrowed: taken
    # from another profile or the schema's defaults; assumed: a stated modelling choice, not measured.
    how: Literal["measured", "fitted", "borrowed", "assumed"]
    source: str = Field(min_length=1)  # which measurement, which fit, which profile


class CalibrationInfo(_Strict):
    date: str
    machine: dict[str, str] = {}
    residuals: dict[str, float] = {}  # fit name -> relative RMS residual
    measurements: str = ""  # raw measurements (JSON, `simmoe calibrate --from`), relative to the profile
    # dotted figure path ('pcie.h2d_pinned_gbps', or a section such as 'host') -> its origin
    provenance: dict[str, FigureOrigin] = {}


class HwProfile(_Strict):
    name: str
    description: str = ""
    source: Literal["datasheet", "calibrated"]
    references: list[str] = []
    price_usd_per_hour: NonNeg | None = None
    price_source: str = Field("", validate_default=True)  # where the price comes from (list price, date)
    gpu: GpuSpec
    host: HostSpec = HostSpec()
    pcie: PcieSpec
    cpu: CpuSpec
    nvme: NvmeSpec | None = None
    # several GPUs (each `gpu`) and their links; absent: one GPU (sim/hw/topology.py)
    topology: TopologySpec | None = None
    kernels: KernelTables = KernelTables()
    calibration: CalibrationInfo | None = Field(None, validate_default=True)

    @field_validator("price_source")
    @classmethod
    def _price_needs_source(cls, v: str, info: ValidationInfo) -> str:
        if info.data.get("price_usd_per_hour") is not None and not v.strip():
            raise ValueError("a price_usd_per_hour needs a price_source saying where it comes from "
                             "(a cloud list price and its date, or an amortised purchase estimate)")
        return v

    @field_validator("calibration")
    @classmethod
    def _calibrated_needs_info(cls, v: CalibrationInfo | None, info: ValidationInfo) -> CalibrationInfo | None:
        if v is None and info.data.get("source") == "calibrated":
            raise ValueError("a calibrated profile needs a calibration: section (date, machine)")
        return v

    @field_validator("calibration")
    @classmethod
    def _provenance_covers_figures(cls, v: CalibrationInfo | None, info: ValidationInfo) -> CalibrationInfo | None:
        if v is None:
            return v
        nodes, leaves = figure_paths(info.data)
        for key in v.provenance:
            if key not in nodes:
                close = difflib.get_close_matches(key, sorted(nodes), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"provenance: {key!r} names no figure of this profile{hint}")
        if info.data.get("source") == "calibrated":
            missing = [f for f in leaves if not _covered(f, v.provenance)]
            if missing:
                shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
                raise ValueError(f"provenance: no origin stated for {shown} (a calibrated profile says of every "
                                 "figure whether it was measured, fitted, borrowed or assumed, and from where)")
        return v

    @property
    def num_gpus(self) -> int:
        return self.topology.gpus if self.topology is not None else 1

    @property
    def gpu_memory_bytes(self) -> int:
        return int(self.gpu.memory_gib * 2**30)

    @property
    def usable_gpu_bytes(self) -> int:
        return int((self.gpu.memory_gib - self.gpu.reserved_gib) * 2**30)

    def peak_flops(self, dtype: str) -> float:
        """GPU dense peak FLOP/s for `dtype`, falling back to bf16/fp16 for narrower weight-only formats."""
        pk = self.gpu.peak_tflops
        for name in (dtype, "bf16", "fp16"):
            if name in pk:
                return pk[name] * 1e12
        return max(pk.values()) * 1e12


# ---- provenance -------------------------------------------------------------------------------------------
FIGURE_SECTIONS = ("gpu", "host", "pcie", "cpu", "nvme", "topology", "kernels", "price_usd_per_hour")


def figure_paths(data: dict[str, Any]) -> tuple[set[str], list[str]]:
    """(every dotted path a provenance key may name, the leaf figures that need an origin) of a profile's
    sections in `data` (field name -> validated value). Lists (a table's columns) are leaves; None is absent."""
    nodes: set[str] = set()
    leaves: list[str] = []

    def walk(path: str, value: Any) -> None:
        if value is None:
            return
        nodes.add(path)
        if isinstance(value, dict):
            for k, x in value.items():
                walk(f"{path}.{k}", x)
        else:
            leaves.append(path)

    for key in FIGURE_SECTIONS:
        value = data.get(key)
        walk(key, value.model_dump() if isinstance(value, BaseModel) else value)
    return nodes, leaves


def _covered(path: str, provenance: dict[str, Any]) -> bool:
    """A figure is covered by an entry for itself or for a section above it."""
    while True:
        if path in provenance:
            return True
        if "." not in path:
            return False
        path = path.rsplit(".", 1)[0]


def origins(profile: HwProfile) -> dict[str, tuple[str, str]]:
    """Leaf figure -> (how, source) by the nearest provenance entry (figures without one are left out)."""
    prov = profile.calibration.provenance if profile.calibration else {}
    _, leaves = figure_paths({k: getattr(profile, k) for k in FIGURE_SECTIONS})
    out: dict[str, tuple[str, str]] = {}
    for leaf in leaves:
        path = leaf
        while path not in prov and "." in path:
            path = path.rsplit(".", 1)[0]
        if path in prov:
            out[leaf] = (prov[path].how, prov[path].source)
    return out


# ---- loading ------------------------------------------------------------------------------------------------
def builtin_dir() -> Path:
    return Path(str(resources.files("simmoe.hwprofiles")))


def list_profiles() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def resolve_profile_path(name_or_path: str | Path) -> Path:
    """`--hw` takes a built-in profile name or a path to a YAML file.

    A path is anything ending in .yaml/.yml, containing a path separator, or naming an existing file;
    anything else is a built-in profile name (so a folder that happens to be called `rtx3090` in the
    working directory does not hide the built-in profile).
    """
    s = str(name_or_path)
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or "/" in s or os.sep in s or p.is_file():
        if p.is_dir():
            raise InputError(p, None, "is a folder, not a profile file")
        if not p.is_file():
            raise InputError(p, None, "profile file not found")
        return p
    cand = builtin_dir() / f"{name_or_path}.yaml"
    if not cand.is_file():
        raise InputError(str(name_or_path), None,
                         f"no such hardware profile; built-in: {', '.join(list_profiles())}")
    return cand


def _date_to_str(obj: object) -> object:
    # YAML turns 2026-11-23 into a date; the schema keeps dates as strings.
    if isinstance(obj, dict):
        return {k: _date_to_str(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_date_to_str(v) for v in obj]
    if isinstance(obj, (_dt.date, _dt.datetime)):
        return obj.isoformat()
    return obj


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section that holds the key at `loc` (for a did-you-mean hint)."""
    model: Any = HwProfile
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)
                      and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def profile_from_dict(data: object, source: str | Path) -> HwProfile:
    if not isinstance(data, dict):
        raise InputError(source, None, "a profile must be a YAML mapping")
    try:
        return HwProfile.model_validate(_date_to_str(data))
    except ValidationError as e:
        err = first_error(e)  # a misspelt key also makes the correctly spelt one "missing": it comes first
        parts = [str(x) for x in err["loc"] if x != "[key]"]
        loc = ".".join(parts) or None
        msg = describe(err)
        if "[key]" in err["loc"]:  # a dict key outside its closed set (gpu.peak_tflops dtype names)
            msg = f"unknown key; {msg}"
        elif err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see hwprofiles/README.md for the schema)"
            close = difflib.get_close_matches(str(err["loc"][-1]), _known_keys(err["loc"]), n=1)
            if close:
                msg = f"unknown key; did you mean {close[0]!r}? (see hwprofiles/README.md for the schema)"
        shown = err.get("input")
        if err["type"] not in ("missing", "extra_forbidden") and "[key]" not in err["loc"] \
                and isinstance(shown, (int, float, str, bool)) and ", got " not in msg:
            msg = f"{msg} (got {shown!r})"
        raise InputError(source, loc, msg) from None


def load_profile(name_or_path: str | Path) -> HwProfile:
    path = resolve_profile_path(name_or_path)
    return profile_from_dict(load_yaml(path, "profile file"), path)


def dump_profile(profile: HwProfile) -> str:
    data = profile.model_dump(exclude_defaults=False)
    if data.get("topology") is None:  # one GPU: written as before the section existed
        data.pop("topology", None)
    return yaml.safe_dump(data, sort_keys=False)
