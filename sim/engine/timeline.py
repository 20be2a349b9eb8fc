"""Stream semantics of eager offloaded execution, as a recurrence (the fast path).

Model (DESIGN.md, "What real offloaded MoE execution looks like"):
- A host thread issues work; each launch costs it host time, and it runs ahead of the GPU until it
  synchronises (`sync`) or issues a blocking (pageable) copy.
- Work on one queue runs in issue order: the GPU compute stream, the H2D copy engine, the D2H copy engine
  (one shared engine when the profile has `copy_engines: 1`) and the CPU expert worker.
- An op starts at the latest of: its issue time on the host, its queue(s) becoming free, its dependency.
  A copy issued on the compute stream occupies the compute queue too, so kernels behind it wait.

Handles returned by the issue methods are opaque to callers (here: completion times in microseconds), so
the same planner code drives `SimpyTimeline`, which plays each kernel as its own SimPy event; a test checks
both give the same timeline. `ChunkedTimeline` adds preemptible prefetch copies (ProMoE's chunked transfers),
whose handles are resolved lazily. A group of n equal kernels is one op here: with launch cost L and duration d
each, started no earlier than s, the last one ends at max(s + n*d, h0 + 2L + (n-1)d, h0 + nL + d), where h0 is
the host clock before the first launch (the recurrence is linear between its extremes).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

GPU, H2D, D2H, CPU = "gpu", "h2d", "d2h", "cpu"
NVME = "nvme"  # the SSD tier's reads (tiers.py)


@dataclass
class HostCosts:
    """What the host thread pays: per kernel launch (an eager op, a native launch, or nothing inside a
    captured CUDA graph: the step timing sets it per step), per copy issued, per synchronising read-back."""

    launch_us: float
    copy_issue_us: float
    sync_us: float


@dataclass
class Event:
    """One recorded op for timelines: resource track, name, category, start/end in microseconds."""

    track: str
    name: str
    cat: str
    start: float
    end: float
    args: dict | None = None


@dataclass
class Counters:
    """Busy and stall time accumulated since the last reset (microseconds)."""

    gpu_busy: float = 0.0
    h2d_busy: float = 0.0
    d2h_busy: float = 0.0
    cpu_busy: float = 0.0
    stall_copy: float = 0.0  # GPU compute idle waiting for an expert copy
    stall_dispatch: float = 0.0  # GPU compute idle waiting for the host to launch work
    stall_cpu: float = 0.0  # GPU compute idle waiting for CPU-computed experts
    nvme_busy: float = 0.0  # the SSD reading experts (tiers.py)

    def reset(self) -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, 0.0)


@dataclass
class Timeline:
    host: HostCosts
    copy_engines: int = 2
    record: bool = False
    h: float = 0.0  # host clock
    gpu_free: float = 0.0
    h2d_free: float = 0.0
    d2h_free: float = 0.0
    cpu_free: float = 0.0
    nvme_free: float = 0.0  # the SSD's read queue (tiers.py)
    c: Counters = field(default_factory=Counters)
    events: list[Event] = field(default_factory=list)

    # ---- clocks ------------------------------------------------------------------------------------------
    def advance_host(self, t: float) -> None:
        """The host is idle until t (e.g. waiting for a request to arrive)."""
        if t > self.h:
            self.h = t

    def join(self, *handles: float | None) -> float | None:
        hs = [x for x in handles if x is not None]
        return max(hs) if hs else None

    @property
    def now(self) -> float:
        return self.h

    def idle_at(self) -> float:
        """Time at which every queue has drained."""
        return max(self.h, self.gpu_free, self.h2d_free, self.d2h_free, self.cpu_free, self.nvme_free)

    # ---- host-only work ----------------------------------------------------------------------------------
    def host_work(self, us: float, name: str = "host") -> None:
        if self.record and us > 0:
            self.events.append(Event("dispatch", name, "host", self.h, self.h + us))
        self.h += us

    def sync(self, handle: float | None = None, name: str = "sync") -> None:
        """Host blocks until `handle` (default: the compute stream) completes, then pays the sync cost."""
        t = self.gpu_free if handle is None else handle
        if t > self.h:
            self.h = t
        if self.record:
            self.events.append(Event("dispatch", name, "sync", self.h, self.h + self.host.sync_us))
        self.h += self.host.sync_us

    # ---- GPU kernels -------------------------------------------------------------------------------------
    def kernels(self, n: int, each_us: float, after: float | None = None, name: str = "kernel",
                cat: str = "compute", wait: str = "copy") -> float:
        """Launch n equal kernels on the compute stream; the first waits for `after`. Returns the end."""
        L = self.host.launch_us
        c = self.c  # the hottest function of a replay: locals over attribute chains
        h0 = self.h
        prev = self.gpu_free
        issue1 = h0 + L
        start = issue1 if issue1 > prev else prev
        if after is not None and after > start:
            start = after
            if after > prev and after > issue1:
                self._stall(wait, after - (prev if prev > issue1 else issue1))
        if issue1 > prev:
            c.stall_dispatch += (issue1 if issue1 < start else start) - prev
        busy = n * each_us
        end = start + busy
        if n > 1:
            e2 = h0 + 2 * L + (n - 1) * each_us
            e3 = h0 + n * L + each_us
            tail = e2 if e2 > e3 else e3
            if tail > end:
                c.stall_dispatch += tail - end
                end = tail
        c.gpu_busy += busy
        self.gpu_free = end
        self.h = h0 + n * L
        if self.record:
            self.events.append(Event("dispatch", f"launch {name}", "launch", h0, self.h, {"kernels": n}))
            self.events.append(Event(GPU, name, cat, start, end, {"kernels": n, "busy_us": n * each_us}))
        return end

    def _stall(self, wait: str, us: float) -> None:
        if wait == "cpu":
            self.c.stall_cpu += us
        else:
            self.c.stall_copy += us

    # ---- copies ------------------------------------------------------------------------------------------
    def copy(self, us: float, direction: str = H2D, after: float | None = None, on_compute: bool = False,
             blocking: bool = False, name: str = "copy") -> float:
        """Issue a copy. `on_compute`: issued on the compute stream (blocks the kernels behind it).
        `blocking`: the host waits for it (copies from pageable memory are staged synchronously)."""
        self.h += self.host.copy_issue_us
        issue = self.h
        shared = self.copy_engines < 2
        qfree = self.h2d_free if (direction == H2D or shared) else self.d2h_free
        if shared:
            qfree = max(self.h2d_free, self.d2h_free)
        start = max(issue, qfree)
        if after is not None and after > start:
            start = after
        prev_gpu = self.gpu_free
        if on_compute and prev_gpu > start:
            start = prev_gpu
        end = start + us
        if shared:
            self.h2d_free = self.d2h_free = end
        elif direction == H2D:
            self.h2d_free = end
        else:
            self.d2h_free = end
        return self._copy_done(direction, us, start, end, prev_gpu, on_compute, blocking, name)

    def _copy_done(self, direction: str, us: float, start: float, end: float, prev_gpu: float,
                   on_compute: bool, blocking: bool, name: str) -> float:
        """The accounting every copy shares once its queue has placed it at [start, end)."""
        if direction == H2D:
            self.c.h2d_busy += us
        else:
            self.c.d2h_busy += us
        if on_compute:
            self.c.stall_copy += end - prev_gpu
            self.gpu_free = end
        if blocking:
            self.h = end
        if self.record:
            self.events.append(Event(direction, name, "copy", start, end,
                                     {"us": us, "on_compute_stream": on_compute, "blocking": blocking}))
        return end

    # ---- SSD reads (tiers.py) ----------------------------------------------------------------------------
    def read(self, us: float, after: float | None = None, blocking: bool = False, name: str = "read") -> float:
        """An expert read from NVMe: the host issues it (a copy's issue cost), the SSD serves reads in issue
        order (one read keeps `queue_depth` requests in flight: tiers.nvme_read_us). `blocking`: the host
        waits for it (a page-cache fault taken on the host thread)."""
        self.h += self.host.copy_issue_us
        start = self.h if self.h > self.nvme_free else self.nvme_free
        if after is not None and after > start:
            start = after
        end = start + us
        self.nvme_free = end
        self.c.nvme_busy += us
        if blocking:
            self.h = end
        if self.record:
            self.events.append(Event(NVME, name, "read", start, end, {"us": us, "blocking": blocking}))
        return end

    # ---- CPU worker --------------------------------------------------------------------------------------
    def cpu(self, us: float, after: float | None = None, name: str = "cpu expert") -> float:
        """Work for the CPU expert worker (its own thread pool; the host thread only enqueues it)."""
        issue = self.h
        start = max(issue, self.cpu_free)
        if after is not None and after > start:
            start = after
        end = start + us
        self.cpu_free = end
        self.c.cpu_busy += us
        if self.record:
            self.events.append(Event(CPU, name, "cpu", start, end))
        return end


# ---- a device that runs on the host's own cores ----------------------------------------------------------
@dataclass
class HostDeviceTimeline(Timeline):
    """The timeline of a CPU used as the compute device (`gpu.executes_on_host`, a profile from `calibrate
    --as-device`): the host thread runs every kernel itself, so it waits for each one (no running ahead), and
    a copy is a memcpy on that thread (on the compute queue, blocking)."""

    def kernels(self, n: int, each_us: float, after: float | None = None, name: str = "kernel",
                cat: str = "compute", wait: str = "copy") -> float:
        L = self.host.launch_us
        c = self.c
        h0 = self.h
        prev = self.gpu_free
        issue1 = h0 + L
        start = issue1 if issue1 > prev else prev
        if after is not None and after > start:
            self._stall(wait, after - start)
            start = after
        if issue1 > prev:
            c.stall_dispatch += (issue1 if issue1 < start else start) - prev
        end = start + each_us + (n - 1) * (L + each_us)  # launch, run, launch, run ...
        c.stall_dispatch += (n - 1) * L
        c.gpu_busy += n * each_us
        self.gpu_free = self.h = end
        if self.record:
            self.events.append(Event("dispatch", f"run {name}", "launch", h0, end, {"kernels": n}))
            self.events.append(Event(GPU, name, cat, start, end, {"kernels": n, "busy_us": n * each_us}))
        return end

    def copy(self, us: float, direction: str = H2D, after: float | None = None, on_compute: bool = False,
             blocking: bool = False, name: str = "copy") -> float:
        return super().copy(us, direction, after, on_compute=True, blocking=True, name=name)

    def cpu(self, us: float, after: float | None = None, name: str = "cpu expert") -> float:
        """CPU experts run on the same cores as the device: the host waits, the device is busy meanwhile."""
        end = super().cpu(us, after, name)
        if end > self.h:
            self.h = end
        if end > self.gpu_free:
            self.gpu_free = end
        return end


# ---- preemptible prefetch copies -------------------------------------------------------------------------
class PrefetchHandle:
    """Handle of a preemptible prefetch copy: `end` is None while later copies may still push it back."""

    __slots__ = ("ready", "rem", "chunk", "end", "name")

    def __init__(self, ready: float, chunks: int, chunk_us: float, name: str) -> None:
        self.ready = ready  # earliest start: issue time and its dependency
        self.rem = chunks  # chunks not yet committed
        self.chunk = chunk_us
        self.end: float | None = None
        self.name = name


@dataclass
class ChunkedTimeline(Timeline):
    """`Timeline` whose H2D engine also runs preemptible prefetches (ProMoE, Song et al. 2024, arXiv:2410.22134:
    prefetches are split into chunks so that an on-demand load preempts them at a chunk boundary).

    The engine serves copies in issue order, except that a non-preemptible copy (a demand miss, a CPU
    expert's result, and with one copy engine a D2H copy too) overtakes the prefetches queued or running
    when it becomes ready: it starts at the running chunk's end, and the prefetch chunks not started yet are
    pushed back by its duration. Prefetches stay FIFO among themselves. A prefetch's handle is a
    `PrefetchHandle` whose end is only known once nothing can push it back: consuming it (a kernel, CPU job, sync or
    non-preemptible copy issued `after` it, i.e. the expert is needed now) promotes it and every prefetch
    ahead of it: their tentative schedule is committed and copies issued later queue behind them.

    State: `h2d_free` is the committed frontier (the engine's schedule is final up to it; it always ends
    with a non-preemptible op or a promoted prefetch); `_pq` holds the prefetches not committed yet, whose
    tentative schedule runs back to back from the frontier. With no prefetch pending every method is the
    plain `Timeline`'s, so results match it exactly when nothing is preemptible.
    """

    _pq: deque = field(default_factory=deque)

    def _res(self, x):
        """A handle's completion time; a pending prefetch is promoted (committed) first."""
        if x.__class__ is PrefetchHandle:
            if x.end is None:
                self._promote(x)
            return x.end
        return x

    def _set_free(self, t: float) -> None:
        self.h2d_free = t
        if self.copy_engines < 2:
            self.d2h_free = t

    def _segment(self, p: PrefetchHandle, start: float, end: float) -> None:
        if self.record:
            self.events.append(Event(H2D, p.name, "prefetch", start, end, {"preemptible": True}))

    def _promote(self, x: PrefetchHandle) -> None:
        t = self.h2d_free
        pq = self._pq
        while True:
            p = pq.popleft()
            s = p.ready if p.ready > t else t
            t = p.end = s + p.rem * p.chunk
            p.rem = 0
            self._segment(p, s, t)
            if p is x:
                break
        self._set_free(t)

    def _advance(self, r: float) -> float:
        """Commit the prefetch chunks that start before r (a non-preemptible copy is ready at r); returns
        when the engine is free for it (the running chunk's end, or r)."""
        t = self.h2d_free
        pq = self._pq
        while pq:
            p = pq[0]
            s = p.ready if p.ready > t else t
            if s >= r:
                break
            c = p.chunk
            k = max(math.ceil((r - s) / c), 1)  # the first chunk boundary at or after r: s + k*c
            while k > 1 and s + (k - 1) * c >= r:
                k -= 1
            while s + k * c < r:
                k += 1
            if k >= p.rem:
                t = p.end = s + p.rem * c
                p.rem = 0
                pq.popleft()
                self._segment(p, s, t)
                continue
            t = s + k * c
            p.rem -= k
            self._segment(p, s, t)
            break
        return t if t > r else r

    def idle_at(self) -> float:
        t = self.h2d_free
        for p in self._pq:
            t = max(t, p.ready) + p.rem * p.chunk
        return max(self.h, self.gpu_free, t, self.d2h_free, self.cpu_free, self.nvme_free)

    def join(self, *handles):
        return super().join(*(self._res(x) for x in handles))

    def sync(self, handle=None, name: str = "sync") -> None:
        super().sync(self._res(handle), name)

    def kernels(self, n: int, each_us: float, after=None, name: str = "kernel", cat: str = "compute",
                wait: str = "copy") -> float:
        return super().kernels(n, each_us, self._res(after), name, cat, wait)

    def cpu(self, us: float, after=None, name: str = "cpu expert") -> float:
        return super().cpu(us, self._res(after), name)

    def read(self, us: float, after=None, blocking: bool = False, name: str = "read") -> float:
        return super().read(us, self._res(after), blocking, name)

    def copy(self, us: float, direction: str = H2D, after=None, on_compute: bool = False, blocking: bool = False,
             name: str = "copy", preemptible: bool = False, chunks: int = 1):
        """As `Timeline.copy`; `preemptible`: a prefetch of `chunks` equal chunks on the H2D engine, returns a
        `PrefetchHandle`."""
        if preemptible:
            if direction != H2D or on_compute or blocking or chunks < 1:
                raise ValueError("a preemptible copy is an H2D copy on the copy stream, non-blocking, chunks >= 1")
            self.h += self.host.copy_issue_us
            ready = self.h
            # a dependency on a pending prefetch (its slot) is implied: that one is earlier in the same FIFO
            a = after.end if after.__class__ is PrefetchHandle else after
            if a is not None and a > ready:
                ready = a
            self.c.h2d_busy += us
            p = PrefetchHandle(ready, chunks, us / chunks, name)
            self._pq.append(p)
            return p
        after = self._res(after)
        shared = self.copy_engines < 2
        if not self._pq or (direction != H2D and not shared):
            return super().copy(us, direction, after, on_compute, blocking, name)
        # a non-preemptible copy on the engine the pending prefetches use: it overtakes them
        self.h += self.host.copy_issue_us
        r = self.h
        qfree = max(self.h2d_free, self.d2h_free) if shared else self.h2d_free  # the committed frontier
        if qfree > r:
            r = qfree
        if after is not None and after > r:
            r = after
        prev_gpu = self.gpu_free
        if on_compute and prev_gpu > r:
            r = prev_gpu
        start = self._advance(r)
        end = start + us
        self._set_free(end)
        return self._copy_done(direction, us, start, end, prev_gpu, on_compute, blocking, name)
