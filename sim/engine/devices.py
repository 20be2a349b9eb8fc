"""Timelines of a machine with several GPUs: a compute stream and copy engines per GPU, switch uplinks as
shared resources, and copies between GPUs; as a recurrence (`MultiTimeline`) and in SimPy
(`MultiSimpyTimeline`, the reference: tests check both give the same times).

Model (sim/hw/topology.py describes the machine):
- One host thread drives every GPU (llama.cpp's and accelerate's layer split run in one process and thread;
  the expert-parallel mode is played the same way, see parallel.py). Its clock carries over from one GPU's
  work to the next.
- Each GPU has its own compute stream and H2D / D2H copy engines (the profile's `pcie:` link and
  `copy_engines`), so two GPUs copy from the host at the same time on their own links.
- GPUs behind one PCIe switch share its uplink to the CPU, one queue per direction: a host copy of such a
  GPU occupies its copy engine and the uplink, and copies crossing the uplink go one after another, each at
  full bandwidth (FIFO). Bandwidth sharing (two copies at half speed each) would end the pair's second copy at
  the same time but the first one later, and would make a copy's end depend on copies issued after it,
  which a one-pass recurrence cannot express; FIFO keeps the link's total throughput and busy time right.
- A copy between GPUs: with `p2p` one direct copy (`p2p_gbps`, `p2p_latency_us`) holding the source's D2H
  engine, the destination's H2D engine and, over PCIe, the uplinks on its path (none within one switch,
  none over NVLink); without `p2p` (GeForce) the driver stages it through host memory: a D2H copy on the
  source, then an H2D copy on the destination.
- `wait(handle)`: the current GPU's compute stream waits for an event (cudaStreamWaitEvent): kernels issued
  after it start no earlier than the handle; the gap is counted as `stall_peer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import simpy

from simmoe.engine.simpy_timeline import Op, SimpyTimeline
from simmoe.engine.timeline import CPU, D2H, GPU, H2D, Counters, Event, HostCosts, Timeline
from simmoe.hw.topology import TopologySpec


@dataclass
class DeviceCounters(Counters):
    stall_peer: float = 0.0  # compute stream idle waiting for another GPU (a stage's input, experts' outputs)


def link_names(topo: TopologySpec | None, n: int) -> list[str]:
    """The shared links of the first n GPUs: one per switch that holds any of them."""
    if topo is None:
        return []
    return [f"switch{s}" for s, group in enumerate(topo.switches) if any(g < n for g in group)]


class Links:
    """Switch uplinks (one FIFO queue per direction) and what crossed them (busy microseconds)."""

    def __init__(self, topo: TopologySpec | None, n: int) -> None:
        self.topo = topo
        self.names = link_names(topo, n)
        self.free = {(s, d): 0.0 for s in self.names for d in (H2D, D2H)}
        self.busy = {(s, d): 0.0 for s in self.names for d in (H2D, D2H)}

    def of(self, gpu: int) -> str | None:
        s = self.topo.switch_of(gpu) if self.topo is not None else None
        return None if s is None else f"switch{s}"

    def peer_path(self, src: int, dst: int) -> list[tuple[str, str]]:
        """Uplink queues a direct PCIe copy src -> dst crosses (up from src's switch, down into dst's)."""
        a, b = self.of(src), self.of(dst)
        if self.topo is None or self.topo.nvlink or (a is not None and a == b):
            return []
        return ([(a, D2H)] if a else []) + ([(b, H2D)] if b else [])


class DeviceTimeline(Timeline):
    """One GPU's queues; its host copies also wait for (and hold) its switch uplink."""

    def __init__(self, host: HostCosts, copy_engines: int, links: Links, gpu: int) -> None:
        super().__init__(host, copy_engines)
        self.c = DeviceCounters()
        self.links = links
        self.gpu = gpu
        self.uplink = links.of(gpu)

    def _stall(self, wait: str, us: float) -> None:
        if wait == "peer":
            self.c.stall_peer += us
        else:
            super()._stall(wait, us)

    def copy(self, us: float, direction: str = H2D, after: float | None = None, on_compute: bool = False,
             blocking: bool = False, name: str = "copy") -> float:
        up = self.uplink
        if up is None:
            return super().copy(us, direction, after, on_compute, blocking, name)
        key = (up, direction)
        t = self.links.free[key]  # the uplink is one more queue this copy waits for
        if direction == H2D and t > self.h2d_free:
            self.h2d_free = t
        elif direction == D2H and t > self.d2h_free:
            self.d2h_free = t
        end = super().copy(us, direction, after, on_compute, blocking, name)
        self.links.free[key] = end
        self.links.busy[key] += us
        if self.record:
            self.events.append(Event(f"{up} {direction}", name, "link", end - us, end))
        return end


