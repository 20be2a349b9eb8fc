"""The policy interface. Policies are decision objects: they never touch SimPy or time.

The engine owns time and resources and calls the hooks below. Kinds:

- cache (`CachePolicy`): admission/eviction within one partition of the expert cache (a layer's slots or
  the whole cache, depending on scope). Hooks in the spirit of libCacheSim: `find` (look-up; may update
  state on a hit), `insert`, `to_evict` (victim choice, no side effects), `evict`.
- prefetch (`PrefetchPolicy`): after a layer's routing is known, propose experts to copy ahead.
- placement (`PlacementPolicy`): where a missing expert is computed: on the GPU after a copy, or on the CPU.
- precision (`PrecisionPolicy`): the bit-width experts are stored and moved at (and its dequant cost).
- routing (`RoutingPolicy`): changes which experts serve a token (adaptive k, virtual experts); reports
  routing fidelity = the gate mass served by the intended experts.
- system (`SystemPolicy`): a named composition of the kinds above (e.g. `cpu-experts`).

Oracle policies set `reads_future = True`; they get the future through their context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError, model_validator

from simmoe.validation import STRICT, describe, input_error, tuple_from_list

Kind = Literal["cache", "prefetch", "placement", "precision", "routing", "system"]


class Options(BaseModel):
    """Typed policy options. Subclass per policy; unknown keys are rejected with the valid keys listed.

    Values are strict (simmoe.validation.STRICT): `slots_per_layer=yes` is not 1 and `cache_gb=nan` or
    `.inf` is not a size. A YAML list is accepted for a tuple-typed option."""

    model_config = STRICT

    @model_validator(mode="before")
    @classmethod
    def _lists_as_tuples(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: tuple_from_list(v) for k, v in data.items()}
        return data


def parse_options(cls: type[Options], raw: Mapping[str, Any], policy: str) -> Options:
    valid = sorted(cls.model_fields)

    def message(err: dict[str, Any]) -> str:
        if err["type"] == "extra_forbidden":
            return f"unknown option; valid options of {policy!r}: {', '.join(valid) or '(none)'}"
        return describe(err)

    try:
        return cls.model_validate(dict(raw))
    except ValidationError as e:
        raise input_error(e, f"policy {policy}", lambda loc: loc or "options", message) from None


class Policy:
    """Base of every policy: a name, a kind, a one-line summary, typed options.

    Optional hooks (a cache's `on_routing`, `admit`, `on_step`, `bind_routing`; a prefetcher's
    `bind_routing`) have no-op defaults; the planner calls one only when `overrides(hook)` says the class
    defines its own, so that policies without it pay nothing in the per-access loop (and gate scores are
    computed only for caches that read them).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[Kind]
    summary: ClassVar[str] = ""
    reference: ClassVar[str] = ""  # the paper or system the policy models
    reads_future: ClassVar[bool] = False
    Options: ClassVar[type[Options]] = Options

    @classmethod
    def overrides(cls, hook: str) -> bool:
        """Whether this class (or a base between it and the interface that declares `hook`) redefines it."""
        interface = next(b for b in reversed(cls.__mro__) if hook in b.__dict__)
        return getattr(cls, hook) is not getattr(interface, hook)

    @classmethod
    def reads_future_for(cls, options: Options) -> bool:
        """Whether this policy reads the future with these options (some do only in one mode)."""
        return cls.reads_future


@dataclass(frozen=True)
class CacheContext:
    """What a cache partition may know. `next_use[t]` (oracles only) is the access index of the next access
    to the same key after access t, or a large number when there is none."""

    capacity: int
    num_experts: int
    layers: tuple[int, ...]  # MoE-layer indices (0-based, trace order) this partition serves
    next_use: np.ndarray | None = None
    access_keys: np.ndarray | None = None  # oracles only: the key of every access t, in order


