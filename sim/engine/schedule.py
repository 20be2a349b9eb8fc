"""Scheduling: which trace rows each step processes, and the experts each layer of a step needs.

Replay semantics (kept exact, tests depend on them):
- requests are admitted in id order, at most `batch` at a time; a newly admitted request first runs its
  prefill rows (as one step, or in chunks of `prefill_chunk` rows), then joins the decode batch;
- a decode step takes the next row of every running request, in admission order;
- within a layer, a step's experts are accessed in order of first appearance over (row, slot), each once,
  with the number of the step's tokens routed to it. With batch 1 and prefill_chunk 1 this is exactly
  "requests in order, rows in order, slots in order".
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass

import numpy as np

PREFILL, DECODE = 0, 1


@dataclass(frozen=True)
class Step:
    index: int
    kind: int  # PREFILL or DECODE
    rows: np.ndarray  # trace row indices, int64
    requests: tuple[int, ...]  # request id of each row
    admitted: tuple[int, ...] = ()  # requests admitted at this step
    finished: tuple[int, ...] = ()  # requests whose last row is in this step


class RowIndex:
    """Per-request row ranges and per-row positions, computed once with numpy."""

    def __init__(self, request: np.ndarray, phase: np.ndarray) -> None:
        n = len(request)
        starts = np.flatnonzero(np.r_[True, request[1:] != request[:-1]]) if n else np.zeros(0, np.int64)
        stops = np.r_[starts[1:], n].astype(np.int64)
        ids = request[starts].astype(np.int64)
        order = np.argsort(ids, kind="stable")  # replay in request-id order
        self.ids = ids[order]
        self.starts = starts[order].astype(np.int64)
        self.stops = stops[order]
        # rows of each request that are prefill (a prefix, validated by the trace reader)
        pre = (phase == 0).astype(np.int64)
        csum = np.r_[0, np.cumsum(pre)]
        self.prefill_len = csum[self.stops] - csum[self.starts]
        pos = np.arange(n, dtype=np.int64)
        owner_start = np.repeat(starts, stops - starts)
        self.position = pos - owner_start  # 0-based position of each row within its request


@dataclass(frozen=True)
class Idle:
    """Nothing can run until `until_us` (the next arrival)."""

    until_us: float


def online_schedule(ri: RowIndex, arrival_us: np.ndarray, batch: int = 1, prefill_chunk: int | None = None,
                    max_batched_tokens: int | None = None) -> Generator[Step | Idle | None, float, None]:
    """Continuous batching with arrivals. A generator driven by `send(now_us)`: it answers the next Step
    (admitting, at step boundaries, requests that have arrived, first come first served, while fewer than
    `batch` run), or Idle when nothing has arrived yet. Prime it with next().

    A newly admitted request runs its prefill first (whole, or in chunks of `prefill_chunk` rows, capped at
    `max_batched_tokens`), then joins the decode batch. `arrival_us` is per request in `ri` order.
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    if max_batched_tokens is not None and max_batched_tokens < batch:
        raise ValueError("max_batched_tokens must be >= batch")
    order = np.lexsort((np.arange(len(ri.ids)), arrival_us))  # by arrival, ties by id
    pending = order.tolist()[::-1]  # stack; pop() takes the earliest
    running: list[list[int]] = []  # [request idx, next row, stop, just admitted]
    k = 0
    now = yield None
    while pending or running:
        while pending and len(running) < batch and arrival_us[pending[-1]] <= now:
            r = pending.pop()
            start, stop, npre = int(ri.starts[r]), int(ri.stops[r]), int(ri.prefill_len[r])
            rid = int(ri.ids[r])
            cur = start
            chunk = prefill_chunk or max(npre, 1)
            if max_batched_tokens is not None:
                chunk = min(chunk, max_batched_tokens)
            first = True
            while cur < start + npre:
                end = min(cur + chunk, start + npre)
                fin = (rid,) if end == stop else ()
                now = yield Step(k, PREFILL, np.arange(cur, end), (rid,) * (end - cur),
                                 admitted=(rid,) if first else (), finished=fin)
                k += 1
                first = False
                cur = end
            if cur < stop:
                running.append([r, cur, stop, 1 if first else 0])
        if not running:
            if pending and arrival_us[pending[-1]] > now:
                now = yield Idle(float(arrival_us[pending[-1]]))
            continue
        rows = np.fromiter((s[1] for s in running), dtype=np.int64, count=len(running))
        reqs = tuple(int(ri.ids[s[0]]) for s in running)
        admitted = tuple(int(ri.ids[s[0]]) for s in running if s[3])
        for s in running:
            s[1] += 1
            s[3] = 0
        finished = tuple(int(ri.ids[s[0]]) for s in running if s[1] >= s[2])
        running = [s for s in running if s[1] < s[2]]
        now = yield Step(k, DECODE, rows, reqs, admitted=admitted, finished=finished)
        k += 1


def static_schedule(ri: RowIndex, batch: int = 1, prefill_chunk: int | None = None,
                    max_batched_tokens: int | None = None) -> Iterator[Step]:
    """Closed-loop continuous batching: all requests are waiting at t=0 and are admitted in id order."""
    gen = online_schedule(ri, np.zeros(len(ri.ids)), batch, prefill_chunk, max_batched_tokens)
    next(gen)
    while True:
        try:
            yield gen.send(0.0)  # type: ignore[misc]
        except StopIteration:
            return


def step_experts(experts: np.ndarray, rows: np.ndarray, num_experts: int,
                 has_null: bool) -> tuple[list[list[int]], list[list[int]]]:
    """Per MoE layer: the experts a step needs (first-appearance order over rows, slots) and token counts."""
    if len(rows) == 1:
        lay = experts[rows[0]].tolist()
        if has_null:
            lay = [[e for e in x if e >= 0] for x in lay]
        return lay, [[1] * len(x) for x in lay]
    sub = experts[rows]  # [B, L, K]
    nlayers = sub.shape[1]
    flat = np.ascontiguousarray(sub.transpose(1, 0, 2)).reshape(nlayers, -1).astype(np.int64)
    keys = flat + (np.arange(nlayers, dtype=np.int64) * num_experts)[:, None]
    keys = keys.ravel()
    valid = flat.ravel() >= 0
    pos = np.flatnonzero(valid)
    keys = keys[valid]
    uniq, first, counts = np.unique(keys, return_index=True, return_counts=True)
    order = np.argsort(pos[first], kind="stable")
    uniq, counts = uniq[order], counts[order]
    layer_of = uniq // num_experts
    bounds = np.searchsorted(layer_of, np.arange(nlayers + 1))  # layer-major because pos is layer-major
    ex = (uniq - layer_of * num_experts).tolist()
    ct = counts.tolist()
    b = bounds.tolist()
    return [ex[b[i]:b[i + 1]] for i in range(nlayers)], [ct[b[i]:b[i + 1]] for i in range(nlayers)]
