"""A real offloaded MoE executor (PyTorch), the measured side of `simmoe validate`.

It runs a trace the way an eager offloading framework does, with real weights of the model's real shapes
(random values: timing does not depend on them) and real copies and kernels:

- the dense part (embedding, attention projections and KV cache, norms, routers, shared experts, dense FFNs,
  lm_head) is resident on the device;
- routed experts live in (pinned) host memory; a device expert cache of the size the simulator would give
  the configuration holds copies of some of them; a miss copies the expert on a second (copy) stream into the
  slot its victim frees, after the victim's last kernels are done, and the compute stream waits for the copy;
- which expert is a hit, which buffer a miss is copied into, what is prefetched and what runs on the CPU is
  decided by the simulator's own access planner (sim/engine/planner.py) over the simulator's own prepared
  scenario (`prepare`): the executor only translates each layer's actions into real copies and kernels. It
  counts what it executed (expert kernels run on cached weights, copies, CPU experts), and `simmoe validate`
  checks those counts against the simulator's;
- device buffers are touched before timing starts (no page faults in a buffer's first fill), and a first
  short run warms the kernels and the allocator;
- each step ends with the sampled token read back to the host (a device synchronisation), so the wall-clock
  time between step starts is the step's latency, as in the simulator.

Routing comes from the trace, not from the random router: the router is still computed and its top-k read
back to the host (the synchronisation every offloading framework makes before it can fetch experts).

With device "cpu" everything runs on the CPU (copies are memcpys, streams and events are no-ops): the tiny
mode the tests use to exercise this code without a GPU. torch is imported only in this module's functions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from simmoe.engine.config import ReplayConfig
from simmoe.engine.planner import FETCH, LOAD, AccessPlanner
from simmoe.engine.scenario import Scenario, prepare
from simmoe.engine.schedule import DECODE
from simmoe.errors import InputError
from simmoe.hw.kernel_keys import TORCH_DTYPES
from simmoe.hw.profile import HwProfile
from simmoe.models.spec import ModelSpec
from simmoe.policies.base import PolicySet
from simmoe.runtime.profile import RuntimeProfile
from simmoe.trace.format import Trace

STEP_COLUMNS = ("step", "kind", "tokens", "latency_us", "hits", "misses", "copies", "cpu_experts", "prefetches")


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise InputError("torch", None, "validation needs PyTorch: install the torch extra: "
                         "pip install -e '.[torch]'") from None
    return torch


def expert_numel(spec: ModelSpec) -> int:
    mats = 3 if spec.activation in ("swiglu", "geglu") else 2
    return mats * spec.d_model * spec.expert_d_ff


def check_model(spec: ModelSpec, source: str) -> None:
    """The executor times experts at their stored precision, so it needs a precision torch computes in."""
    if spec.expert_dtype not in TORCH_DTYPES or spec.dtype not in TORCH_DTYPES:
        raise InputError(source, "model", f"{spec.name}: the executor needs bf16/fp16/fp32 weights, the model "
                         f"stores experts as {spec.expert_dtype} (dense {spec.dtype})")
    if spec.expert_bias:
        raise InputError(source, "model", f"{spec.name}: experts with biases are not supported by the executor")


def host_bytes_needed(spec: ModelSpec) -> int:
    """Host memory for the routed experts of every MoE layer of `spec` (what the executor pins)."""
    return spec.num_moe_layers * spec.num_experts * spec.expert_bytes()


# ---- device helpers ---------------------------------------------------------------------------------------
class _Streams:
    """Compute stream + copy stream with events on CUDA (with `copy_stream` "compute", copies go on the compute
    stream itself, queued with the kernels, as the runtime says); synchronous no-ops on the CPU."""

    def __init__(self, torch: Any, device: str, copy_stream: str = "separate") -> None:
        self.torch = torch
        self.cuda = device.startswith("cuda")
        if self.cuda:
            self.compute = torch.cuda.current_stream()
            self.copy = torch.cuda.Stream() if copy_stream == "separate" else self.compute

    def copy_out(self, dst: Any, src: Any, after: Any) -> Any:
        """dst (host) <- src (device) on the copy stream after `after`: a write-back; returns its event."""
        return self.copy_in(dst, src, after)

    def mark(self) -> Any:
        """An event after the work queued so far on the compute stream (None on the CPU)."""
        if not self.cuda:
            return None
        ev = self.torch.cuda.Event()
        ev.record(self.compute)
        return ev

    def copy_in(self, dst: Any, src: Any, after: Any) -> Any:
        """dst <- src on the copy stream, after event `after`; returns the copy's completion event."""
        if not self.cuda:
            dst.copy_(src)
            return None
        with self.torch.cuda.stream(self.copy):
            if after is not None:
                self.copy.wait_event(after)
            dst.copy_(src, non_blocking=True)
            ev = self.torch.cuda.Event()
            ev.record(self.copy)
        return ev

    def wait(self, ev: Any) -> None:
        if ev is not None:
            self.compute.wait_event(ev)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()


