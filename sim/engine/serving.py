"""Serving runs: request arrival times, and traces cycled to more requests than they hold.

Arrivals: "closed" (all waiting at t=0: a replay), "trace" (the trace's own `arrival_s`), "poisson"
(exponential gaps at `rate` requests/s) or "gamma" (gaps with coefficient of variation `cv`: bursty when
cv > 1). Draws are seeded, so a run is reproducible.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from simmoe.errors import InputError
from simmoe.trace.format import Trace


def arrival_times_s(arrivals: str, ids: np.ndarray, trace: Trace, rate: float | None, cv: float,
                    seed: int) -> np.ndarray:
    """Arrival time (s) of each request, in the order of `ids` (request ids, ascending)."""
    n = len(ids)
    if arrivals == "closed":
        return np.zeros(n)
    if arrivals == "trace":
        if trace.arrival_s is None:
            raise InputError(trace.source, "arrival_s", "the trace has no arrival times; use --arrivals poisson "
                                                        "or gamma with --rate")
        return np.asarray(trace.arrival_s, dtype=float)[ids]
    if rate is None or rate <= 0:
        raise InputError("--rate", None, f"{arrivals} arrivals need a request rate > 0 (requests/s)")
    rng = np.random.default_rng(seed)
    if arrivals == "poisson":
        gaps = rng.exponential(1.0 / rate, n)
    else:  # gamma: shape 1/cv^2 keeps the mean gap at 1/rate
        shape = 1.0 / (cv * cv)
        gaps = rng.gamma(shape, 1.0 / (rate * shape), n)
    return np.cumsum(gaps) - gaps[0]  # the first request arrives at t=0


def cycle_trace(trace: Trace, requests: int) -> Trace:
    """The trace's requests repeated, in id order, until there are `requests` of them (ids 0..n-1). The
    routing of a repeated request is the original's: say so when reporting a cycled run."""
    if requests < 1:
        raise InputError("--requests", None, "must be >= 1")
    ids = trace.request_ids
    pick = np.resize(np.arange(len(ids)), requests)
    starts = np.flatnonzero(np.r_[True, trace.request[1:] != trace.request[:-1]])
    stops = np.r_[starts[1:], trace.num_rows]
    by_id = np.argsort(trace.request[starts], kind="stable")
    starts, stops = starts[by_id], stops[by_id]
    lens = stops[pick] - starts[pick]
    rows = np.concatenate([np.arange(starts[p], stops[p]) for p in pick]) if requests else np.zeros(0, int)
    new_req = np.repeat(np.arange(requests, dtype=np.int32), lens)
    meta = dict(trace.meta, cycled_from_requests=int(len(ids)), cycled_to_requests=int(requests))
    return dataclasses.replace(
        trace, experts=trace.experts[rows], request=new_req, phase=trace.phase[rows], meta=meta,
        gates=None if trace.gates is None else trace.gates[rows],
        predicted=None if trace.predicted is None else trace.predicted[rows],
        arrival_s=None)
