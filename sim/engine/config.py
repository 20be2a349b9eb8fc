"""Replay configuration: how a trace is played (batching, memory kind, streams, engine)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ReplayConfig:
    batch: int = 1  # concurrent requests in the decode batch
    prefill_chunk: int | None = None  # prefill rows per step (None: a request's whole prompt in one step)
    host_memory: Literal["pinned", "pageable"] = "pinned"  # where offloaded experts live on the host
    copy_stream: Literal["separate", "compute"] = "separate"  # stream expert copies are issued on
    engine: Literal["fast", "simpy"] = "fast"  # recurrence, or one SimPy event per kernel (reference)
    staging_buffers: int = 2  # expert buffers for policies without a cache (ondemand)
    # ProMoE's chunked, preemptible prefetch (None: copies are FIFO). Every prefetcher's copies are split into
    # chunks of at most this many MiB (each chunk pays the PCIe latency); a demand copy overtakes them at the
    # running chunk's end. See timeline.ChunkedTimeline.
    prefetch_chunk_mb: float | None = None
    timeline_steps: tuple[int, int] | None = None  # [start, stop) steps recorded for --timeline
    max_requests: int | None = None  # replay only the first N requests
    # serving: arrivals and the batch scheduler's limits (closed = every request waiting at t=0)
    arrivals: Literal["closed", "trace", "poisson", "gamma"] = "closed"
    rate: float | None = None  # requests per second (poisson, gamma)
    cv: float = 1.0  # coefficient of variation of gamma inter-arrival gaps
    seed: int = 0
    max_batched_tokens: int | None = None  # tokens per step (caps prefill chunks)
    requests: int | None = None  # cycle the trace's requests up to this many (explicit, reported)
    slo_ttft_ms: float | None = None  # SLO attainment / goodput thresholds (per request)
    slo_tpot_ms: float | None = None

    def __post_init__(self) -> None:
        from simmoe.errors import InputError

        if self.batch < 1:
            raise InputError("--batch", None, f"must be >= 1, got {self.batch}")
        if self.prefill_chunk is not None and self.prefill_chunk < 1:
            raise InputError("--prefill-chunk", None, f"must be >= 1, got {self.prefill_chunk}")
        mb = self.prefetch_chunk_mb
        if mb is not None and (isinstance(mb, bool) or not isinstance(mb, int | float) or not 0 < mb < float("inf")):
            raise InputError("--prefetch-chunk-mb", None, f"must be a size > 0 MiB, got {mb!r}")
        if self.staging_buffers < 1:
            raise InputError("--staging-buffers", None, "must be >= 1")
        if self.host_memory not in ("pinned", "pageable"):
            raise InputError("--host-memory", None, "must be pinned or pageable")
        if self.copy_stream not in ("separate", "compute"):
            raise InputError("--copy-stream", None, "must be separate or compute")
        if self.arrivals not in ("closed", "trace", "poisson", "gamma"):
            raise InputError("--arrivals", None, "must be closed, trace, poisson or gamma")
        if self.rate is not None and not self.rate > 0:
            raise InputError("--rate", None, f"must be > 0 requests/s, got {self.rate}")
        if not self.cv > 0:
            raise InputError("--cv", None, f"must be > 0, got {self.cv}")
        if self.max_batched_tokens is not None and self.max_batched_tokens < self.batch:
            raise InputError("--max-batched-tokens", None, f"must be >= --batch ({self.batch})")
        if self.requests is not None and self.requests < 1:
            raise InputError("--requests", None, "must be >= 1")
        for name in ("slo_ttft_ms", "slo_tpot_ms"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise InputError(f"--{name.replace('_', '-')}", None, f"must be > 0, got {v}")
        if self.engine not in ("fast", "simpy"):
            raise InputError("--engine", None, "must be fast or simpy")
