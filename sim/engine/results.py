"""Results of a replay: a JSON summary, a per-step table (pandas) and the recorded timeline events."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from simmoe.engine.config import ReplayConfig
from simmoe.engine.memory import MemoryPlan
from simmoe.engine.planner import PlanCounts
from simmoe.engine.result_views import ResultViews
from simmoe.engine.schedule import DECODE, RowIndex
from simmoe.engine.tiers import SUMMARY_KEYS as TIER_SUMMARY_KEYS
from simmoe.engine.timeline import Counters

# Every latency distribution in a summary is {mean, p50, p90, p95, p99} in ms.
PERCENTILES = ("mean", "p50", "p90", "p95", "p99")
LATENCY_KEYS = ("tpot_ms", "step_ms", "ttft_ms", "queue_ms", "e2e_ms")
# The summary's shape, in order: top-level key -> its sub-keys (() for a plain value). This is the one list
# that tools checking a metric name (plan's SLOs) use; tests/test_plan.py checks that a real summary's
# flattened keys equal summary_keys().
_SUMMARY_HEAD = ("trace", "model", "hw", "runtime", "policy", "engine", "batch", "host_memory", "copy_stream",
                 "prefetch_chunk_mb", "requests", "tokens", "prefill_tokens", "decode_tokens", "steps",
                 "activations", "accesses", "hits", "misses", "hit_rate", "routing_fidelity", "expert_bytes",
                 "cpu_experts", "copies", "prefetches", "prefetch_used", "bytes_h2d", "bytes_d2h", "cache_slots",
                 "makespan_s")
SUMMARY_LAYOUT: tuple[tuple[str, tuple[str, ...]], ...] = (
    *((k, ()) for k in _SUMMARY_HEAD),
    ("tpot_ms", PERCENTILES), ("step_ms", PERCENTILES), ("ttft_ms", PERCENTILES), ("tokens_per_s", ()),
    ("arrivals", ()), ("rate", ()), ("requests_per_s", ()), ("queue_ms", PERCENTILES), ("e2e_ms", PERCENTILES),
    ("gpu_busy", ()), ("pcie_busy", ()), ("cpu_busy", ()), ("stall_ms", ("copy", "dispatch", "cpu")),
    ("peak_gpu_mem_bytes", ()), ("gpu_mem_usable_bytes", ()), ("wall_s", ()),
)
# present only when the run has a per-request SLO (slo_ttft_ms / slo_tpot_ms): after requests_per_s's group
SLO_LAYOUT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("slo", ("ttft_ms", "tpot_ms")), ("slo_attainment", ()), ("goodput_requests_per_s", ()),
    ("goodput_tokens_per_s", ()),
)
# keys that describe the run rather than measure it (not SLO metrics); wall_s is the simulator's own time
DESCRIPTIVE_KEYS = frozenset({"trace", "model", "hw", "runtime", "policy", "engine", "batch", "host_memory",
                              "copy_stream", "prefetch_chunk_mb", "arrivals", "rate", "slo.ttft_ms", "slo.tpot_ms",
                              "wall_s", "host_tier.active", "host_tier.host_memory_rule", "host_tier.policy",
                              "host_tier.placement", "host_tier.placement_reads_future", "host_tier.gpudirect"})


def summary_keys(slo: bool = False, tier: bool = False) -> tuple[str, ...]:
    """The flattened keys (`tpot_ms.p95`) of Result.summary; `slo`: a run with slo_ttft_ms / slo_tpot_ms;
    `tier`: a run whose summary has the SSD tier's `host_tier` block (tiers.tier_summary), last."""
    layout = list(SUMMARY_LAYOUT)
    if slo:
        at = [k for k, _ in layout].index("e2e_ms") + 1
        layout[at:at] = SLO_LAYOUT
    if tier:
        layout.append(("host_tier", TIER_SUMMARY_KEYS))
    return tuple(f"{k}.{s}" if s else k for k, subs in layout for s in (subs or ("",)))