_TRACKS = {GPU: "gpu", H2D: "h2d", D2H: "d2h"}


@dataclass
class MultiTimeline:
    """N `DeviceTimeline`s driven by one host thread; `set_device` says which GPU the next calls address."""

    host: HostCosts
    copy_engines: int
    n: int
    topo: TopologySpec | None = None
    cur: int = 0
    c: Counters = field(default_factory=DeviceCounters)  # the step's totals (set by the step timing)

    def __post_init__(self) -> None:
        self.cpu_free = 0.0  # the CPU worker is the host's, shared by every GPU
        self.links = Links(self.topo, self.n)
        self.devs = [DeviceTimeline(self.host, self.copy_engines, self.links, g) for g in range(self.n)]
        self.peer_events: list[Event] = []
        self._record = False

    # ---- device selection and the shared host clock ------------------------------------------------------
    def set_device(self, g: int) -> None:
        if g != self.cur:
            h = self.devs[self.cur].h
            d = self.devs[g]
            d.h = h
            self.cur = g
            if d.gpu_free < h:  # idle while the host drove the other GPUs: a wait for them, not a launch stall
                d.c.stall_peer += h - d.gpu_free  # (no start moves: its next work is issued after h anyway)
                d.gpu_free = h

    @property
    def h(self) -> float:
        return self.devs[self.cur].h

    @property
    def now(self) -> float:
        return self.h

    @property
    def record(self) -> bool:
        return self._record

    @record.setter
    def record(self, on: bool) -> None:
        self._record = on
        for d in self.devs:
            d.record = on

    def advance_host(self, t: float) -> None:
        self.devs[self.cur].advance_host(t)

    def idle_at(self) -> float:
        return max(max(d.idle_at() for d in self.devs), max(self.links.free.values(), default=0.0), self.cpu_free)

    @property
    def events(self) -> list[Event]:
        out = []
        for g, d in enumerate(self.devs):
            for e in d.events:
                track = f"{_TRACKS[e.track]}{g}" if e.track in _TRACKS else e.track
                out.append(Event(track, e.name, e.cat, e.start, e.end, e.args))
        return out + self.peer_events

    # ---- the current GPU's work (Timeline's methods) -------------------------------------------------------
    def join(self, *handles):
        return self.devs[self.cur].join(*handles)

    def host_work(self, us: float, name: str = "host") -> None:
        self.devs[self.cur].host_work(us, name)

    def sync(self, handle=None, name: str = "sync") -> None:
        self.devs[self.cur].sync(handle, name)

    def kernels(self, n, each_us, after=None, name="kernel", cat="compute", wait="copy"):
        return self.devs[self.cur].kernels(n, each_us, after, name, cat, wait)

    def copy(self, us, direction=H2D, after=None, on_compute=False, blocking=False, name="copy"):
        return self.devs[self.cur].copy(us, direction, after, on_compute, blocking, name)

    def cpu(self, us, after=None, name="cpu expert"):
        """The host's CPU expert worker: one queue whichever GPU's layer it serves."""
        d = self.devs[self.cur]
        d.cpu_free = self.cpu_free
        end = d.cpu(us, after, name)
        self.cpu_free = end
        return end

    def stream_end(self) -> float:
        """Handle of the last work on the current GPU's compute stream."""
        return self.devs[self.cur].gpu_free

    def wait(self, handle: float | None) -> None:
        """The current GPU's compute stream waits for `handle` (cudaStreamWaitEvent)."""
        d = self.devs[self.cur]
        if handle is not None and handle > d.gpu_free:
            t0 = d.gpu_free if d.gpu_free > d.h else d.h
            if handle > t0:
                d.c.stall_peer += handle - t0
            d.gpu_free = handle

    def peer_copy(self, src: int, dst: int, us: float, after: float | None, name: str = "peer copy") -> float:
        """A direct copy src -> dst of `us` microseconds (p2p); returns its end. The host issues it."""
        a, b = self.devs[src], self.devs[dst]
        cur = self.devs[self.cur]
        cur.h += self.host.copy_issue_us
        h = cur.h
        start = h
        for t in (a.d2h_free if self.copy_engines >= 2 else max(a.h2d_free, a.d2h_free),
                  b.h2d_free if self.copy_engines >= 2 else max(b.h2d_free, b.d2h_free)):
            if t > start:
                start = t
        path = self.links.peer_path(src, dst)
        for key in path:
            if self.links.free[key] > start:
                start = self.links.free[key]
        if after is not None and after > start:
            start = after
        end = start + us
        for dev, direction in ((a, D2H), (b, H2D)):
            if dev.copy_engines < 2:
                dev.h2d_free = dev.d2h_free = end
            elif direction == D2H:
                dev.d2h_free = end
            else:
                dev.h2d_free = end
        a.c.d2h_busy += us
        b.c.h2d_busy += us
        for key in path:
            self.links.free[key] = end
            self.links.busy[key] += us
        if self._record:
            self.peer_events.append(Event(f"p2p {src}->{dst}", name, "copy", start, end))
            for s, direction in path:
                self.peer_events.append(Event(f"{s} {direction}", name, "link", start, end))
        return end


