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
both give the same timeline. A group of n equal kernels is one op here: with launch cost L and duration d
each, started no earlier than s, the last one ends at max(s + n*d, h0 + 2L + (n-1)d, h0 + nL + d), where h0 is
the host clock before the first launch (the recurrence is linear between its extremes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from simmoe.hw.profile import HostSpec

GPU, H2D, D2H, CPU = "gpu", "h2d", "d2h", "cpu"


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

    def reset(self) -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, 0.0)


@dataclass
class Timeline:
    host: HostSpec
    copy_engines: int = 2
    record: bool = False
    h: float = 0.0  # host clock
    gpu_free: float = 0.0
    h2d_free: float = 0.0
    d2h_free: float = 0.0
    cpu_free: float = 0.0
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
        return max(self.h, self.gpu_free, self.h2d_free, self.d2h_free, self.cpu_free)

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
        L = self.host.launch_overhead_us
        h0 = self.h
        prev = self.gpu_free
        issue1 = h0 + L
        start = issue1 if issue1 > prev else prev
        if after is not None and after > start:
            start = after
            if after > prev and after > issue1:
                self._stall(wait, after - max(prev, issue1))
        if issue1 > prev:
            self.c.stall_dispatch += min(issue1, start) - prev
        end = start + n * each_us
        if n > 1:
            e2 = h0 + 2 * L + (n - 1) * each_us
            e3 = h0 + n * L + each_us
            tail = e2 if e2 > e3 else e3
            if tail > end:
                self.c.stall_dispatch += tail - end
                end = tail
        self.c.gpu_busy += n * each_us
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
        if direction == H2D:
            self.h2d_free = end
            self.c.h2d_busy += us
        else:
            self.d2h_free = end
            self.c.d2h_busy += us
        if shared:
            self.h2d_free = self.d2h_free = end
        if on_compute:
            self.c.stall_copy += end - prev_gpu
            self.gpu_free = end
        if blocking:
            self.h = end
        if self.record:
            self.events.append(Event(direction, name, "copy", start, end,
                                     {"us": us, "on_compute_stream": on_compute, "blocking": blocking}))
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
