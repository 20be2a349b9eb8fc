"""Replay configuration: how a trace is played (batching, memory kind, streams, engine, arrivals).

A frozen, strict pydantic model (simmoe.validation.STRICT): `ReplayConfig(batch=4)`, attribute access, and
every bad value is an InputError naming the command-line flag (`--batch: must be >= 1, got 0`), whether it
came from the command line, a sweep spec or a notebook. A setting that would have no effect (`--rate`
without poisson or gamma arrivals) is an error too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from simmoe.errors import InputError
from simmoe.validation import STRICT, AsTuple, ChunkMiB, describe, first_error

PosInt = Annotated[int, Field(ge=1)]
PosReal = Annotated[float, Field(gt=0)]  # finite: STRICT rejects NaN and infinity

# Arrivals whose draws use --rate, --seed (and --cv for gamma).
DRAWN = ("poisson", "gamma")


def flag(name: str) -> str:
    """The command-line flag of a ReplayConfig field (errors name it)."""
    return "--" + name.replace("_", "-")


class ReplayConfig(BaseModel):
    model_config = STRICT

    batch: PosInt = 1  # concurrent requests in the decode batch
    prefill_chunk: PosInt | None = None  # prefill rows per step (None: a request's whole prompt in one step)
    # where offloaded experts live on the host, and the stream expert copies are issued on (None: the runtime
    # profile's choice; given, they override it)
    host_memory: Literal["pinned", "pageable"] | None = None
    copy_stream: Literal["separate", "compute"] | None = None
    engine: Literal["fast", "simpy"] = "fast"  # recurrence, or one SimPy event per kernel (reference)
    staging_buffers: PosInt = 2  # expert buffers for policies without a cache (ondemand)
    # ProMoE's chunked, preemptible prefetch (None: copies are FIFO). Every prefetcher's copies are split into
    # chunks of at most this many MiB (each chunk pays the PCIe latency); a demand copy overtakes them at the
    # running chunk's end. See timeline.ChunkedTimeline.
    prefetch_chunk_mb: ChunkMiB | None = None
    # [start, stop) steps recorded for --timeline
    timeline_steps: Annotated[tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=1)]], AsTuple] | None = None
    max_requests: PosInt | None = None  # replay only the first N requests
    # serving: arrivals and the batch scheduler's limits (closed = every request waiting at t=0)
    arrivals: Literal["closed", "trace", "poisson", "gamma"] = "closed"
    rate: PosReal | None = None  # requests per second (poisson, gamma)
    cv: PosReal = 1.0  # coefficient of variation of gamma inter-arrival gaps
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0  # seed of the arrival draws (poisson, gamma)
    max_batched_tokens: PosInt | None = None  # tokens per step (caps prefill chunks)
    requests: PosInt | None = None  # cycle the trace's requests up to this many (explicit, reported)
    slo_ttft_ms: PosReal | None = None  # SLO attainment / goodput thresholds (per request)
    slo_tpot_ms: PosReal | None = None
    # several GPUs (a profile with a topology: section; sim/engine/parallel.py): split the model by layers
    # (pipeline) or shard each layer's experts (expert), over `gpus` of them (None: all the profile has)
    parallel: Literal["none", "pipeline", "expert"] = "none"
    gpus: PosInt | None = None

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            err = first_error(e)
            name = str(err["loc"][0]) if err["loc"] else None
            if err["type"] == "extra_forbidden":
                valid = ", ".join(type(self).model_fields)
                raise InputError("replay settings", name, f"unknown setting; valid: {valid}") from None
            raise InputError(flag(name) if name else "replay settings", None, describe(err)) from None

    @model_validator(mode="after")
    def _consistent(self) -> ReplayConfig:
        given = self.model_fields_set
        if self.max_batched_tokens is not None and self.max_batched_tokens < self.batch:
            raise InputError("--max-batched-tokens", None, f"must be >= --batch ({self.batch}), got "
                                                           f"{self.max_batched_tokens}")
        if self.timeline_steps is not None and self.timeline_steps[1] <= self.timeline_steps[0]:
            raise InputError("--timeline-steps", None, f"START:STOP must have START < STOP, got "
                                                       f"{self.timeline_steps[0]}:{self.timeline_steps[1]}")
        if self.arrivals in DRAWN and self.rate is None:
            raise InputError("--rate", None, f"{self.arrivals} arrivals need a request rate (requests/s)")
        for name in ("rate", "seed"):  # settings of drawn arrivals only: never silently without effect
            if name in given and self.arrivals not in DRAWN and getattr(self, name) is not None:
                raise InputError(flag(name), None, f"only used with --arrivals poisson or gamma (arrivals are "
                                                   f"{self.arrivals})")
        if self.gpus is not None and self.parallel == "none":
            raise InputError("--gpus", None, "only used with --parallel pipeline or expert (one GPU runs the "
                                             "model otherwise)")
        if "cv" in given and self.arrivals != "gamma":
            raise InputError("--cv", None, f"only used with --arrivals gamma (arrivals are {self.arrivals})")
        return self