class CachePolicy(Policy):
    """One partition of the expert cache, holding at most `capacity` keys (key = layer * E + expert).

    `t` is the logical access time: the index of the access in the run's access sequence.
    """

    kind: ClassVar[Kind] = "cache"

    def __init__(self, ctx: CacheContext, options: Options) -> None:
        self.ctx = ctx
        self.capacity = ctx.capacity
        self.options = options

    def find(self, key: int, t: int) -> bool:  # pragma: no cover - interface
        """True on a hit. May update recency/frequency state (for hits, and for misses if it tracks them)."""
        raise NotImplementedError

    def insert(self, key: int, t: int) -> None:  # pragma: no cover - interface
        """Admit `key`; called only when there is room (the engine evicts first)."""
        raise NotImplementedError

    def to_evict(self, t: int) -> int:  # pragma: no cover - interface
        """The victim the policy would evict now. Must not change any state."""
        raise NotImplementedError

    def evict(self, key: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def __contains__(self, key: int) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def keys(self) -> Sequence[int]:  # pragma: no cover - interface
        raise NotImplementedError

    def on_routing(self, layer: int, experts: Sequence[int], scores: Sequence[float] | None) -> None:
        """Called once per MoE-layer step before its look-ups: the experts routed (first-appearance order) and
        their mean gate weight over the step's tokens (None when the trace has no gates). Default: ignored
        (the engine skips the call for policies that do not override it)."""

    def admit(self, key: int, t: int) -> bool:
        """Whether a missed key is cached; False = it is used from a staging buffer and not kept."""
        return True

    # True: `admit` is asked before the placement policy, and an admitted miss is copied to the GPU and
    # kept whatever the placement would say (a cache that decides its own swaps, e.g. DAOP's prefill swaps).
    claims_misses: ClassVar[bool] = False

    def preload(self) -> Sequence[int]:
        """Keys resident before the first access (loaded at start-up, no copy counted). Default: cold."""
        return ()

    def bind_routing(self, router: RoutingPolicy | None) -> None:
        """Called once before the run with the run's routing policy instance, after it rerouted the trace
        (None without one). For caches that follow a routing policy's state (`virtual-set` follows
        `virtual-experts`). Default: ignored (the engine skips the call for policies that do not override
        it)."""

    def on_step(self, rows: np.ndarray) -> None:
        """Called once per step, before its look-ups, with the trace rows the step serves. Default: ignored
        (the engine skips the call for policies that do not override it)."""

    # A policy that sizes itself: "all" = every expert of its partition, "none" = no cache at all.
    # None = the size comes from the options, or from the GPU memory left free.
    fixed_capacity: ClassVar[Literal["all", "none"] | None] = None


@dataclass(frozen=True)
class Access:
    """One expert needed by a layer step: the view prefetch and placement policies get."""

    layer: int  # MoE-layer index in the trace (0-based)
    expert: int
    tokens: int  # how many tokens of the step this expert serves
    t: int  # access index


@dataclass
class StepView:
    """Routing of the current step, as far as a non-oracle policy may see it at layer `layer`."""

    step: int
    kind: Literal["prefill", "decode"]
    experts_by_layer: list[np.ndarray]  # experts of each layer (unique, first-appearance order)
    tokens_by_layer: list[np.ndarray]
    predicted_by_layer: list[np.ndarray] | None = None  # trace.predicted, union over the step's tokens
    future_steps: Any = None  # oracles only: callable(step_offset) -> StepView or None
    rows: np.ndarray | None = None  # the trace rows the step serves (SwapMoE's set loader follows their sets)
    costs: Any = None  # the engine's cost model (cost-aware prefetchers: impact); None outside the engine


class PrefetchPolicy(Policy):
    kind: ClassVar[Kind] = "prefetch"

    def __init__(self, ctx: CacheContext, options: Options) -> None:
        self.ctx = ctx
        self.options = options

    def propose(self, view: StepView, layer: int) -> Sequence[tuple[int, int]]:  # pragma: no cover
        """(layer, expert) pairs to copy ahead, in priority order, once `layer`'s routing is known."""
        raise NotImplementedError

    def bind_routing(self, router: RoutingPolicy | None) -> None:
        """As CachePolicy.bind_routing: the run's routing policy instance (SwapMoE's loader follows its set).
        Default: ignored (the engine skips the call for policies that do not override it)."""

    def chunk_mb(self) -> float | None:
        """Transfer granularity this prefetcher asks for: its copies as preemptible chunks of this many MiB
        that a demand copy overtakes at a chunk boundary (ProMoE). None: whole, FIFO copies. The replay
        setting `prefetch_chunk_mb`, when given, overrides it."""
        return None


class PlacementPolicy(Policy):
    kind: ClassVar[Kind] = "placement"

    def __init__(self, options: Options) -> None:
        self.options = options

    def place(self, acc: Access, costs: Any) -> Literal["gpu", "cpu"]:  # pragma: no cover - interface
        """Where to compute an expert that missed the GPU cache. `costs` is the engine's cost model."""
        raise NotImplementedError

    def place_layer(self, hits: Sequence[Access], misses: Sequence[Access], costs: Any) -> list[str]:
        """Where to compute each of a layer's misses, knowing the whole layer (policies with `layer_wise`).
        `hits` are the layer's experts already on the GPU."""
        return [self.place(a, costs) for a in misses]

    def cpu_layers(self, num_layers: int) -> frozenset[int]:
        """MoE layers whose experts always run on the CPU: they get no GPU cache slots."""
        return frozenset()

    # Placements that never use the GPU cache (every routed expert on the CPU) set this.
    bypass_cache: ClassVar[bool] = False
    # Placements that decide a layer's misses together (place_layer) set this.
    layer_wise: ClassVar[bool] = False


class PrecisionPolicy(Policy):
    """Sets the precision experts are stored, copied and computed at."""

    kind: ClassVar[Kind] = "precision"

    def __init__(self, options: Options) -> None:
        self.options = options

    def apply(self, spec: Any) -> Any:  # pragma: no cover - interface
        """The ModelSpec with its experts at this precision (e.g. `expert_bits` set)."""
        raise NotImplementedError

    def dequant_flops_per_param(self) -> float:
        """Extra GPU/CPU work per expert weight per kernel to dequantise it on the fly."""
        return 0.0

    # ---- per-access bit-widths (nested / matryoshka precision). The engine uses these only for policies
    # that override `slot_bits`; every other precision keeps one bit-width for all experts.
    def slot_bits(self, experts: np.ndarray, gates: np.ndarray | None) -> np.ndarray | None:
        """Bits each (token, layer, slot) of the trace needs (int array shaped like `experts`; ignored where
        the expert is -1), or None: one precision for everything (`apply`)."""
        return None

    def levels(self) -> tuple[int, ...]:
        """The nested bit-widths, ascending: an expert resident at one level holds every lower level."""
        return ()

    def copy_bytes(self, spec: Any, have_bits: int, need_bits: int) -> int:
        """Bytes to copy to raise an expert from `have_bits` (0 = not resident) to `need_bits`."""
        raise NotImplementedError  # pragma: no cover - interface

    def weight_bytes(self, spec: Any, bits: int) -> int:
        """Bytes of one expert's weights read by a kernel computing at `bits` (its planes up to `bits`)."""
        return self.copy_bytes(spec, 0, bits)

    def io_order(self) -> Literal["hebf", "hottest", "sequential"]:
        """How a layer's experts and copies are ordered: "hebf" (hottest-expert-bit-first: hottest expert
        first, hits compute at once, the base planes of every missing expert are copied before the planes
        above them), "hottest" (hottest first, one whole copy per miss) or "sequential" (routing order, one
        whole copy per miss, as for one precision)."""
        return "sequential"


class RoutingPolicy(Policy):
    """Changes the routing itself before anything is looked up (a different model output: report fidelity)."""

    kind: ClassVar[Kind] = "routing"

    def __init__(self, options: Options) -> None:
        self.options = options

    def reroute(self, experts: np.ndarray, gates: np.ndarray | None) -> tuple[np.ndarray, float]:
        """(new experts [N, L, K] with -1 for dropped slots, routing fidelity in [0, 1])."""
        raise NotImplementedError  # pragma: no cover - interface


@dataclass(frozen=True)
class PolicySet:
    """A full configuration: one cache policy and optional prefetch / placement policies, with options."""

    cache: str = "lru"
    cache_options: Mapping[str, Any] = field(default_factory=dict)
    prefetch: str | None = None
    prefetch_options: Mapping[str, Any] = field(default_factory=dict)
    placement: str | None = None
    placement_options: Mapping[str, Any] = field(default_factory=dict)
    precision: str | None = None
    precision_options: Mapping[str, Any] = field(default_factory=dict)
    routing: str | None = None
    routing_options: Mapping[str, Any] = field(default_factory=dict)
    system: str | None = None  # the named system this set was expanded from, if any

    def describe(self) -> str:
        parts = [f"{self.system}:" if self.system else "", self.cache + _fmt_opts(self.cache_options)]
        if self.prefetch:
            parts.append(f"prefetch={self.prefetch}{_fmt_opts(self.prefetch_options)}")
        for kind in ("placement", "precision", "routing"):
            if getattr(self, kind):
                parts.append(f"{kind}={getattr(self, kind)}{_fmt_opts(getattr(self, kind + '_options'))}")
        return " ".join(p for p in parts if p)


def _fmt_opts(opts: Mapping[str, Any]) -> str:
    return "(" + ",".join(f"{k}={v}" for k, v in sorted(opts.items())) + ")" if opts else ""


def cache_size_options(options: Options, *extra: str) -> dict[str, Any]:
    """The cache sizing a system's options carry (scope, slots_per_layer, cache_gb, plus `extra` names), for
    its cache policy; unset (None) values are left out so that the cache's own defaults apply."""
    names = {"scope", "slots_per_layer", "cache_gb", *extra}
    return options.model_dump(include=names & set(type(options).model_fields), exclude_none=True)


class SystemPolicy(Policy):
    """A named composition (e.g. a published system) that expands into a PolicySet, and names the runtime
    profile the system runs on (sim/runtime/bundled/) when it is one; `--runtime` overrides it."""

    kind: ClassVar[Kind] = "system"
    runtime: ClassVar[str | None] = None
    # a system without options of its own: the PolicySet fields it always expands to
    composition: ClassVar[dict[str, Any] | None] = None

    @classmethod
    def expand(cls, options: Options) -> PolicySet:
        if cls.composition is None:  # pragma: no cover - interface
            raise NotImplementedError
        return PolicySet(**cls.composition)


class CacheSize(Options):
    """A cache size: slots per MoE layer, or a byte budget in GiB. With neither, the cache takes the GPU memory
    left after the dense weights, KV cache and activations. Named systems that size their cache subclass it
    (and pass it on with `cache_size_options`), so the sizes validate the same everywhere."""

    slots_per_layer: int | None = Field(None, ge=0)
    cache_gb: float | None = Field(None, ge=0)  # GiB; finite (strict options)


class CacheOptions(CacheSize):
    """Sizing shared by every cache policy: per-layer slots, or a global cache of a byte budget (split evenly
    across layers when scope=layer)."""

    scope: Literal["layer", "global"] = "layer"
