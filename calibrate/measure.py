"""The torch timing harness: what `simmoe calibrate` measures, as a plan of steps that return CSV rows.

torch is imported inside the functions only (it is an optional extra; `simmoe replay` never needs it).

GPU timings use CUDA events. Before each timed repetition the stream is parked on a short spin kernel
(`torch.cuda._sleep`) so that the host has queued the whole repetition before the start event fires: the
event interval is then GPU time only, without the host's launch cost, which is measured separately
(`host` rows) and modelled separately by the simulator (HostSpec). CPU timings use perf_counter around
synchronous calls. Every point is warmed up, repeated (fewer repetitions for slow points) and reported as
the median (with min and max). Expert weights rotate over enough copies to exceed the last-level cache, as
in serving, where an expert's weights come from DRAM/HBM, not from the cache.

Each row has the columns `COLUMNS` (measurements.COLUMNS); `kind` says what was measured:
    copy        one H2D / D2H copy (name h2d_pinned, h2d_pageable, d2h_pinned, d2h_pageable; size_bytes);
                on the CPU a memcpy between two host buffers, both ways (h2d_pageable, d2h_pageable)
    host        host time per operation (name launch, copy_issue, sync on cuda; dispatch, copy_issue, sync
                on cpu)
    kernel_min  GPU time of the smallest kernel (a 1-element add)
    membw       a large device-to-same-device copy (bytes = bytes read + written)
    gemm        a large square matmul (tokens = n, flops = 2 n^3)
    expert_ffn  one expert of a model's shape (name = shape key; tokens, flops, bytes = weight bytes;
                threads on the CPU, where each thread count asked for gets its own rows)
    expert_probe  the same at a quarter of the width: separates per-call overhead from bandwidth in the fit
    block       a dense block of a model (calibrate/blocks.py; name = its kernel-table key; tokens, context,
                ops = the eager ops it dispatches)
    overlap     copy alone, compute alone, both on two streams; d2h alone, h2d + d2h together

`measurements.from_frame` turns the rows into the measurements file `simmoe calibrate --from` reads.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simmoe.calibrate import compute_dtype, shape_key
from simmoe.calibrate.blocks import weight_copies
from simmoe.calibrate.measurements import COLUMNS  # noqa: F401 - the rows' columns, re-exported
from simmoe.models.spec import BYTES_PER_PARAM, ModelSpec

# How each table was taken (the measurements file's `method`).
METHOD = {
    "host": "host time of N eager operations in a row / N: cuda: launch = x.add_(1.0) on a 1-element GPU "
            "tensor, copy_issue = a 1 KiB pinned H2D copy_(non_blocking=True), the GPU drained before each "
            "repetition; sync = .item(); cpu: dispatch = x.add(1.0) on 16 floats, copy_issue = a 1 KiB copy_, "
            "sync = .item(); seconds per operation",
    "kernel_min": "GPU time of a 1-element add between CUDA events, the stream parked on a spin kernel first",
    "membw": "one large tensor copy_ on the device; bytes = read + written",
    "gemm": "F.linear(a, b) of two n x n matrices (2 n^3 FLOP)",
    "transfer": "cuda: tensor.copy_ between a touched host tensor (pinned: non_blocking) and a device tensor, "
                "CUDA events around each copy, the stream parked on a spin kernel first; cpu: copy_ between two "
                "touched host tensors (h2d: store -> slot, d2h: back), perf_counter; seconds",
    "gpu_ffn": "one routed expert, random weights rotating over more than the last-level cache: "
               "relu(x@w1.T)@w2.T or (act(x@w1.T)*(x@w3.T))@w2.T in eager PyTorch; CUDA events with the stream "
               "parked on a spin kernel first, so the time is the GPU's only (gpu_ffn_timing: gpu); probe rows: "
               "a quarter of the width, to separate the per-call overhead from the bandwidth",
    "cpu_ffn": "the same experts on the CPU with torch at each thread count; perf_counter around the call",
    "block": "a dense block of the model (calibrate/blocks.py: attention, router, head, gather) in eager "
             "PyTorch at each token count, weights rotating like the experts'; cuda: CUDA events with the stream "
             "parked first (GPU time only); cpu: perf_counter around the call; ops = the eager ops it dispatches",
    "overlap": "an H2D copy (pinned) on a second stream while square bf16 matmuls run on the compute stream: "
               "the copy alone, the matmuls alone (compute_s), both together; a D2H copy alone and H2D + D2H "
               "on two streams",
}

KIB, MIB, GIB = 2**10, 2**20, 2**30
SPIN_CYCLES = 1_000_000  # ~0.5 ms on a 2 GHz GPU: longer than the host needs to queue one repetition

Row = dict[str, Any]


@dataclass(frozen=True)
class Settings:
    quick: bool
    copy_sizes: tuple[int, ...]
    tokens: tuple[int, ...]
    probe_tokens: tuple[int, ...] = (1, 2)
    warmup: int = 2
    reps: int = 15
    min_reps: int = 3
    point_budget_s: float = 1.0  # stop repeating a point after this long once min_reps are in
    max_call_s: float = 5.0  # stop growing the token count once one call takes this long
    launch_n: int = 2000  # launches per host-cost repetition
    rotate_bytes: int = 256 * MIB  # expert weight copies rotate over at least this many bytes
    many_reps: int = 400  # repetitions of an expert or block point (fewer when point_budget_s runs out)
    membw_bytes: int = 256 * MIB
    cpu_gemm_n: int = 2048
    gpu_gemm_n: int = 8192
    overlap_bytes: int = 64 * MIB


def settings(quick: bool, llc_bytes: int = 0, gpu_l2_bytes: int = 0, memory_bytes: int = 0,
             max_tokens: int | None = None) -> Settings:
    """Measurement sizes and repetition counts; quick mode takes seconds on a CPU. `max_tokens` caps the
    expert token sweep (at least 2 points are kept)."""
    st = _settings(quick, llc_bytes, gpu_l2_bytes, memory_bytes)
    if max_tokens is not None:
        if max_tokens < 2:
            raise ValueError("max_tokens must be >= 2")
        st = dataclasses.replace(st, tokens=tuple(n for n in st.tokens if n <= max_tokens))
    return st


def _settings(quick: bool, llc_bytes: int, gpu_l2_bytes: int, memory_bytes: int) -> Settings:
    cache = max(llc_bytes, gpu_l2_bytes)
    cap = memory_bytes // 8 if memory_bytes else 4 * GIB
    if quick:
        return Settings(
            quick=True,
            copy_sizes=(4 * KIB, 64 * KIB, MIB, 16 * MIB, 64 * MIB),
            tokens=(1, 2, 4, 8, 16, 32, 64),
            warmup=1, reps=5, min_reps=3, point_budget_s=0.25, max_call_s=0.5, launch_n=300, many_reps=40,
            rotate_bytes=min(max(64 * MIB, 2 * cache), cap), membw_bytes=min(max(64 * MIB, 2 * cache), cap),
            cpu_gemm_n=512, gpu_gemm_n=4096, overlap_bytes=16 * MIB,
        )
    return Settings(
        quick=False,
        copy_sizes=tuple(KIB * 4**k for k in range(11)),  # 1 KiB .. 1 GiB
        tokens=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
        rotate_bytes=min(max(256 * MIB, 4 * cache), cap), membw_bytes=min(max(256 * MIB, 4 * cache), cap),
    )


@dataclass
class Step:
    """One unit of the plan (one progress-bar tick): `run()` returns CSV rows."""

    label: str
    run: Callable[[], list[Row]]


@dataclass(frozen=True)
class ExpertShape:
    d_model: int
    d_ff: int
    activation: str
    dtype: str
    models: tuple[str, ...] = field(default=(), compare=False)

    @property
    def key(self) -> str:
        return shape_key(self.d_model, self.d_ff, self.activation, self.dtype)

    @property
    def mats(self) -> int:
        return 3 if self.activation in ("swiglu", "geglu") else 2

    @property
    def weight_bytes(self) -> int:
        return int(self.mats * self.d_model * self.d_ff * BYTES_PER_PARAM[self.dtype])

    def flops(self, tokens: int) -> float:
        return 2.0 * self.mats * self.d_model * self.d_ff * tokens

    def probe(self) -> ExpertShape:
        return ExpertShape(self.d_model, max(64, self.d_ff // 4), self.activation, self.dtype, self.models)


def expert_shapes(models: Sequence[ModelSpec]) -> list[ExpertShape]:
    """Distinct routed-expert shapes of `models`, in first-seen order."""
    seen: dict[str, ExpertShape] = {}
    for m in models:
        s = ExpertShape(m.d_model, m.expert_d_ff, m.activation, compute_dtype(m), (m.name,))
        if s.key in seen:
            old = seen[s.key]
            seen[s.key] = ExpertShape(s.d_model, s.d_ff, s.activation, s.dtype, (*old.models, m.name))
        else:
            seen[s.key] = s
    return list(seen.values())


def _row(kind: str, device: str, name: str, times_us: Sequence[float], *, dtype: str = "",
         size_bytes: int = 0, tokens: int = 0, flops: float = 0.0, nbytes: float = 0.0, threads: int = 0,
         model: str = "", context: int = 0, ops: int = 0) -> Row:
    t = np.asarray(times_us, dtype=float)
    return {"kind": kind, "device": device, "name": name, "dtype": dtype, "size_bytes": int(size_bytes),
            "tokens": int(tokens), "flops": float(flops), "bytes": float(nbytes),
            "median_us": float(np.median(t)), "min_us": float(t.min()), "max_us": float(t.max()),
            "reps": int(len(t)), "threads": int(threads), "model": model, "context": int(context),
            "ops": int(ops)}


def _torch_dtype(name: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


# ---- timers ---------------------------------------------------------------------------------------------
def time_host(fn: Callable[[int], object], st: Settings, reps: int | None = None) -> list[float]:
    """perf_counter time of synchronous calls fn(i) in microseconds (after st.warmup calls)."""
    for i in range(st.warmup):
        fn(i)
    reps = reps or st.reps
    times: list[float] = []
    start = time.perf_counter()
    for i in range(reps):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1e6)
        if len(times) >= st.min_reps and time.perf_counter() - start > st.point_budget_s:
            break
    return times


def time_cuda(fn: Callable[[int], object], st: Settings, reps: int | None = None, spin: bool = True) -> list[float]:
    """GPU time of fn(i) between CUDA events on the current stream, in microseconds."""
    import torch

    sleep = getattr(torch.cuda, "_sleep", None) if spin else None
    ev = torch.cuda.Event

    def once(i: int) -> tuple[Any, Any]:
        if sleep is not None:
            sleep(SPIN_CYCLES)
        s, e = ev(enable_timing=True), ev(enable_timing=True)
        s.record()
        fn(i)
        e.record()
        return s, e

    torch.cuda.synchronize()
    est = 0.0
    for i in range(max(1, st.warmup)):
        s, e = once(i)
        e.synchronize()
        est = s.elapsed_time(e) * 1e3
    n = reps or st.reps
    if est > 0:
        n = int(min(n, max(st.min_reps, st.point_budget_s * 1e6 / est)))
    pairs = [once(i) for i in range(n)]
    torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1e3 for s, e in pairs]


# ---- expert FFN -----------------------------------------------------------------------------------------
def _expert_fn(activation: str) -> Callable[[Any, tuple[Any, ...]], Any]:
    import torch.nn.functional as F

    if activation == "swiglu":
        return lambda x, w: F.linear(F.silu(F.linear(x, w[0])) * F.linear(x, w[2]), w[1])
    if activation == "geglu":
        return lambda x, w: F.linear(F.gelu(F.linear(x, w[0])) * F.linear(x, w[2]), w[1])
    if activation == "relu":
        return lambda x, w: F.linear(F.relu(F.linear(x, w[0])), w[1])
    return lambda x, w: F.linear(F.gelu(F.linear(x, w[0])), w[1])


def _expert_weights(shape: ExpertShape, device: str, copies: int) -> list[tuple[Any, ...]]:
    import torch

    dt = _torch_dtype(shape.dtype)
    out = []
    for _ in range(copies):
        w1 = torch.empty(shape.d_ff, shape.d_model, dtype=dt, device=device).normal_(0, 0.02)
        w2 = torch.empty(shape.d_model, shape.d_ff, dtype=dt, device=device).normal_(0, 0.02)
        w3 = (torch.empty(shape.d_ff, shape.d_model, dtype=dt, device=device).normal_(0, 0.02)
              if shape.mats == 3 else None)
        out.append((w1, w2, w3))
    return out


def _measure_expert(shape: ExpertShape, device: str, st: Settings, tokens: Sequence[int], kind: str,
                    name: str, threads: int = 0) -> list[Row]:
    import torch

    copies = weight_copies(shape.weight_bytes, st.rotate_bytes)
    weights = _expert_weights(shape, device, copies)
    fn = _expert_fn(shape.activation)
    dt = _torch_dtype(shape.dtype)
    rows = []
    with torch.inference_mode():
        # one pass over every weight copy first: page faults, thread-pool start and cold caches otherwise
        # land on the first (1-token) point and make it slower than the 2- and 4-token ones
        x = torch.randn(tokens[0] if tokens else 1, shape.d_model, dtype=dt, device=device)
        for w in weights:
            fn(x, w)
        for n in tokens:
            x = torch.randn(n, shape.d_model, dtype=dt, device=device)

            def call(i: int, x: Any = x) -> object:
                return fn(x, weights[i % copies])

            times = time_cuda(call, st, st.many_reps) if device == "cuda" else time_host(call, st, st.many_reps)
            rows.append(_row(kind, device, name, times, dtype=shape.dtype, tokens=n, flops=shape.flops(n),
                             nbytes=shape.weight_bytes, threads=threads, model=",".join(shape.models)))
            if float(np.median(times)) > st.max_call_s * 1e6:
                break  # larger token counts extrapolate from the table's slope
    return rows


# ---- blocks of the dense part ---------------------------------------------------------------------------
def _measure_blocks(spec: ModelSpec, device: str, st: Settings, threads: int = 0) -> list[Row]:
    """Every block of calibrate/blocks.py at the expert sweep's token counts (attention up to its cap)."""
    import torch

    from simmoe.calibrate.blocks import MAX_CACHED_TOKENS, blocks_of

    rows = []
    with torch.inference_mode():
        for b in blocks_of(spec, device, st.rotate_bytes):
            for ctx in b.contexts:
                for n in st.tokens:
                    if n * ctx > MAX_CACHED_TOKENS and n > st.tokens[0]:
                        break
                    fn = b.make(n, ctx)
                    times = time_cuda(fn, st, st.many_reps) if device == "cuda" else time_host(fn, st, st.many_reps)
                    rows.append(_row("block", device, b.key, times, dtype=b.key.rsplit(":", 1)[1], tokens=n,
                                     threads=threads, model=spec.name, context=ctx, ops=b.ops))
                    if float(np.median(times)) > st.max_call_s * 1e6:
                        break
    return rows


