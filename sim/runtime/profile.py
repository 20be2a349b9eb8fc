"""Runtime profiles: the software that runs the model, beside the hardware profile (the machine) and the
policy set (what to cache, prefetch, place).

A runtime profile says how many kernels each part of a step launches and how (eager Python, native code,
captured CUDA graphs), what the host does besides (bookkeeping, synchronising read-backs), in which order a
layer's experts are looked up, loaded and computed, how experts are copied (unit, stream, host memory, write
back) and which weight formats are stored and computed. Figures that depend on the machine (the cost of one
launch, one sync, a copy) stay in the hardware profile; the runtime says how many of them a step incurs.

Every figure of a bundled runtime says where it comes from (the framework's source code, a microbenchmark,
a paper) in a comment; docs/runtimes/ holds the derivations. Validation is as strict as hardware profiles'
(unknown keys, wrong types, non-finite numbers are one-line errors naming the file and the field).
"""

from __future__ import annotations

import difflib
import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from simmoe.errors import InputError, param_ref
from simmoe.runtime.formats import FORMATS, WeightFormat, get_format
from simmoe.validation import STRICT, AsTuple, FigureOrZero, input_error
from simmoe.yamlio import load_yaml, scalar

Count = Annotated[int, Field(ge=0, le=100_000)]


class _Strict(BaseModel):
    model_config = STRICT


class RuntimeHost(_Strict):
    """What the host thread spends, beyond launching kernels and issuing copies."""

    # eager: each kernel costs the hardware profile's host.launch_overhead_us (an eager PyTorch op from Python);
    # native: host.native_launch_us (a launch from C++, no Python)
    launch: Literal["eager", "native"] = "eager"
    # each launch costs this many times the hardware's launch cost: a stack whose ops carry more Python than a
    # bare eager op (module calls, hooks, an older PyTorch) costs more per op
    launch_scale: float = Field(1.0, ge=0.1, le=100.0)
    # steps of at most this many tokens replay captured CUDA graphs: one host.graph_launch_us per step instead of
    # a launch per kernel (0: no graphs)
    graphs_max_tokens: Count = 0
    per_expert_us: FigureOrZero = 0.0  # per expert call: Python bookkeeping, launches slower than an eager op
    per_layer_us: FigureOrZero = 0.0  # per transformer layer, before its attention (launches slower than eager ops)
    per_moe_layer_us: FigureOrZero = 0.0  # per MoE layer, after its routing: routing bookkeeping, hooks
    per_step_us: FigureOrZero = 0.0  # per step: scheduler, sampling and stopping logic outside kernels
    per_copy_us: FigureOrZero = 0.0  # per expert copy: allocator and hook work beyond issuing it
    # synchronising read-backs (.item(), .tolist(), nonzero): the host waits for the compute stream to drain
    syncs_per_moe_layer: Count = 1  # the routing to the host, before the experts
    syncs_per_expert: Count = 0  # before each expert's kernels (torch.where, .tolist(), ModuleList[tensor])
    syncs_per_step: int = Field(1, ge=1, le=1000)  # the sampled token to the host (a step ends with one)


class RuntimeKernels(_Strict):
    """Kernels each part launches (for the host's launch cost and the GPU's per-kernel floor)."""

    per_attention: Count = 12  # one attention block with its norms and residual adds
    per_router: Count = 4  # the gate and top-k of a MoE layer
    per_expert: Count = 6  # one routed expert called from a loop (gathers, GEMMs, activation, weighting, scatter)
    # more launches per expert in steps of more than one token, where a loop gathers the expert's tokens and
    # scatters its output back (index_select, weighting, index_add_) instead of adding one row
    per_expert_gather: Count = 0
    # a fused MoE implementation (llama.cpp MUL_MAT_ID, vLLM fused_moe): launches per MoE layer for all of its
    # GPU experts together (then per_expert is 0: no per-expert launches)
    per_moe_layer: Count = 0
    per_dense_ffn: Count = 4  # a dense FFN or shared-experts block
    per_step: Count = 6  # embedding, final norm, lm_head, sampling
    # the KV a decode step's attention reads: each sequence its own (ragged: paged attention, varlen kernels),
    # or every sequence padded to the batch's longest under a mask (a padded batch, as HF generate runs one)
    attention: Literal["ragged", "padded"] = "ragged"

    @model_validator(mode="after")
    def _loop_or_fused(self) -> RuntimeKernels:
        if (self.per_expert > 0) == (self.per_moe_layer > 0):
            raise ValueError("give per_expert (an expert loop) or per_moe_layer (a fused MoE kernel), not both "
                             "and not neither")
        if self.per_expert_gather and not self.per_expert:
            raise ValueError("per_expert_gather adds to an expert loop's launches: a fused MoE has none")
        return self

    @property
    def fused(self) -> bool:
        return self.per_moe_layer > 0


