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
    timeline_steps: tuple[int, int] | None = None  # [start, stop) steps recorded for --timeline
    max_requests: int | None = None  # replay only the first N requests

    def __post_init__(self) -> None:
        from simmoe.errors import InputError

        if self.batch < 1:
            raise InputError("--batch", None, f"must be >= 1, got {self.batch}")
        if self.prefill_chunk is not None and self.prefill_chunk < 1:
            raise InputError("--prefill-chunk", None, f"must be >= 1, got {self.prefill_chunk}")
        if self.staging_buffers < 1:
            raise InputError("--staging-buffers", None, "must be >= 1")
        if self.host_memory not in ("pinned", "pageable"):
            raise InputError("--host-memory", None, "must be pinned or pageable")
        if self.copy_stream not in ("separate", "compute"):
            raise InputError("--copy-stream", None, "must be separate or compute")
        if self.engine not in ("fast", "simpy"):
            raise InputError("--engine", None, "must be fast or simpy")