def _ffn(F: Any, activation: str, x: Any, w: tuple[Any, ...]) -> Any:
    if activation == "swiglu":
        return F.linear(F.silu(F.linear(x, w[0])) * F.linear(x, w[2]), w[1])
    if activation == "geglu":
        return F.linear(F.gelu(F.linear(x, w[0])) * F.linear(x, w[2]), w[1])
    if activation == "relu":
        return F.linear(F.relu(F.linear(x, w[0])), w[1])
    return F.linear(F.gelu(F.linear(x, w[0])), w[1])


def _views(flat: Any, spec: ModelSpec, d_ff: int | None = None) -> tuple[Any, ...]:
    """(w1 [f, d], w2 [d, f], w3 [f, d] or None) views of one flat expert buffer."""
    d, f = spec.d_model, d_ff or spec.expert_d_ff
    w1 = flat[: f * d].view(f, d)
    w2 = flat[f * d: 2 * f * d].view(d, f)
    w3 = flat[2 * f * d: 3 * f * d].view(f, d) if spec.activation in ("swiglu", "geglu") else None
    return (w1, w2, w3)


# ---- results ----------------------------------------------------------------------------------------------
@dataclass
class ExecResult:
    """Measured run of one configuration: per-step wall-clock times and the cache decisions taken."""

    config: str
    batch: int
    device: str
    steps: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)

    def decode_latencies_ms(self) -> np.ndarray:
        d = self.steps[self.steps["kind"] == "decode"]
        return d["latency_us"].to_numpy(dtype=float) / 1e3


@dataclass
class _Counts:
    """What the executor did: expert kernels on cached weights (hits), experts copied then run (misses on the
    GPU), CPU experts, copies and prefetch copies issued."""

    hits: int = 0
    misses: int = 0
    copies: int = 0
    cpu_experts: int = 0
    prefetches: int = 0