def metric_keys(slo: bool = False, tier: bool = True) -> tuple[str, ...]:
    """The summary keys that measure a run (what an SLO may bound); the SSD tier's are there for profiles
    that have one (elsewhere an SLO on them has no value and is not met)."""
    return tuple(k for k in summary_keys(slo, tier) if k not in DESCRIPTIVE_KEYS)


STEP_COLUMNS = (
    "step", "kind", "tokens", "start_us", "end_us", "latency_us", "hits", "misses", "cpu_experts", "copies",
    "bytes_h2d", "gpu_busy_us", "h2d_busy_us", "d2h_busy_us", "cpu_busy_us", "stall_copy_us", "stall_dispatch_us",
    "stall_cpu_us", "cache_occupancy", "kv_bytes",
)
# with the SSD tier in use (tiers.py), per step: the SSD's busy time, bytes read, host-tier hits and misses and
# the experts in host memory after the step
TIER_COLUMNS = ("nvme_busy_us", "nvme_bytes", "host_hits", "host_misses", "host_occupancy")


class StepLog:
    """Per-step rows, plus the per-request token times TTFT and TPOT are computed from."""

    def __init__(self, tier: bool = False) -> None:
        self.cols: dict[str, list] = {c: [] for c in STEP_COLUMNS + (TIER_COLUMNS if tier else ())}
        self.admit: dict[int, float] = {}
        self.first_token: dict[int, float] = {}
        self.last_token: dict[int, float] = {}
        self.itl: list[float] = []  # inter-token latency of every decode token
        self.intervals: dict[int, int] = {}  # per request: how many of `itl` are its own
        self.active_ctx: dict[int, int] = {}

    def add(self, step, t0: float, t1: float, c: Counters, counts0: tuple, st, ri, spec) -> None:
        col = self.cols
        h0, m0, c0, cp0, b0 = counts0
        col["step"].append(step.index)
        col["kind"].append("decode" if step.kind == DECODE else "prefill")
        col["tokens"].append(len(step.rows))
        col["start_us"].append(t0)
        col["end_us"].append(t1)
        col["latency_us"].append(t1 - t0)
        col["hits"].append(st.hits - h0)
        col["misses"].append(st.misses - m0)
        col["cpu_experts"].append(st.cpu_experts - c0)
        col["copies"].append(st.copies - cp0)
        col["bytes_h2d"].append(st.bytes_h2d - b0)
        col["gpu_busy_us"].append(c.gpu_busy)
        col["h2d_busy_us"].append(c.h2d_busy)
        col["d2h_busy_us"].append(c.d2h_busy)
        col["cpu_busy_us"].append(c.cpu_busy)
        col["stall_copy_us"].append(c.stall_copy)
        col["stall_dispatch_us"].append(c.stall_dispatch)
        col["stall_cpu_us"].append(c.stall_cpu)
        col["cache_occupancy"].append(st.occupancy)
        for rid in step.admitted:
            self.admit[rid] = t0
        pos = ri.position[step.rows]
        for rid, p in zip(step.requests, pos.tolist()):
            self.active_ctx[rid] = p + 1
        col["kv_bytes"].append(sum(self.active_ctx.values()) * spec.kv_bytes_per_token())
        if step.kind == DECODE:
            for rid in step.requests:
                last = self.last_token.get(rid)
                if last is None:
                    self.first_token[rid] = t1
                else:
                    self.itl.append(t1 - last)
                    self.intervals[rid] = self.intervals.get(rid, 0) + 1
                self.last_token[rid] = t1
        elif step.finished or _is_last_prefill(step, ri):
            rid = step.requests[0]
            self.first_token[rid] = t1
            self.last_token[rid] = t1
        for rid in step.finished:
            self.active_ctx.pop(rid, None)

    def add_tier(self, c: Counters, before: tuple[int, int, int], tier) -> None:
        """The SSD tier's part of the step just added (`before`: the tier's snapshot() at its start)."""
        col = self.cols
        h0, m0, b0 = before
        col["nvme_busy_us"].append(c.nvme_busy)
        col["nvme_bytes"].append(tier.nvme_bytes - b0)
        col["host_hits"].append(tier.hits - h0)
        col["host_misses"].append(tier.misses - m0)
        col["host_occupancy"].append(len(tier.cache))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.cols)