class MultiSimpyTimeline(SimpyTimeline):
    """`SimpyTimeline` with a compute stream and copy engines per GPU and the switch uplinks as resources
    (an op holds every queue it names, each served in issue order)."""

    def __init__(self, env: simpy.Environment, host: HostCosts, copy_engines: int, n: int,
                 topo: TopologySpec | None, record: bool = False) -> None:
        super().__init__(env, host, copy_engines, record=record)
        self.n = n
        self.cur = 0
        self.links = Links(topo, n)
        self.dc = [DeviceCounters() for _ in range(n)]
        self.c = DeviceCounters()
        for g in range(n):
            h2d = simpy.Resource(env, 1)
            self._res[f"gpu{g}"] = simpy.Resource(env, 1)
            self._res[f"h2d{g}"] = h2d
            self._res[f"d2h{g}"] = h2d if copy_engines < 2 else simpy.Resource(env, 1)
        for s in self.links.names:
            for d in (H2D, D2H):
                self._res[f"{s} {d}"] = simpy.Resource(env, 1)
        self._last = [None] * n

    def set_device(self, g: int) -> None:
        self.cur = g

    def stream_end(self):
        return self._last[self.cur]

    def sync(self, handle=None, name: str = "sync") -> None:
        target = handle if handle is not None else self._last[self.cur]
        self._program.append(Op("sync", (), 0.0, target, 0.0, name=name))

    def kernels(self, n, each_us, after=None, name="kernel", cat="compute", wait="copy"):
        q = f"gpu{self.cur}"
        op = None
        for i in range(n):
            op = Op("kernel", (q,), each_us, after if i == 0 else None, self.host.launch_us, name=name, cat=cat,
                    track=q)
            self._program.append(op)
        self._last[self.cur] = op
        self.dc[self.cur].gpu_busy += n * each_us
        return op

    def copy(self, us, direction=H2D, after=None, on_compute=False, blocking=False, name="copy", **_):
        g = self.cur
        eng = f"{direction}{g}"
        queues = [eng]
        up = self.links.of(g)
        if up is not None:
            queues.append(f"{up} {direction}")
            self.links.busy[(up, direction)] += us
        if on_compute:
            queues.append(f"gpu{g}")
        op = Op("copy", tuple(queues), us, after, self.host.copy_issue_us, blocking=blocking, name=name,
                cat="copy", track=eng)
        self._program.append(op)
        if on_compute:
            self._last[g] = op
        if direction == H2D:
            self.dc[g].h2d_busy += us
        else:
            self.dc[g].d2h_busy += us
        return op

    def cpu(self, us, after=None, name="cpu expert"):
        op = Op("cpu", (CPU,), us, after, 0.0, name=name, cat="cpu", track=CPU)  # one CPU worker for all GPUs
        self._program.append(op)
        self.dc[self.cur].cpu_busy += us
        return op

    def wait(self, handle) -> None:
        if handle is not None:  # a zero-length op on the compute stream that waits for the handle
            q = f"gpu{self.cur}"
            op = Op("kernel", (q,), 0.0, handle, 0.0, name="wait", cat="wait", track=q)
            self._program.append(op)
            self._last[self.cur] = op  # a sync on the stream waits for it too

    def peer_copy(self, src: int, dst: int, us: float, after, name: str = "peer copy"):
        path = self.links.peer_path(src, dst)
        queues = (f"d2h{src}", f"h2d{dst}") + tuple(f"{s} {d}" for s, d in path)
        for key in path:
            self.links.busy[key] += us
        op = Op("copy", queues, us, after, self.host.copy_issue_us, name=name, cat="copy", track=f"p2p {src}->{dst}")
        self._program.append(op)
        self.dc[src].d2h_busy += us
        self.dc[dst].h2d_busy += us
        return op

    def _run(self, op: Op, reqs):
        yield from super()._run(op, reqs)
        if self.record and op.cat != "wait":  # a link's track shows what crossed it
            for q in op.queues:
                if " " in q:
                    self.events.append(Event(q, op.name, "link", op.start, op.end))


__all__ = ["CPU", "DeviceCounters", "DeviceTimeline", "Links", "MultiSimpyTimeline", "MultiTimeline"]
