"""The same stream semantics as `timeline.Timeline`, played as SimPy processes, one event per kernel.

This is the reference the fast recurrence is checked against: every queue (GPU compute stream, H2D, D2H,
CPU worker) is a SimPy Resource of capacity 1 whose requests are made at issue time, so each queue serves
ops in issue order; an op holds its queue(s) while it waits for its dependency and while it runs. The host
is a process that pays launch costs as timeouts and blocks on syncs and blocking copies. Kernel groups are
expanded into their individual kernels.

The planner records a step's ops here (handles are `Op` objects) and `play()` runs them.

With `chunked=True` the H2D engine (and the D2H one when it is shared) is instead a dispatcher process that
also runs preemptible prefetches chunk by chunk (the semantics of `timeline.ChunkedTimeline`): at each
decision point it first lets every event of the current instant happen (a lowest-priority zero-delay
event), then runs, in this order: a promoted prefetch whose turn has come (to its end); the oldest
non-preemptible copy if it is ready (its dependencies done, issued, and on the compute stream its turn
there); else one chunk of the oldest prefetch, if that was issued before the oldest non-preemptible copy.
A prefetch is promoted when the host issues something that waits for it; it then takes its turn among
the non-preemptible copies and is no longer overtaken by copies issued after that.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import simpy

from simmoe.engine.timeline import CPU, D2H, GPU, H2D, NVME, Counters, Event, HostCosts


class Op:
    __slots__ = ("kind", "queues", "dur", "after", "host_us", "blocking", "done", "start", "end", "name",
                 "cat", "track", "seq", "ok", "promoted", "rem", "chunk", "seg_start", "seg_rem", "seg_done")

    def __init__(self, kind, queues, dur, after, host_us, blocking=False, name="", cat="", track=""):
        self.kind = kind
        self.queues = queues
        self.dur = dur
        self.after = after
        self.host_us = host_us
        self.blocking = blocking
        self.done = None
        self.start = self.end = None
        self.name, self.cat, self.track = name, cat, track
        self.ok = self.promoted = False


class _Settle(simpy.Event):
    """Fires at the current instant after every other event of that instant (priority below NORMAL)."""

    def __init__(self, env: simpy.Environment) -> None:
        super().__init__(env)
        self._ok = True
        self._value = None
        env.schedule(self, priority=2)


class Join:
    __slots__ = ("ops",)

    def __init__(self, ops):
        self.ops = ops


def _deps(after) -> list[Op]:
    if after is None:
        return []
    if isinstance(after, Join):
        out: list[Op] = []
        for a in after.ops:
            out.extend(_deps(a))
        return out
    return [after]


@dataclass
class SimpyTimeline:
    env: simpy.Environment
    host: HostCosts
    copy_engines: int = 2
    record: bool = False
    chunked: bool = False  # preemptible prefetch copies: the H2D engine is a dispatcher process
    # the device is the host's own cores (HostDeviceTimeline): the host waits for each kernel and copy
    synchronous: bool = False
    c: Counters = field(default_factory=Counters)
    events: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        gpu = simpy.Resource(self.env, 1)
        h2d = simpy.Resource(self.env, 1)
        d2h = h2d if self.copy_engines < 2 else simpy.Resource(self.env, 1)
        self._res = {GPU: gpu, H2D: h2d, D2H: d2h, CPU: simpy.Resource(self.env, 1),
                     NVME: simpy.Resource(self.env, 1)}  # the SSD tier's reads, in issue order
        self._program: list[Op] = []
        self._last_gpu: Op | None = None
        self.h = 0.0
        if self.chunked:
            self._seq = 0
            self._fixed: deque[Op] = deque()  # non-preemptible copies and promoted prefetches, in turn order
            self._pref: deque[Op] = deque()  # prefetches not finished, in issue order
            self._wake = self.env.event()
            self.env.process(self._engine())

    @property
    def now(self) -> float:
        return self.env.now

    def advance_host(self, t: float) -> None:
        pass  # the driver's SimPy clock already is the host clock

    def join(self, *handles):
        hs = [h for h in handles if h is not None]
        return Join(hs) if hs else None

    # ---- recording (same signatures as Timeline) ---------------------------------------------------------
    def host_work(self, us: float, name: str = "host") -> None:
        self._program.append(Op("host", (), 0.0, None, us, name=name))

    def sync(self, handle=None, name: str = "sync") -> None:
        target = handle if handle is not None else self._last_gpu
        self._program.append(Op("sync", (), 0.0, target, 0.0, name=name))

    def kernels(self, n: int, each_us: float, after=None, name: str = "kernel", cat: str = "compute",
                wait: str = "copy") -> Op:
        op = None
        for i in range(n):
            op = Op("kernel", (GPU,), each_us, after if i == 0 else None, self.host.launch_us,
                    blocking=self.synchronous, name=name, cat=cat, track=GPU)
            self._program.append(op)
        self._last_gpu = op
        self.c.gpu_busy += n * each_us
        return op

    def copy(self, us: float, direction: str = H2D, after=None, on_compute: bool = False,
             blocking: bool = False, name: str = "copy", preemptible: bool = False, chunks: int = 1) -> Op:
        if self.synchronous:
            on_compute = blocking = True
        queues = (direction, GPU) if on_compute else (direction,)
        if preemptible:
            if not self.chunked or direction != H2D or on_compute or blocking or chunks < 1:
                raise ValueError("a preemptible copy needs chunked=True and is a non-blocking H2D copy on the "
                                 "copy stream, chunks >= 1")
            op = Op("prefetch", queues, us, after, self.host.copy_issue_us, name=name, cat="prefetch",
                    track=H2D)
            op.rem, op.chunk = chunks, us / chunks
            self._program.append(op)
            self.c.h2d_busy += us
            return op
        op = Op("copy", queues, us, after, self.host.copy_issue_us, blocking=blocking, name=name, cat="copy",
                track=direction)
        self._program.append(op)
        if on_compute:
            self._last_gpu = op
        if direction == H2D:
            self.c.h2d_busy += us
        else:
            self.c.d2h_busy += us
        return op

    def read(self, us: float, after=None, blocking: bool = False, name: str = "read") -> Op:
        """An expert read from NVMe (Timeline.read): its own in-order queue."""
        op = Op("read", (NVME,), us, after, self.host.copy_issue_us, blocking=blocking, name=name, cat="read",
                track=NVME)
        self._program.append(op)
        self.c.nvme_busy += us
        return op

    def cpu(self, us: float, after=None, name: str = "cpu expert") -> Op:
        # a CPU device: the CPU experts run on its cores, holding the device too, and the host waits for them
        queues = (CPU, GPU) if self.synchronous else (CPU,)
        op = Op("cpu", queues, us, after, 0.0, blocking=self.synchronous, name=name, cat="cpu", track=CPU)
        self._program.append(op)
        self.c.cpu_busy += us
        return op

    # ---- playing -----------------------------------------------------------------------------------------
    def play(self):
        """A SimPy process that runs the recorded host program; it ends when the host thread is done."""
        program, self._program = self._program, []
        return self.env.process(self._host(program))

    def _host(self, program: list[Op]):
        env = self.env
        chunked = self.chunked
        for op in program:
            if op.host_us:
                yield env.timeout(op.host_us)
            if op.kind == "host":
                continue
            if chunked:
                if op.kind != "prefetch":  # whatever waits for a prefetch promotes it
                    for d in _deps(op.after):
                        if d.kind == "prefetch" and not d.promoted and not d.done.triggered:
                            self._promote(d)
                if op.kind == "prefetch" or (op.kind == "copy" and self._on_engine(op.track)):
                    self._issue_engine(op)
                    if op.blocking:
                        yield op.done
                    continue
            if op.kind == "sync":
                for d in _deps(op.after):
                    yield d.done
                yield env.timeout(self.host.sync_us)
                continue
            reqs = [self._res[q].request() for q in op.queues]
            op.done = env.event()
            env.process(self._run(op, reqs))
            if op.blocking:
                yield op.done
        self.h = env.now

    def _run(self, op: Op, reqs):
        env = self.env
        waits = list(reqs) + [d.done for d in _deps(op.after)]
        yield simpy.AllOf(env, waits)
        op.start = env.now
        yield env.timeout(op.dur)
        op.end = env.now
        for q, r in zip(op.queues, reqs):
            self._res[q].release(r)
        if self.record:
            self.events.append(Event(op.track, op.name, op.cat, op.start, op.end))
        op.done.succeed()

    # ---- chunked H2D engine (preemptible prefetches) -----------------------------------------------------
    def _on_engine(self, track: str) -> bool:
        return track == H2D or self.copy_engines < 2

    def _poke(self) -> None:
        if not self._wake.triggered:
            self._wake.succeed()

    def _promote(self, op: Op) -> None:
        """`op` and every prefetch ahead of it take their turn among the non-preemptible copies, now."""
        for q in self._pref:
            if not q.promoted:
                q.promoted = True
                self._fixed.append(q)
            if q is op:
                break
        self._poke()

    def _issue_engine(self, op: Op) -> None:
        op.seq = self._seq
        self._seq += 1
        op.done = self.env.event()
        if op.kind == "prefetch":
            self._pref.append(op)
            self.env.process(self._ready(op, None))
        else:
            self._fixed.append(op)
            gpu_req = self._res[GPU].request() if GPU in op.queues else None
            self.env.process(self._ready(op, gpu_req))

    def _ready(self, op: Op, gpu_req):
        """Marks op ready for the engine once its dependencies (and its turn on the compute stream) are done;
        an on-compute-stream copy holds the compute stream until it ends."""
        waits = [d.done for d in _deps(op.after)]
        if gpu_req is not None:
            waits.append(gpu_req)
        if waits:
            yield simpy.AllOf(self.env, waits)
        op.ok = True
        self._poke()
        if gpu_req is not None:
            yield op.done
            self._res[GPU].release(gpu_req)

    def _finish(self, op: Op, start: float) -> None:
        op.end = self.env.now
        if self.record:
            args = {"preemptible": True} if op.kind == "prefetch" else None
            self.events.append(Event(op.track, op.name, op.cat, start, op.end, args))
        op.done.succeed()

    def _engine(self):
        env = self.env
        fixed, pref = self._fixed, self._pref
        last = None  # what the engine ran last: a prefetch run right after itself continues its segment
        while True:
            yield _Settle(env)
            x = fixed[0] if fixed else None
            p = pref[0] if pref else None
            if x is not None and x.kind == "prefetch":  # a promoted prefetch's turn (it heads `pref` too)
                if x.ok:
                    if last is not x:
                        x.seg_start, x.seg_rem, x.seg_done = env.now, x.rem, 0
                    t0 = env.now
                    yield env.timeout(x.seg_start + x.seg_rem * x.chunk - env.now)
                    x.rem = 0
                    fixed.popleft()
                    pref.popleft()
                    self._finish(x, t0)
                    last = x
                    continue
            elif x is not None and x.ok:
                x.start = env.now
                yield env.timeout(x.dur)
                fixed.popleft()
                self._finish(x, x.start)
                last = x
                continue
            elif p is not None and p.ok and (x is None or p.seq < x.seq):  # one chunk
                if last is not p:
                    p.seg_start, p.seg_rem, p.seg_done = env.now, p.rem, 0
                t0 = env.now
                yield env.timeout(p.seg_start + (p.seg_done + 1) * p.chunk - env.now)
                p.seg_done += 1
                p.rem -= 1
                if p.rem == 0:
                    pref.popleft()
                    if p.promoted:
                        fixed.remove(p)
                    self._finish(p, t0)
                elif self.record:
                    self.events.append(Event(H2D, p.name, p.cat, t0, env.now, {"preemptible": True}))
                last = p
                continue
            last = None
            if not self._wake.triggered:
                yield self._wake
            self._wake = env.event()
