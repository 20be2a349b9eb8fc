"""The same stream semantics as `timeline.Timeline`, played as SimPy processes, one event per kernel.

This is the reference the fast recurrence is checked against: every queue (GPU compute stream, H2D, D2H,
CPU worker) is a SimPy Resource of capacity 1 whose requests are made at issue time, so each queue serves
ops in issue order; an op holds its queue(s) while it waits for its dependency and while it runs. The host
is a process that pays launch costs as timeouts and blocks on syncs and blocking copies. Kernel groups are
expanded into their individual kernels.

The planner records a step's ops here (handles are `Op` objects) and `play()` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import simpy

from simmoe.engine.timeline import CPU, D2H, GPU, H2D, Counters, Event
from simmoe.hw.profile import HostSpec


class Op:
    __slots__ = ("kind", "queues", "dur", "after", "host_us", "blocking", "done", "start", "end", "name",
                 "cat", "track")

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
    host: HostSpec
    copy_engines: int = 2
    record: bool = False
    c: Counters = field(default_factory=Counters)
    events: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        gpu = simpy.Resource(self.env, 1)
        h2d = simpy.Resource(self.env, 1)
        d2h = h2d if self.copy_engines < 2 else simpy.Resource(self.env, 1)
        self._res = {GPU: gpu, H2D: h2d, D2H: d2h, CPU: simpy.Resource(self.env, 1)}
        self._program: list[Op] = []
        self._last_gpu: Op | None = None
        self.h = 0.0

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
            op = Op("kernel", (GPU,), each_us, after if i == 0 else None, self.host.launch_overhead_us,
                    name=name, cat=cat, track=GPU)
            self._program.append(op)
        self._last_gpu = op
        self.c.gpu_busy += n * each_us
        return op

    def copy(self, us: float, direction: str = H2D, after=None, on_compute: bool = False,
             blocking: bool = False, name: str = "copy") -> Op:
        queues = (direction, GPU) if on_compute else (direction,)
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

    def cpu(self, us: float, after=None, name: str = "cpu expert") -> Op:
        op = Op("cpu", (CPU,), us, after, 0.0, name=name, cat="cpu", track=CPU)
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
        for op in program:
            if op.host_us:
                yield env.timeout(op.host_us)
            if op.kind == "host":
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