class RuntimeExperts(_Strict):
    """The order a layer's experts are looked up, loaded and computed in, and how they are copied."""

    order: Literal["appearance", "index"] = "appearance"  # first appearance over the step's rows, or expert id
    # at-use: each expert looked up (and loaded) when its turn comes; layer: the whole layer looked up first and
    # its hits run before its misses (a loader that yields resident experts first)
    lookup: Literal["at-use", "layer"] = "at-use"
    # with lookup layer: the copies of this many misses are issued before the layer's first expert runs
    issue_ahead: Count = 0
    # routed: only routed experts are copied; layer: every expert of the layer is copied each time the layer
    # runs (a whole module's parameters gathered before its forward: ZeRO-3, accelerate-style offload)
    fetch: Literal["routed", "layer"] = "routed"
    copies_per_expert: int = Field(1, ge=1, le=64)  # copy unit: 1 per expert, 3 per SwiGLU matrix, ...
    copy_stream: Literal["separate", "compute"] = "separate"  # compute: copies queue with the kernels
    # prefetch copies: on a copy stream of their own (separate), or the way demand copies go (copy: their
    # stream, memory, unit and write-back)
    prefetch_stream: Literal["separate", "copy"] = "separate"
    host_memory: Literal["pinned", "pageable"] = "pinned"  # pageable copies are slower and block the host
    writeback: bool = False  # an evicted expert is copied back to the host before its buffer is reused

    @model_validator(mode="after")
    def _ahead_needs_layer_lookup(self) -> RuntimeExperts:
        if self.issue_ahead and self.lookup != "layer":
            raise ValueError("issue_ahead needs lookup: layer (misses are only known ahead when the layer is "
                             "looked up first)")
        return self


class RuntimeWeights(_Strict):
    """Weight formats (see sim/runtime/formats.py)."""

    # attention, router, shared experts and dense FFNs (embeddings stay in the model's dtype); none: the model's
    dense: str | None = None
    experts: str | None = None  # routed experts: GPU cache, copies, GPU kernels; none: the model's own
    cpu_experts: str | None = None  # what CPU expert kernels read (default: as `experts`)

    @field_validator("dense", "experts", "cpu_experts")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None and v not in FORMATS:
            raise ValueError(f"unknown weight format {v!r}; known: {', '.join(FORMATS)}")
        return v


class RuntimeCpu(_Strict):
    """Experts computed on the CPU."""

    per_call_us: FigureOrZero | None = None  # dispatch per expert call (default: the hardware's expert_overhead_us)


class RuntimeProfile(_Strict):
    name: str
    description: str = ""
    # code: figures derived from the framework's source code and microbenchmarks; generic: simmoe's own model
    source: Literal["code", "generic"]
    references: Annotated[tuple[str, ...], AsTuple] = ()
    host: RuntimeHost = RuntimeHost()
    kernels: RuntimeKernels = RuntimeKernels()
    experts: RuntimeExperts = RuntimeExperts()
    weights: RuntimeWeights = RuntimeWeights()
    cpu: RuntimeCpu = RuntimeCpu()

    def format(self, part: Literal["dense", "experts"]) -> WeightFormat | None:
        """The weight format of `part`, or None: the model's own precision."""
        name = getattr(self.weights, part)
        return None if name is None else get_format(name, self.name, f"weights.{part}")


# ---- loading ------------------------------------------------------------------------------------------------
DEFAULT = "generic"


def builtin_dir() -> Path:
    return Path(str(resources.files("simmoe.runtime"))) / "bundled"


def list_runtimes() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def resolve_runtime_path(name_or_path: str | Path) -> Path:
    """`--runtime` takes a bundled runtime name or a path to a YAML file (as `--hw` does)."""
    s = str(name_or_path)
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or "/" in s or os.sep in s or p.is_file():
        if p.is_dir():
            raise InputError(p, None, "is a folder, not a runtime profile")
        if not p.is_file():
            raise InputError(p, None, "runtime profile file not found")
        return p
    cand = builtin_dir() / f"{s}.yaml"
    if not cand.is_file():
        close = difflib.get_close_matches(s, list_runtimes(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(None, None, f"no such runtime {s!r}{hint} Bundled: {', '.join(list_runtimes())}",
                         param="runtime")
    return cand


def runtime_from_dict(data: object, source: str | Path) -> RuntimeProfile:
    if not isinstance(data, dict):
        raise InputError(source, None, "a runtime profile must be a YAML mapping")
    try:
        return RuntimeProfile.model_validate(data)
    except ValidationError as e:
        raise input_error(e, str(source)) from None


def load_runtime(name_or_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RuntimeProfile:
    """A bundled runtime (default: `generic`) or a YAML file, with `section.key=value` overrides applied."""
    path = resolve_runtime_path(name_or_path or DEFAULT)
    data = load_yaml(path, "runtime profile")
    if overrides:
        data = apply_overrides(data, overrides, None, param="runtime_opts")
    return runtime_from_dict(data, path if not overrides else f"{path} with {param_ref('runtime_opts')}")


def apply_overrides(data: Any, overrides: dict[str, Any], source: str | None,
                    param: str | None = None) -> dict[str, Any]:
    """`{"experts.order": "index"}` applied to a profile's mapping (a copy); values given as text are read as
    YAML scalars. Keys must name a field of the schema."""
    if not isinstance(data, dict):
        raise InputError(source, None, "the runtime profile is not a mapping")
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for key, value in overrides.items():
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in SECTIONS or parts[1] not in SECTIONS[parts[0]].model_fields:
            known = [f"{s}.{f}" for s, m in SECTIONS.items() for f in m.model_fields]
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "keys are SECTION.FIELD"
            raise InputError(source, key, f"unknown runtime field; {hint}", param=param)
        section = out.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise InputError(source, key, f"{parts[0]} is not a mapping in the profile", param=param)
        section[parts[1]] = scalar(value) if isinstance(value, str) else value
    return out


SECTIONS: dict[str, type[BaseModel]] = {"host": RuntimeHost, "kernels": RuntimeKernels, "experts": RuntimeExperts,
                                        "weights": RuntimeWeights, "cpu": RuntimeCpu}


def dump_runtime(rt: RuntimeProfile) -> str:
    data = rt.model_dump()
    data["references"] = list(data["references"])
    return yaml.safe_dump(data, sort_keys=False)
