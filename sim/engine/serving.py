"""Serving runs: request arrival times, and traces cycled to more requests than they hold.

Arrivals: "closed" (all waiting at t=0: a replay), "trace" (the trace's own `arrival_s`), "poisson"
(exponential gaps at `rate` requests/s) or "gamma" (gaps with coefficient of variation `cv`: bursty when
cv > 1). Draws are seeded, so a run is reproducible.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from simmoe.errors import InputError, param_ref
from simmoe.trace.format import Trace, _concat_ranges
from simmoe.validation import check_memory


def arrival_times_s(arrivals: str, ids: np.ndarray, trace: Trace, rate: float | None, cv: float,
                    seed: int) -> np.ndarray:
    """Arrival time (s) of each request, in the order of `ids` (request ids, ascending)."""
    n = len(ids)
    if arrivals == "closed":
        return np.zeros(n)
    if arrivals == "trace":
        if trace.arrival_s is None:
            raise InputError(trace.source, "arrival_s", "the trace has no arrival times; use "
                                                        f"{param_ref('arrivals')} poisson or gamma with "
                                                        f"{param_ref('rate')}")
        return np.asarray(trace.arrival_s, dtype=float)[ids]
    if rate is None or rate <= 0:
        raise InputError(None, None, f"{arrivals} arrivals need a request rate > 0 (requests/s)", param="rate")
    rng = np.random.default_rng(seed)
    if arrivals == "poisson":
        gaps = rng.exponential(1.0 / rate, n)
    else:  # gamma: shape 1/cv^2 keeps the mean gap at 1/rate
        shape = 1.0 / (cv * cv)
        gaps = rng.gamma(shape, 1.0 / (rate * shape), n)
    return np.cumsum(gaps) - gaps[0]  # the first request arrives at t=0


# The replay keeps per-row arrays beside the trace (schedule, per-access keys and times): budget several times
# the trace's own bytes when checking that a cycled trace fits in memory.
ENGINE_BYTES_FACTOR = 8


def _row_bytes(trace: Trace) -> int:
    cells = trace.num_layers * trace.top_k
    return (2 * cells + 4 + 1 + (4 * cells if trace.gates is not None else 0)
            + (trace.predicted[0].nbytes if trace.predicted is not None and trace.num_rows else 0))


def cycle_trace(trace: Trace, requests: int) -> Trace:
    """The trace's requests repeated, in id order, until there are `requests` of them (ids 0..n-1). The
    routing of a repeated request is the original's: say so when reporting a cycled run."""
    if requests < 1:
        raise InputError(None, None, "must be >= 1", param="requests")
    ids = trace.request_ids
    starts, stops = trace.request_starts, trace.request_stops  # in id order
    lens_all = stops - starts
    full, part = divmod(requests, len(ids))
    total_rows = full * int(lens_all.sum()) + int(lens_all[:part].sum())
    check_memory(total_rows * _row_bytes(trace) * ENGINE_BYTES_FACTOR, None,
                 f"{requests:,} requests cycle to {total_rows:,} trace rows", param="requests")
    pick = np.resize(np.arange(len(ids)), requests)
    lens = lens_all[pick]
    rows = _concat_ranges(starts[pick], stops[pick])
    new_req = np.repeat(np.arange(requests, dtype=np.int32), lens)
    meta = dict(trace.meta, cycled_from_requests=int(len(ids)), cycled_to_requests=int(requests))
    return dataclasses.replace(
        trace, experts=trace.experts[rows], request=new_req, phase=trace.phase[rows], meta=meta,
        gates=None if trace.gates is None else trace.gates[rows],
        predicted=None if trace.predicted is None else trace.predicted[rows],
        arrival_s=None)