@dataclass(frozen=True)
class RunRecord:
    """What a finished run hands to `Result.build`: plain values, no engine objects."""

    trace: str  # the trace's source
    model: str
    hw: str
    runtime: str
    policy: str
    cfg: ReplayConfig
    host_memory: str  # as run: the replay setting, else the runtime's
    copy_stream: str
    chunk_mb: float | None  # prefetch copies as preemptible chunks of this many MiB (None: FIFO)
    ri: RowIndex
    arrival_us: np.ndarray
    online: bool
    routing_fidelity: float
    activations: int  # non -1 expert slots of the trace as served
    memory: MemoryPlan
    counts: PlanCounts
    log: StepLog
    events: list
    provenance: dict = field(default_factory=dict)  # simmoe.provenance.run_provenance
    tier: dict | None = None  # the SSD tier's summary (tiers.py) where the profile has one; None otherwise


def _is_last_prefill(step, ri) -> bool:
    row = int(step.rows[-1])
    r = np.searchsorted(ri.starts, row, side="right") - 1  # starts are in id order, not row order
    idx = np.flatnonzero((ri.starts <= row) & (row < ri.stops))
    r = int(idx[0]) if len(idx) else r
    return row == ri.starts[r] + ri.prefill_len[r] - 1


def request_times(rec: RunRecord, log: StepLog) -> dict[str, np.ndarray]:
    """Per completed request (in the order their first tokens came): id, token times and latencies in
    microseconds. The summary's TTFT, queueing and end-to-end percentiles, SLO attainment and the requests
    table (`Result.requests`) are all taken from these.

    TTFT counts from arrival in a serving run and from admission in a closed-loop replay (everything arrives
    at t=0). A request's TPOT is its mean time between consecutive tokens: (last - first token) over its
    inter-token intervals, which are its share of the summary's TPOT samples (NaN with a single token)."""
    arrival = dict(zip(rec.ri.ids.tolist(), rec.arrival_us.tolist()))
    prompt = dict(zip(rec.ri.ids.tolist(), rec.ri.prefill_len.tolist()))
    ndec = dict(zip(rec.ri.ids.tolist(), (rec.ri.stops - rec.ri.starts - rec.ri.prefill_len).tolist()))
    done = [r for r in log.first_token if r in log.admit]
    since = arrival if rec.online else log.admit
    iv = np.array([log.intervals.get(r, 0) for r in done], dtype=np.int64)
    span = np.array([log.last_token[r] - log.first_token[r] for r in done], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(iv > 0, span / np.maximum(iv, 1), np.nan)
    return {
        "request": np.array(done, dtype=np.int64),
        "arrival": np.array([arrival[r] for r in done], dtype=float),
        "admit": np.array([log.admit[r] for r in done], dtype=float),
        "first_token": np.array([log.first_token[r] for r in done], dtype=float),
        "end": np.array([log.last_token[r] for r in done], dtype=float),
        "ttft": np.array([log.first_token[r] - since[r] for r in done], dtype=float),
        "tpot": tpot,
        "e2e": np.array([log.last_token[r] - arrival[r] for r in done], dtype=float),
        "queue": np.array([log.admit[r] - arrival[r] for r in done], dtype=float),
        "prompt_tokens": np.array([prompt[r] for r in done], dtype=np.int64),
        "decode_tokens": np.array([ndec[r] for r in done], dtype=np.int64),
        "intervals": iv,
    }


def slo_met(cfg: ReplayConfig, t: dict[str, np.ndarray]) -> np.ndarray | None:
    """Per request: met both SLOs given (None without SLOs). A request with one token has no TPOT to miss."""
    if cfg.slo_ttft_ms is None and cfg.slo_tpot_ms is None:
        return None
    ok = np.ones(len(t["request"]), bool)
    if cfg.slo_ttft_ms is not None:
        ok &= t["ttft"] / 1e3 <= cfg.slo_ttft_ms
    if cfg.slo_tpot_ms is not None:
        ok &= ~(t["tpot"] / 1e3 > cfg.slo_tpot_ms)
    return ok


def request_frame(t: dict[str, np.ndarray], met: np.ndarray | None) -> pd.DataFrame:
    """The requests table (id order): times in s from the run's start, latencies in ms."""
    df = pd.DataFrame({
        "request": t["request"],
        "arrival_s": t["arrival"] / 1e6,
        "admit_s": t["admit"] / 1e6,
        "first_token_s": t["first_token"] / 1e6,
        "end_s": t["end"] / 1e6,
        "ttft_ms": t["ttft"] / 1e3,
        "tpot_ms": t["tpot"] / 1e3,
        "e2e_ms": t["e2e"] / 1e3,
        "queue_ms": t["queue"] / 1e3,
        "prompt_tokens": t["prompt_tokens"],
        "decode_tokens": t["decode_tokens"],
        "intervals": t["intervals"],
    })
    if met is not None:
        df["slo_met"] = met
    return df.sort_values("request", kind="stable").reset_index(drop=True)


def _serving_metrics(rec: RunRecord, t: dict[str, np.ndarray], met: np.ndarray | None,
                     makespan_us: float) -> dict[str, Any]:
    """Queueing and end-to-end percentiles, SLO attainment and goodput over the requests."""
    cfg = rec.cfg
    n = len(t["request"])
    out: dict[str, Any] = {
        "arrivals": cfg.arrivals,
        "rate": cfg.rate,
        "requests_per_s": n / (makespan_us / 1e6) if makespan_us else 0.0,
        "queue_ms": _pct(t["queue"]),
        "e2e_ms": _pct(t["e2e"]),
    }
    if met is not None:
        good_tokens = int(t["decode_tokens"][met].sum())
        out["slo"] = {"ttft_ms": cfg.slo_ttft_ms, "tpot_ms": cfg.slo_tpot_ms}
        out["slo_attainment"] = float(met.mean()) if n else 0.0
        out["goodput_requests_per_s"] = float(met.sum()) / (makespan_us / 1e6) if makespan_us else 0.0
        out["goodput_tokens_per_s"] = good_tokens / (makespan_us / 1e6) if makespan_us else 0.0
    return out


def _pct(values_us) -> dict[str, float | None]:
    a = np.asarray(values_us, dtype=float) / 1e3
    if a.size == 0:
        return dict.fromkeys(PERCENTILES)
    q = np.percentile(a, [int(p[1:]) for p in PERCENTILES[1:]])
    return {"mean": float(a.mean()), **{p: float(v) for p, v in zip(PERCENTILES[1:], q)}}


@dataclass
class Result(ResultViews):
    """A run's results: `summary` (the JSON figures), `steps` (per step), `layers` (per MoE layer), the
    recorded timeline `events`; `to_frame()`, `write_timeline()` and Jupyter's view: result_views.py."""

    summary: dict[str, Any]
    steps: pd.DataFrame
    events: list = field(default_factory=list)
    memory: dict[str, int] = field(default_factory=dict)
    layers: pd.DataFrame | None = None  # per MoE layer: hits, misses, cpu_experts
    requests: pd.DataFrame | None = None  # per completed request: token times, latencies (request_frame)
    # inputs and settings that produced it (simmoe.provenance); the CLI adds `command`
    provenance: dict[str, Any] = field(default_factory=dict)
    timeline_steps: tuple[int, int] | None = None  # the [start, stop) steps whose events were recorded

    @classmethod
    def build(cls, rec: RunRecord, wall_s: float) -> Result:
        log, st, cfg = rec.log, rec.counts, rec.cfg
        df = log.frame()
        makespan_us = float(df["end_us"].iloc[-1]) if len(df) else 0.0
        dec = df[df["kind"] == "decode"]
        decode_tokens = int(dec["tokens"].sum())
        accesses = st.hits + st.misses
        times = request_times(rec, log)
        met = slo_met(cfg, times)
        serving = _serving_metrics(rec, times, met, makespan_us)
        busy = lambda col: float(df[col].sum()) / makespan_us if makespan_us else 0.0  # noqa: E731
        fast = cfg.engine == "fast"
        plan = rec.memory
        peak_mem = plan.fixed - plan.kv_reserved + int(df["kv_bytes"].max() if len(df) else 0) \
            + st.peak_occupancy * plan.expert_bytes
        stall = {k: (float(df[f"stall_{k}_us"].sum()) / 1e3 if fast else None) for k in ("copy", "dispatch", "cpu")}
        summary: dict[str, Any] = {
            "trace": rec.trace,
            "model": rec.model,
            "hw": rec.hw,
            "runtime": rec.runtime,
            "policy": rec.policy,
            "engine": cfg.engine,
            "batch": cfg.batch,
            "host_memory": rec.host_memory,
            "copy_stream": rec.copy_stream,
            "prefetch_chunk_mb": rec.chunk_mb,  # None: prefetch copies are FIFO, not preemptible
            "requests": int(len(rec.ri.ids)),
            "tokens": int(df["tokens"].sum()),
            "prefill_tokens": int(df["tokens"].sum()) - decode_tokens,
            "decode_tokens": decode_tokens,
            "steps": int(len(df)),
            "activations": rec.activations,
            "accesses": accesses,
            "hits": st.hits,
            "misses": st.misses,
            "hit_rate": st.hits / accesses if accesses else 0.0,
            "routing_fidelity": rec.routing_fidelity,
            "expert_bytes": plan.expert_bytes,
            "cpu_experts": st.cpu_experts,
            "copies": st.copies,
            "prefetches": st.prefetches,
            "prefetch_used": st.prefetch_used,
            "bytes_h2d": st.bytes_h2d,
            "bytes_d2h": st.bytes_d2h,
            "cache_slots": plan.cache_slots,
            "makespan_s": makespan_us / 1e6,
            "tpot_ms": _pct(log.itl),
            "step_ms": _pct(dec["latency_us"]) if len(dec) else _pct([]),
            "ttft_ms": _pct(times["ttft"]),
            "tokens_per_s": decode_tokens / (makespan_us / 1e6) if makespan_us else 0.0,
            **serving,
            "gpu_busy": busy("gpu_busy_us"),
            "pcie_busy": busy("h2d_busy_us"),
            "cpu_busy": busy("cpu_busy_us"),
            "stall_ms": stall,
            "peak_gpu_mem_bytes": int(peak_mem),
            "gpu_mem_usable_bytes": plan.usable,
            "wall_s": wall_s,
        }
        if rec.tier is not None:
            tier = dict(rec.tier)
            if "nvme_busy_us" in df:
                tier["nvme_busy"] = busy("nvme_busy_us")
            summary["host_tier"] = tier
        L = len(st.layer_hits)
        layers = pd.DataFrame({"layer": np.arange(L), "hits": st.layer_hits, "misses": st.layer_misses,
                               "cpu_experts": st.layer_cpu})
        return cls(summary, df, list(rec.events), plan.as_dict(), layers, request_frame(times, met),
                   dict(rec.provenance))

    def to_json(self) -> str:
        """The summary, with the run's provenance under `provenance`."""
        data = {**self.summary, "provenance": self.provenance} if self.provenance else self.summary
        return json.dumps(_clean(data), indent=2, sort_keys=False)

    def format(self) -> str:
        """The readable summary table `simmoe replay` prints."""
        s = self.summary
        t, f = s["tpot_ms"], s["ttft_ms"]

        def ms(x):
            return "-" if x is None else f"{x:,.2f}"

        def row(name: str, pct: dict) -> str:
            return f"  {name:<12}" + "".join(f" {ms(pct[p]):>9}" for p in PERCENTILES)

        lines = [
            f"simmoe replay  {s['trace']}",
            f"  model {s['model']}   hw {s['hw']}   runtime {s['runtime']}   policy {s['policy']}   "
            f"batch {s['batch']}   engine {s['engine']}",
            "",
            f"  requests {s['requests']:,}   tokens {s['tokens']:,} (prefill {s['prefill_tokens']:,}, "
            f"decode {s['decode_tokens']:,})   steps {s['steps']:,}",
            f"  expert accesses {s['accesses']:,}   hits {s['hits']:,}   misses {s['misses']:,}   "
            f"hit rate {100 * s['hit_rate']:.1f}%   cpu-computed {s['cpu_experts']:,}",
            *_tier_lines(s.get("host_tier")),
            f"  cache {s['cache_slots']:,} experts   H2D {s['bytes_h2d'] / 1e9:,.2f} GB   "
            f"prefetches {s['prefetches']:,} (used {s['prefetch_used']:,})"
            + (f"   routing fidelity {100 * s['routing_fidelity']:.1f}% of gate mass"
               if s["routing_fidelity"] < 1.0 else ""),
            "",
            "  latency (ms)" + "".join(f" {p:>9}" for p in PERCENTILES),
            row("TPOT", t),
            row("TTFT", f),
            *([row("queueing", s["queue_ms"]),
               row("E2E", s["e2e_ms"]),
               f"  arrivals {s['arrivals']}" + (f" at {s['rate']:g} req/s" if s["rate"] else "")
               + f"   completed {s['requests_per_s']:,.3f} req/s"] if s["arrivals"] != "closed" else []),
            *([f"  SLO attainment {100 * s['slo_attainment']:.1f}%   goodput "
               f"{s['goodput_requests_per_s']:,.3f} req/s ({s['goodput_tokens_per_s']:,.1f} tok/s)"]
              if "slo_attainment" in s else []),
            "",
            f"  throughput {s['tokens_per_s']:,.2f} tok/s   simulated time {s['makespan_s']:,.3f} s",
            f"  busy: GPU {100 * s['gpu_busy']:.1f}%   PCIe H2D {100 * s['pcie_busy']:.1f}%   "
            f"CPU {100 * s['cpu_busy']:.1f}%" + ("   (GPU and H2D: the mean GPU)" if "parallel" in s else ""),
        ]
        st = s["stall_ms"]
        if st["copy"] is not None:
            n = max(s["decode_tokens"] + s["prefill_tokens"], 1)
            lines.append(f"  GPU stalls per token (ms): copy {st['copy'] / n:,.3f}   dispatch "
                         f"{st['dispatch'] / n:,.3f}   cpu {st['cpu'] / n:,.3f}"
                         + ("   (summed over the GPUs)" if "parallel" in s else ""))
        lines.append(f"  peak GPU memory {s['peak_gpu_mem_bytes'] / 2**30:,.2f} GiB of "
                     f"{s['gpu_mem_usable_bytes'] / 2**30:,.2f} GiB usable"
                     + (" (the fullest GPU)" if "parallel" in s else ""))
        if "parallel" in s:  # several GPUs: per GPU and per link (sim/engine/parallel.py)
            from simmoe.engine.parallel import format_devices

            lines.extend(format_devices(s["parallel"]))
        lines.append(f"  simulator wall time {s['wall_s']:.2f} s")
        return "\n".join(lines)


def _tier_lines(t: dict | None) -> list[str]:
    """The SSD tier's lines of the table, only when it is used (experts exceed host memory)."""
    if not t or not t["active"]:
        return []
    n = t["host_hits"] + t["host_misses"]
    return [f"  SSD tier: host memory {t['host_memory_gib']:,.1f} GiB = {t['host_capacity_experts']:,} of "
            f"{t['experts']:,} experts ({t['policy']}, placement {t['placement']}"
            + (", oracle: reads the trace" if t["placement_reads_future"] else "")
            + (", GPUDirect Storage" if t["gpudirect"] else "") + ")",
            f"  host tier hits {t['host_hits']:,}   misses {t['host_misses']:,}   hit rate "
            f"{100 * t['host_hits'] / n if n else 0.0:.1f}%   NVMe {t['nvme_bytes'] / 1e9:,.2f} GB read "
            f"({t['expert_read_ms']:,.2f} ms per expert), busy {100 * t['nvme_busy']:.1f}%"]


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return x