# ---- CPU ------------------------------------------------------------------------------------------------
def set_cpu_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


def plan_cpu(models: Sequence[ModelSpec], st: Settings, threads: Sequence[int] | int,
             memory_bytes: int = 0, memcpy: bool = True, blocks: bool = False) -> list[Step]:
    """CPU steps: per-op dispatch, copy-issue and sync costs, memory bandwidth, GEMM peak, memcpy time vs size
    (the link of the CPU as a device; left out with `memcpy=False`, when a GPU's copies are measured) at the
    first thread count; expert FFN per shape (+ its probe) at every thread count in `threads`; with `blocks`
    (the CPU as the compute device) each model's dense blocks at the first thread count."""
    counts = [threads] if isinstance(threads, int) else list(dict.fromkeys(threads))
    t0 = counts[0]
    shapes = expert_shapes(models)
    dtypes = list(dict.fromkeys(s.dtype for s in shapes))

    def host_costs() -> list[Row]:
        import torch

        set_cpu_threads(t0)
        x, y = torch.zeros(16), torch.ones(1)
        src, dst = torch.ones(1024, dtype=torch.uint8), torch.zeros(1024, dtype=torch.uint8)
        n = st.launch_n

        def per_op(op: Callable[[], object]) -> list[float]:
            def many(_: int) -> None:
                for _ in range(n):
                    op()

            return [t / n for t in time_host(many, st, reps=5)]

        return [_row("host", "cpu", "dispatch", per_op(lambda: x.add(1.0))),
                _row("host", "cpu", "copy_issue", per_op(lambda: dst.copy_(src))),
                _row("host", "cpu", "sync", per_op(lambda: y.item()))]

    def membw() -> list[Row]:
        import torch

        set_cpu_threads(t0)
        nbytes = st.membw_bytes
        src = torch.ones(nbytes // 4, dtype=torch.float32)
        dst = torch.zeros_like(src)
        times = time_host(lambda _: dst.copy_(src), st)
        return [_row("membw", "cpu", "copy", times, size_bytes=nbytes, nbytes=2 * nbytes)]

    def memcpy_sizes() -> list[Row]:
        import torch

        set_cpu_threads(t0)
        cap = memory_bytes // 8 if memory_bytes else 4 * GIB
        sizes = [s for s in st.copy_sizes if s <= cap] or [min(st.copy_sizes)]
        a = torch.ones(max(sizes), dtype=torch.uint8)  # touched: no first-touch page faults while timing
        b = torch.ones(max(sizes), dtype=torch.uint8)
        rows = []
        for size in sizes:
            for name, (dst, src) in (("h2d_pageable", (b, a)), ("d2h_pageable", (a, b))):
                d, s_ = dst[:size], src[:size]
                times = time_host(lambda _, d=d, s_=s_: d.copy_(s_), st)
                rows.append(_row("copy", "cpu", name, times, size_bytes=size, nbytes=size))
        return rows

    def gemm(dtype: str) -> Callable[[], list[Row]]:
        def run() -> list[Row]:
            import torch
            import torch.nn.functional as F

            set_cpu_threads(t0)
            n = st.cpu_gemm_n
            a = torch.randn(n, n).to(_torch_dtype(dtype))
            b = torch.randn(n, n).to(_torch_dtype(dtype))
            with torch.inference_mode():
                # F.linear (x @ w.T), the call the experts make: on CPUs without native bf16, a bf16 `a @ b`
                # takes a far slower path than the linear layers do.
                times = time_host(lambda _: F.linear(a, b), st)
            return [_row("gemm", "cpu", f"matmul{n}", times, dtype=dtype, tokens=n, flops=2.0 * n**3)]

        return run

    def expert(shape: ExpertShape, probe: bool, nthreads: int) -> Callable[[], list[Row]]:
        def run() -> list[Row]:
            set_cpu_threads(nthreads)
            if probe:
                p = shape.probe()
                return _measure_expert(p, "cpu", st, st.probe_tokens, "expert_probe", p.key, nthreads)
            return _measure_expert(shape, "cpu", st, st.tokens, "expert_ffn", shape.key, nthreads)

        return run

    steps = [Step("cpu dispatch, copy-issue and sync cost", host_costs), Step("cpu memory bandwidth", membw)]
    if memcpy:
        steps.append(Step("cpu memcpy time vs size", memcpy_sizes))
    steps += [Step(f"cpu {d} GEMM peak", gemm(d)) for d in dtypes]
    for n in counts:
        for s in shapes:
            steps.append(Step(f"cpu expert {s.key} (probe), {n} threads", expert(s, True, n)))
            steps.append(Step(f"cpu expert {s.key}, {n} threads", expert(s, False, n)))
    if blocks:
        for m in _distinct(models):
            steps.append(Step(f"cpu dense blocks of {m.name}", _on_cpu(m, st, t0)))
    return steps


def _distinct(models: Sequence[ModelSpec]) -> list[ModelSpec]:
    """One model per distinct set of block keys (models of one shape share their tables)."""
    from simmoe.hw.kernel_keys import attention_key, head_key, router_key

    seen: dict[tuple, ModelSpec] = {}
    for m in models:
        seen.setdefault((attention_key(m), router_key(m), head_key(m)), m)
    return list(seen.values())


def _on_cpu(spec: ModelSpec, st: Settings, threads: int) -> Callable[[], list[Row]]:
    def run() -> list[Row]:
        set_cpu_threads(threads)
        return _measure_blocks(spec, "cpu", st, threads)

    return run


# ---- GPU ------------------------------------------------------------------------------------------------
def plan_gpu(models: Sequence[ModelSpec], st: Settings) -> list[Step]:
    """GPU steps: host launch / copy-issue / sync costs, PCIe copies, GEMM peak, HBM bandwidth, expert FFN per
    shape (+ probe), each model's dense blocks, copy/compute and H2D/D2H overlap."""
    shapes = expert_shapes(models)
    dtypes = list(dict.fromkeys(s.dtype for s in shapes))

    def host_costs() -> list[Row]:
        import torch

        n = st.launch_n
        x = torch.zeros(1, device="cuda")
        src = torch.ones(1024, dtype=torch.uint8).pin_memory()
        dst = torch.empty(1024, dtype=torch.uint8, device="cuda")

        def launches(_: int) -> None:
            for _ in range(n):
                x.add(1.0)

        def issues(_: int) -> None:
            for _ in range(n):
                dst.copy_(src, non_blocking=True)

        def timed_no_sync(fn: Callable[[int], None]) -> list[float]:
            # Host time of n asynchronous operations, the GPU drained before each repetition.
            out = []
            for i in range(st.warmup + 5):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn(i)
                dt = (time.perf_counter() - t0) * 1e6 / n
                if i >= st.warmup:
                    out.append(dt)
            torch.cuda.synchronize()
            return out

        rows = [_row("host", "cuda", "launch", timed_no_sync(launches)),
                _row("host", "cuda", "copy_issue", timed_no_sync(issues))]
        y = torch.ones(1, device="cuda")
        rows.append(_row("host", "cuda", "sync", time_host(lambda _: y.item(), st, reps=50)))
        rows.append(_row("kernel_min", "cuda", "add1", time_cuda(lambda _: x.add_(1.0), st, reps=50)))
        return rows

    def copies(direction: str, pinned: bool) -> Callable[[], list[Row]]:
        def run() -> list[Row]:
            import torch

            top = max(st.copy_sizes)
            host = torch.ones(top, dtype=torch.uint8)  # touched: no first-touch page faults while timing
            if pinned:
                host = host.pin_memory()
            dev = torch.ones(top, dtype=torch.uint8, device="cuda")
            name = f"{direction}_{'pinned' if pinned else 'pageable'}"
            rows = []
            for size in st.copy_sizes:
                h, d = host[:size], dev[:size]
                if direction == "h2d":
                    fn = lambda _, h=h, d=d: d.copy_(h, non_blocking=pinned)  # noqa: E731
                else:
                    fn = lambda _, h=h, d=d: h.copy_(d, non_blocking=pinned)  # noqa: E731
                rows.append(_row("copy", "cuda", name, time_cuda(fn, st), size_bytes=size, nbytes=size))
            return rows

        return run

    def peaks() -> list[Row]:
        import torch
        import torch.nn.functional as F

        rows = []
        n = st.gpu_gemm_n
        with torch.inference_mode():
            for d in dtypes:
                a = torch.randn(n, n, device="cuda", dtype=_torch_dtype(d))
                b = torch.randn(n, n, device="cuda", dtype=_torch_dtype(d))
                times = time_cuda(lambda _, a=a, b=b: F.linear(a, b), st)
                rows.append(_row("gemm", "cuda", f"matmul{n}", times, dtype=d, tokens=n, flops=2.0 * n**3))
                a = b = None
            nbytes = st.membw_bytes
            src = torch.ones(nbytes, dtype=torch.uint8, device="cuda")
            dst = torch.empty_like(src)
            rows.append(_row("membw", "cuda", "copy", time_cuda(lambda _: dst.copy_(src), st),
                             size_bytes=nbytes, nbytes=2 * nbytes))
        return rows

    def expert(shape: ExpertShape, probe: bool) -> Callable[[], list[Row]]:
        def run() -> list[Row]:
            if probe:
                p = shape.probe()
                return _measure_expert(p, "cuda", st, st.probe_tokens, "expert_probe", p.key)
            return _measure_expert(shape, "cuda", st, st.tokens, "expert_ffn", shape.key)

        return run

    def overlap() -> list[Row]:
        import torch

        nbytes = st.overlap_bytes
        host_in = torch.ones(nbytes, dtype=torch.uint8).pin_memory()
        host_out = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
        dev_in = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        dev_out = torch.ones(nbytes, dtype=torch.uint8, device="cuda")
        a = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
        side, side2 = torch.cuda.Stream(), torch.cuda.Stream()

        def h2d(_: int = 0) -> None:
            dev_in.copy_(host_in, non_blocking=True)

        def d2h(_: int = 0) -> None:
            host_out.copy_(dev_out, non_blocking=True)

        with torch.inference_mode():
            t_copy = float(np.median(time_cuda(h2d, st)))
            t_mm = float(np.median(time_cuda(lambda _: a @ a, st)))
            k = max(1, min(200, round(t_copy / max(t_mm, 1e-3))))

            def compute(_: int = 0) -> None:
                for _ in range(k):
                    a @ a

            def on_side(fns: Sequence[Callable[[], None]], streams: Sequence[Any]) -> Callable[[int], None]:
                # fns[0] on the current stream, the others on side streams, all joined at the end.
                def run(_: int) -> None:
                    cur = torch.cuda.current_stream()
                    for fn, s in zip(fns[1:], streams, strict=True):
                        s.wait_stream(cur)
                        with torch.cuda.stream(s):
                            fn()
                    fns[0]()
                    for s in streams:
                        cur.wait_stream(s)

                return run

            rows = [
                _row("overlap", "cuda", "copy_alone", time_cuda(h2d, st), size_bytes=nbytes),
                _row("overlap", "cuda", "compute_alone", time_cuda(compute, st), tokens=k),
                _row("overlap", "cuda", "overlapped", time_cuda(on_side([compute, h2d], [side]), st),
                     size_bytes=nbytes, tokens=k),
                _row("overlap", "cuda", "d2h_alone", time_cuda(d2h, st), size_bytes=nbytes),
                _row("overlap", "cuda", "h2d_d2h_overlapped",
                     time_cuda(on_side([lambda: None, h2d, d2h], [side, side2]), st), size_bytes=nbytes),
            ]
        return rows

    steps = [Step("gpu host launch/copy-issue/sync cost", host_costs)]
    for direction in ("h2d", "d2h"):
        for pinned in (True, False):
            steps.append(Step(f"pcie {direction} {'pinned' if pinned else 'pageable'}", copies(direction, pinned)))
    steps.append(Step("gpu GEMM peak and HBM bandwidth", peaks))
    for s in shapes:
        steps.append(Step(f"gpu expert {s.key} (probe)", expert(s, True)))
        steps.append(Step(f"gpu expert {s.key}", expert(s, False)))
    for m in _distinct(models):
        steps.append(Step(f"gpu dense blocks of {m.name}", lambda m=m: _measure_blocks(m, "cuda", st)))
    steps.append(Step("gpu copy/compute overlap", overlap))
    return steps


def gpu_l2_bytes() -> int:
    import torch

    if not torch.cuda.is_available():
        return 0
    return int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 0)


def gpu_properties(index: int = 0) -> dict[str, Any]:
    """Name, memory (GiB) and SM count of the GPU calibration measured."""
    import torch

    p = torch.cuda.get_device_properties(index)
    return {"name": p.name, "memory_gib": p.total_memory / 2**30, "sm_count": p.multi_processor_count}
