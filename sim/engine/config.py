"""Replay configuration: how a trace is played (batching, memory kind, streams, engine, arrivals).

A frozen, strict pydantic model (simmoe.validation.STRICT): `ReplayConfig(batch=4)`, attribute access, and
every bad value is an InputError naming the setting as a parameter (`batch: must be >= 1, got 0` from Python
or a sweep spec; the CLI prints the same error with its flag, `--batch: ...`: simmoe.errors). A setting that
would have no effect (`rate` without poisson or gamma arrivals) is an error too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, ValidationError, model_validator

from simmoe.errors import InputError, param_ref
from simmoe.validation import STRICT, ChunkMiB, describe, first_error, tuple_from_list

PosInt = Annotated[int, Field(ge=1)]
PosReal = Annotated[float, Field(gt=0)]  # finite: STRICT rejects NaN and infinity

# Arrivals whose draws use --rate, --seed (and --cv for gamma).
DRAWN = ("poisson", "gamma")


def flag(name: str) -> str:
    """The command-line flag of a ReplayConfig field."""
    return "--" + name.replace("_", "-")


def _window(v: Any) -> Any:
    """'START:STOP' (the command line's --timeline-steps; either end may be left out) -> (START, STOP)."""
    if not isinstance(v, str):
        return tuple_from_list(v)
    a, sep, b = v.partition(":")
    try:
        lo, hi = int(a or 0), int(b) if b else 10**12
    except ValueError:
        raise ValueError(f"expected START:STOP step numbers, got {v!r}") from None
    if not sep:
        raise ValueError(f"expected START:STOP step numbers, got {v!r}")
    return lo, hi


def _ordered(v: tuple[int, int] | None) -> tuple[int, int] | None:
    if v is not None and v[1] <= v[0]:
        raise ValueError(f"must have START < STOP in START:STOP, got {v[0]}:{v[1]}")
    return v


# [start, stop) steps; 'START:STOP' text is read as that pair
Window = Annotated[tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=1)]], BeforeValidator(_window),
                   AfterValidator(_ordered)]


class ReplayConfig(BaseModel):
    model_config = STRICT

    batch: PosInt = Field(1, description="concurrent requests in the decode batch")
    prefill_chunk: PosInt | None = Field(None, description="prefill rows per step (default: a request's whole "
                                                           "prompt in one step)")
    # given, these override the runtime profile's choice
    host_memory: Literal["pinned", "pageable"] | None = Field(
        None, description="host memory holding offloaded experts (default: the runtime's)")
    copy_stream: Literal["separate", "compute"] | None = Field(
        None, description="stream expert copies are issued on (default: the runtime's)")
    engine: Literal["fast", "simpy"] = Field("fast", description="fast recurrence, or one SimPy event per kernel "
                                                                 "(the slow reference)")
    staging_buffers: PosInt = Field(2, description="expert buffers for policies without a cache (ondemand)")
    # ProMoE's chunked, preemptible prefetch: see timeline.ChunkedTimeline
    prefetch_chunk_mb: ChunkMiB | None = Field(
        None, description="split every prefetch copy into chunks of at most this many MiB (each pays the PCIe "
                          "latency) that a demand copy overtakes at a chunk's end (default: copies are FIFO)")
    timeline_steps: Window | None = Field(None, description="[START, STOP) steps recorded for the timeline")
    max_requests: PosInt | None = Field(None, description="replay only the first N requests")
    # serving: arrivals and the batch scheduler's limits
    arrivals: Literal["closed", "trace", "poisson", "gamma"] = Field(
        "closed", description="closed: every request waiting at t=0; trace: the trace's arrival_s; poisson / "
                              "gamma: seeded arrivals at `rate`")
    rate: PosReal | None = Field(None, description="requests per second (poisson, gamma arrivals)")
    cv: PosReal = Field(1.0, description="coefficient of variation of gamma inter-arrival gaps")
    seed: Annotated[int, Field(ge=0, lt=2**63)] = Field(0, description="seed of the arrival draws (poisson, "
                                                                          "gamma)")
    max_batched_tokens: PosInt | None = Field(None, description="tokens per step (caps prefill chunks)")
    requests: PosInt | None = Field(None, description="cycle the trace's requests up to this many (the repeats "
                                                      "reuse the original routing)")
    slo_ttft_ms: PosReal | None = Field(None, description="TTFT SLO per request (SLO attainment, goodput)")
    slo_tpot_ms: PosReal | None = Field(None, description="TPOT SLO per request (mean over its decode tokens)")
    # several GPUs (a profile with a topology: section; sim/engine/parallel.py)
    parallel: Literal["none", "pipeline", "expert"] = Field(
        "none", description="several GPUs: split the model by layers (pipeline) or shard each layer's experts "
                            "(expert)")
    gpus: PosInt | None = Field(None, description="GPUs the model is split over (default: all the profile has)")
    # the SSD tier (sim/engine/tiers.py, docs/tiers.md; needs the profile's nvme: section)
    host_memory_gib: PosReal | None = Field(
        None, description="host memory for experts in GiB; experts beyond it are read from the NVMe SSD (default: "
                          "cpu.memory_gib minus a 4 GiB OS reserve and the dense weights)")
    host_policy: str | None = Field(None, description="cache policy of host memory as the second cache level "
                                                      "(default: lru, the page cache)")
    host_placement: Literal["none", "first", "popular"] | None = Field(
        None, description="experts in host memory at t=0: none (cold, default), first (the file's first experts), "
                          "popular (the trace's most activated: an oracle)")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            err = first_error(e)
            name = str(err["loc"][0]) if err["loc"] else None
            if err["type"] == "extra_forbidden":
                valid = ", ".join(type(self).model_fields)
                raise InputError("replay settings", name, f"unknown setting; valid: {valid}") from None
            raise InputError(None if name else "replay settings", None, describe(err), param=name) from None

    @model_validator(mode="after")
    def _consistent(self) -> ReplayConfig:
        given = self.model_fields_set
        arrivals = param_ref("arrivals")
        if self.max_batched_tokens is not None and self.max_batched_tokens < self.batch:
            raise InputError(None, None, f"must be >= {param_ref('batch')} ({self.batch}), got "
                                         f"{self.max_batched_tokens}", param="max_batched_tokens")
        if self.arrivals in DRAWN and self.rate is None:
            raise InputError(None, None, f"{self.arrivals} arrivals need a request rate (requests/s)", param="rate")
        for name in ("rate", "seed"):  # settings of drawn arrivals only: never silently without effect
            if name in given and self.arrivals not in DRAWN and getattr(self, name) is not None:
                raise InputError(None, None, f"only used with {arrivals} poisson or gamma (arrivals are "
                                             f"{self.arrivals})", param=name)
        if self.gpus is not None and self.parallel == "none":
            raise InputError(None, None, f"only used with {param_ref('parallel')} pipeline or expert (one GPU runs "
                                         "the model otherwise)", param="gpus")
        if "cv" in given and self.arrivals != "gamma":
            raise InputError(None, None, f"only used with {arrivals} gamma (arrivals are {self.arrivals})",
                             param="cv")
        return self