# ---- the executor -----------------------------------------------------------------------------------------
class OffloadedExecutor:
    """Weights for one trace's model, built once and reused by every configuration run on it.

    `hw` is the profile the simulator sizes caches with (`lru` without a size takes the memory it says is
    free); on a GPU it should be the calibrated profile of that GPU.
    """

    def __init__(self, trace: Trace, hw: HwProfile, *, device: str = "cuda", threads: int | None = None,
                 seed: int = 0, progress: bool = False, host_memory: str = "pinned") -> None:
        if hw.num_gpus > 1:  # one device, one copy stream: nothing here splits a model over GPUs
            raise InputError(hw.name, "topology", f"the real executor runs one GPU: a {hw.num_gpus}-GPU "
                             "configuration (--parallel pipeline or expert) cannot be validated")
        torch = _torch()
        self.torch = torch
        self.trace = trace
        self.hw = hw
        self.spec = spec = trace.spec
        check_model(spec, trace.source)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError("--device", None, "cuda requested but torch sees no GPU (use --device cpu)")
        self.device = device
        self.progress = progress
        if host_memory not in ("pinned", "pageable"):
            raise InputError("--host-memory", None, f"must be pinned or pageable, got {host_memory!r}")
        self.host_memory = host_memory  # of the host experts, for every run (pinned only on a GPU)
        if threads:
            torch.set_num_threads(int(threads))
        self.dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[spec.dtype]
        self.edt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[spec.expert_dtype]
        self.gen = torch.Generator().manual_seed(seed)
        self._build_dense()
        self._build_host_experts()
        self._warm = set()

    # ---- weights ------------------------------------------------------------------------------------------
    def _rand(self, *shape: int, dtype: Any = None, device: str | None = None) -> Any:
        torch = self.torch
        t = torch.empty(*shape, dtype=torch.float32).normal_(0, 0.02, generator=self.gen)
        return t.to(dtype=dtype or self.dt, device=device or self.device)

    def _build_dense(self) -> None:
        s = self.spec
        d = s.d_model
        self.emb = self._rand(s.vocab_size, d)
        self.lm_head = self.emb if s.tie_embeddings else self._rand(s.vocab_size, d)
        self.norm_f = self._rand(d) + 1
        self.layers: list[dict[str, Any]] = []
        moe = set(s.moe_layers)
        for li in range(s.num_layers):
            w: dict[str, Any] = {"n1": self._rand(d) + 1, "n2": self._rand(d) + 1}
            if s.kv_lora_rank:  # multi-head latent attention (DeepSeek-V2/V3), q_lora_rank 0, v = nope
                nope = s.head_dim - s.qk_rope_head_dim
                w["q"] = self._rand(s.num_heads * s.head_dim, d)
                w["kv_a"] = self._rand(s.kv_lora_rank + s.qk_rope_head_dim, d)
                w["kv_b"] = self._rand(s.num_heads * 2 * nope, s.kv_lora_rank)
                w["o"] = self._rand(d, s.num_heads * nope)
            else:
                w["q"] = self._rand(s.num_heads * s.head_dim, d)
                w["k"] = self._rand(s.num_kv_heads * s.head_dim, d)
                w["v"] = self._rand(s.num_kv_heads * s.head_dim, d)
                w["o"] = self._rand(d, s.num_heads * s.head_dim)
            if li in moe:
                w["router"] = self._rand(s.num_experts, d)
                if s.num_shared_experts:
                    f = s.num_shared_experts * s.shared_d_ff  # shared experts fused into one FFN, as DeepSeek
                    w["shared"] = _views(self._rand(expert_numel(s) // s.expert_d_ff * f), s, f)
            else:
                w["ffn"] = _views(self._rand(expert_numel(s) // s.expert_d_ff * s.dense_d_ff), s, s.dense_d_ff)
            self.layers.append(w)

    def _build_host_experts(self) -> None:
        """One host tensor [E, numel] per MoE layer, pinned when the device is a GPU. Values: one random
        expert copied everywhere (filling tens of GB with fresh random numbers would take minutes)."""
        torch, s = self.torch, self.spec
        n = expert_numel(s)
        pin = self.device.startswith("cuda") and self.host_memory == "pinned"
        proto = self._rand(n, dtype=self.edt, device="cpu")
        self.host: list[Any] = []
        for _ in range(s.num_moe_layers):
            t = torch.empty((s.num_experts, n), dtype=self.edt, pin_memory=pin)
            t.copy_(proto.expand(s.num_experts, n))
            self.host.append(t)
        self.host_w = [[_views(layer[e], s) for e in range(s.num_experts)] for layer in self.host]

    # ---- one configuration ---------------------------------------------------------------------------------
    def run(self, pset: PolicySet, batch: int = 1, *, label: str | None = None,
            max_steps: int | None = None, max_requests: int | None = None, runtime: RuntimeProfile | None = None,
            copy_stream: str | None = None) -> ExecResult:
        """Run the trace under `pset` at `batch` with the runtime's access order, copy stream, copy unit,
        write-back and per-expert read-backs; returns per-step times and the counts of what was executed."""
        torch = self.torch
        # the simulator's schedule, memory plan, cache sizes and policies: what the planner decides over
        sc = prepare(self.trace, self.hw, pset, ReplayConfig(batch=batch, max_requests=max_requests,
                                                             host_memory=self.host_memory, copy_stream=copy_stream),
                     runtime=runtime)
        if sc.policies.precision_cls is not None or sc.runtime.weights.experts is not None \
                or sc.runtime.weights.dense is not None:
            raise InputError(f"configuration {pset.describe()!r}", "precision", "the executor runs experts at "
                             "the model's own precision: precision policies and weight formats cannot be validated")
        if sc.runtime.kernels.fused:
            raise InputError(f"runtime {sc.runtime.name}", "kernels.per_moe_layer", "the executor runs experts "
                             "one by one: a fused MoE runtime cannot be validated")
        if sc.tier is not None and sc.tier.active:
            raise InputError(f"profile {self.hw.name}", "nvme", f"the experts ({sc.tier.total_experts}) exceed "
                             f"the profile's host memory ({sc.tier.capacity} experts): the executor keeps every "
                             "expert in pinned host memory and does not run the SSD tier")
        label = label or pset.describe()
        key = (batch, max_requests)
        with torch.inference_mode():
            if key not in self._warm:  # first use of these shapes: cuBLAS handles, allocator, kernel choice
                self._warm.add(key)
                self._run(sc, max_steps=min(3, len(sc.steps)), record=False)
            df, counts = self._run(sc, max_steps=max_steps, record=True, label=label)
        return ExecResult(label, batch, self.device, df, counts)

    def _run(self, sc: Scenario, *, max_steps: int | None, record: bool, label: str = "") -> tuple[pd.DataFrame, dict]:
        torch, s = self.torch, self.spec
        import torch.nn.functional as F

        dev = self.device
        st = _Streams(torch, dev, sc.copy_stream)
        planner = AccessPlanner(sc)  # a fresh planner: a cold cache, as the simulator starts
        rx, syncs = sc.runtime.experts, sc.runtime.host.syncs_per_expert
        n = expert_numel(s)
        # One device buffer per cache slot of every partition, then the staging buffers of misses that are
        # not kept: the planner's buffer numbers index it. Touched now, so no first fill pays page faults.
        bufs = torch.zeros((planner.num_buffers, n), dtype=self.edt, device=dev)
        buf_w = [_views(bufs[i], s) for i in range(planner.num_buffers)]
        holds: list[int | None] = [None] * planner.num_buffers  # which expert key each buffer holds
        ready: list[Any] = [None] * planner.num_buffers  # copy event that filled it
        last: list[Any] = [None] * planner.num_buffers  # event after the kernels that last read it
        E = sc.num_experts
        for k, b in planner.preloaded:  # resident experts: copied before timing starts, like a loaded model
            m, e = divmod(k, E)
            bufs[b].copy_(self.host[m][e])
            holds[b] = k
        st.sync()
        cnt = _Counts()

        scratch = None  # host buffer the write-back of an evicted expert goes to
        pieces = [slice(i * n // rx.copies_per_expert, (i + 1) * n // rx.copies_per_expert)
                  for i in range(rx.copies_per_expert)]

        def load(b: int, m: int, e: int) -> Any:
            """Copy expert (m, e) into buffer b once the kernels reading its old contents are done (after
            copying those contents back to the host, with a write-back runtime), in the runtime's copy unit."""
            nonlocal scratch
            free = last[b] if last[b] is not None else ready[b]
            if rx.writeback and holds[b] is not None and b < planner.staging_first:
                if scratch is None:
                    scratch = torch.empty(n, dtype=self.edt, pin_memory=dev.startswith("cuda"))
                free = st.copy_out(scratch, bufs[b], free)
            for piece in pieces:
                ready[b] = st.copy_in(bufs[b][piece], self.host[m][e][piece], free)
            last[b] = None
            holds[b] = m * E + e
            cnt.copies += 1
            return ready[b]

        # KV cache per layer: [batch slots, max request rows, ...]
        max_len = int((sc.ri.stops - sc.ri.starts).max())
        nslots = sc.cfg.batch
        kv: list[Any] = []
        for _li in range(s.num_layers):
            if s.kv_lora_rank:
                kv.append(torch.zeros((nslots, max_len, s.kv_lora_rank + s.qk_rope_head_dim), dtype=self.dt,
                                      device=dev))
            else:
                kv.append((torch.zeros((nslots, s.num_kv_heads, max_len, s.head_dim), dtype=self.dt, device=dev),
                           torch.zeros((nslots, s.num_kv_heads, max_len, s.head_dim), dtype=self.dt, device=dev)))
        arange_ctx = torch.arange(max_len, device=dev)
        kv_slot: dict[int, int] = {}
        kv_free = list(range(nslots))[::-1]

        experts = sc.trace.experts
        gates = sc.trace.gates
        K = experts.shape[2]
        rows_out: dict[str, list] = {c: [] for c in STEP_COLUMNS}
        steps = sc.steps if max_steps is None else sc.steps[:max_steps]
        bar = None
        if record and self.progress:
            from simmoe.progress import bar as progress_bar

            bar = progress_bar(total=len(steps), unit="step", desc=label[:40], leave=False, mininterval=0.5,
                               dynamic_ncols=True)
        act = s.activation
        for i, step in enumerate(steps):
            rows = step.rows
            N = len(rows)
            decode = step.kind == DECODE
            B, T = (N, 1) if decode else (1, N)
            for rid in step.requests:
                if rid not in kv_slot:
                    kv_slot[rid] = kv_free.pop()
            pos = sc.ri.position[rows]
            slots = np.array([kv_slot[r] for r in step.requests], dtype=np.int64)
            ctx = int(pos.max()) + 1
            ex_by_layer, _ = planner.begin_step(step, i)
            # Host-side routing of this step: token indices and gate weights per (layer, expert), uploaded in
            # one copy per step (frameworks compute them on the device; here they come from the trace).
            sub = experts[rows]  # [N, L, K]
            gsub = gates[rows] if gates is not None else None
            idx_parts: list[np.ndarray] = [rows.astype(np.int64) % s.vocab_size, slots, pos.astype(np.int64)]
            g_parts: list[np.ndarray] = []
            where: dict[tuple[int, int], tuple[int, int, float]] = {}  # (m, e) -> (offset, count, gate if N==1)
            off = 3 * N
            goff = 0
            for m, exps in enumerate(ex_by_layer):
                for e in exps:
                    hit = sub[:, m, :] == e  # [N, K]
                    tok = np.flatnonzero(hit.any(axis=1))
                    if gsub is not None:
                        g = np.where(hit, gsub[:, m, :], 0).sum(axis=1)[tok].astype(np.float32)
                    else:
                        g = np.full(len(tok), 1.0 / K, dtype=np.float32)
                    if N == 1:
                        where[(m, e)] = (-1, 1, float(g[0]))
                    else:
                        where[(m, e)] = (off, goff, len(tok))
                        idx_parts.append(tok.astype(np.int64))
                        g_parts.append(g)
                        off += len(tok)
                        goff += len(tok)
            t0 = time.perf_counter()
            ints = torch.from_numpy(np.concatenate(idx_parts)).to(dev, non_blocking=True)
            gvec = torch.from_numpy(np.concatenate(g_parts)).to(dev, dtype=self.dt) if g_parts else None
            tok_ids, slot_t, pos_t = ints[:N], ints[N: 2 * N], ints[2 * N: 3 * N]
            slot_b = slot_t.view(B, T)[:, 0]
            mask = (arange_ctx[:ctx].view(1, 1, 1, ctx) <= pos_t.view(B, 1, T, 1))  # [B, 1, T, ctx]
            x = F.embedding(tok_ids, self.emb)  # [N, d]
            for li in range(s.num_layers):
                w = self.layers[li]
                x = x + self._attention(F, w, kv[li], x, B, T, slot_t, pos_t, slot_b, ctx, mask)
                m = sc.moe_of[li]
                hn = F.rms_norm(x, (s.d_model,), w["n2"])
                if m < 0:
                    x = x + _ffn(F, act, hn, w["ffn"])
                    continue
                probs = torch.softmax(F.linear(hn, w["router"]).float(), dim=-1)
                top = torch.topk(probs, s.top_k, dim=-1).indices
                out = _ffn(F, act, hn, w["shared"]) if s.num_shared_experts else torch.zeros_like(hn)
                top.cpu()  # routing to host: the synchronisation before experts can be fetched
                ops, cpu_jobs, pre = planner.plan_layer(m)
                fetched: set[int] = set()
                for op in ops:  # the planner's actions, translated
                    kind, b, _m, e = op[:4]
                    if kind == FETCH:  # a copy issued ahead of its kernels (whole-layer fetch, issue-ahead)
                        if op[6] or op[7] or not op[5]:
                            raise InputError("executor", "precision", "bit-plane copies (nested precision) are "
                                             "not executed")
                        load(b, m, e)
                        fetched.add(b)
                        continue
                    for _ in range(syncs):  # the loop's index read-backs before the expert (torch.where, .item())
                        ints[0].item()
                    if kind == LOAD:
                        load(b, m, e)
                        cnt.misses += 1
                    elif b in fetched:
                        cnt.misses += 1
                    else:
                        cnt.hits += 1
                    if holds[b] != m * E + e:  # the planner's promise: a buffer holds the expert a kernel reads
                        raise RuntimeError(f"buffer {b} holds key {holds[b]}, layer {m} expert {e} expected")
                    st.wait(ready[b])
                    self._expert(F, act, hn, out, buf_w[b], where[(m, e)], ints, gvec)
                    last[b] = st.mark()
                if cpu_jobs:
                    out = out + self._cpu_experts(F, act, hn, m, [e for e, _ in cpu_jobs], where, ints, gvec, N)
                    cnt.cpu_experts += len(cpu_jobs)
                    cnt.misses += len(cpu_jobs)
                x = x + out  # combine
                for _, b, layer, e, _nbytes in pre:
                    load(b, layer, e)
                    cnt.prefetches += 1
            hl = F.rms_norm(x.view(B, T, -1)[:, -1], (s.d_model,), self.norm_f)
            torch.argmax(F.linear(hl, self.lm_head), dim=-1).cpu()  # token to host
            st.sync()
            dt_us = (time.perf_counter() - t0) * 1e6
            for rid in step.finished:
                kv_free.append(kv_slot.pop(rid))
            if record:
                for c, v in (("step", i), ("kind", "decode" if decode else "prefill"), ("tokens", N),
                             ("latency_us", dt_us)):
                    rows_out[c].append(v)
                for c in ("hits", "misses", "copies", "cpu_experts", "prefetches"):
                    rows_out[c].append(getattr(cnt, c))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        df = pd.DataFrame(rows_out)
        for c in ("hits", "misses", "copies", "cpu_experts", "prefetches"):  # cumulative -> per step
            if len(df):
                df[c] = df[c].diff().fillna(df[c]).astype(np.int64)
        counts = {"hits": cnt.hits, "misses": cnt.misses, "copies": cnt.copies, "cpu_experts": cnt.cpu_experts,
                  "prefetches": cnt.prefetches, "prefetch_used": planner.c.prefetch_used,
                  "cache_slots": int(sc.cache.total_slots)}
        return df, counts

    # ---- pieces of a step ----------------------------------------------------------------------------------
    def _attention(self, F: Any, w: dict, kv: Any, x: Any, B: int, T: int, slot_t: Any, pos_t: Any, slot_b: Any,
                   ctx: int, mask: Any) -> Any:
        s = self.spec
        hn = F.rms_norm(x, (s.d_model,), w["n1"])
        H, hd = s.num_heads, s.head_dim
        q = F.linear(hn, w["q"]).view(B, T, H, hd).transpose(1, 2)  # [B, H, T, hd]
        if s.kv_lora_rank:
            R, rope = s.kv_lora_rank, s.qk_rope_head_dim
            nope = hd - rope
            kv[slot_t, pos_t] = F.linear(hn, w["kv_a"])  # latent cache [slots, len, R + rope]
            lat = kv[slot_b, :ctx]  # [B, ctx, R + rope]
            kvb = F.linear(lat[..., :R], w["kv_b"]).view(B, ctx, H, 2 * nope)
            k = self.torch.cat([kvb[..., :nope], lat[..., R:].unsqueeze(2).expand(B, ctx, H, rope)], dim=-1)
            o = F.scaled_dot_product_attention(q, k.transpose(1, 2), kvb[..., nope:].transpose(1, 2), attn_mask=mask)
            return F.linear(o.transpose(1, 2).reshape(B * T, H * nope), w["o"])
        kvh = s.num_kv_heads
        kc, vc = kv
        kc[slot_t, :, pos_t] = F.linear(hn, w["k"]).view(B * T, kvh, hd)
        vc[slot_t, :, pos_t] = F.linear(hn, w["v"]).view(B * T, kvh, hd)
        o = F.scaled_dot_product_attention(q, kc[slot_b, :, :ctx], vc[slot_b, :, :ctx], attn_mask=mask,
                                           enable_gqa=kvh != H)
        return F.linear(o.transpose(1, 2).reshape(B * T, H * hd), w["o"])

    def _expert(self, F: Any, act: str, hn: Any, out: Any, wts: tuple, where: tuple, ints: Any, gvec: Any) -> None:
        off, goff_or_n, g = where
        if off < 0:  # one token: no gather
            out.add_(_ffn(F, act, hn, wts), alpha=g)
            return
        cnt = g
        idx = ints[off: off + cnt]
        y = _ffn(F, act, hn.index_select(0, idx), wts) * gvec[goff_or_n: goff_or_n + cnt, None]
        out.index_add_(0, idx, y)

    def _cpu_experts(self, F: Any, act: str, hn: Any, m: int, jobs: list[int], where: dict, ints: Any,
                     gvec: Any, N: int) -> Any:
        """kTransformers-style: activations to the host, the CPU computes its experts from host memory, the
        combined result back to the device."""
        torch = self.torch
        xh = hn.to("cpu", dtype=self.edt)  # D2H (synchronises)
        ints_h = ints.cpu() if N > 1 else None
        gh = gvec.cpu() if (N > 1 and gvec is not None) else None
        yh = torch.zeros_like(xh)
        for e in jobs:
            off, goff, g = where[(m, e)]
            wts = self.host_w[m][e]
            if off < 0:
                yh.add_(_ffn(F, act, xh, wts), alpha=g)
            else:
                idx = ints_h[off: off + g]
                yh.index_add_(0, idx, _ffn(F, act, xh.index_select(0, idx), wts) * gh[goff: goff + g, None])
        pin = self.device.startswith("cuda")
        if pin:
            yh = yh.pin_memory()
        return yh.to(self.device, dtype=self.dt, non_blocking=pin)
