"""Cost model: how long each piece of work takes on a hardware profile, in microseconds.

GPU and CPU kernels use a roofline (max of compute time and memory time at the profile's efficiencies),
floored by the shortest kernel times the kernels the runtime launches for the part; calibrated profiles
replace the expert-FFN estimate by the measured table for the expert's shape. The bytes a kernel reads per
weight follow the runtime's weight formats (a fused dequantising GEMM reads the packed weights and their
scales; a separate dequantisation pass adds its own traffic), or the model's own precision. Copies cost latency + bytes / bandwidth, or, where the profile has a measured copy
table for the direction and memory kind, the table interpolated (`copy_table_us`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from simmoe.hw.kernel_keys import attention_key, compute_dtype, gather_key, head_key, router_key
from simmoe.hw.kernel_keys import shape_key as _shape_key
from simmoe.hw.profile import AttentionTable, CopyTable, HwProfile, KernelTable
from simmoe.models.spec import BYTES_PER_PARAM, ModelSpec
from simmoe.runtime.formats import get_format
from simmoe.runtime.profile import RuntimeProfile


def shape_key(spec: ModelSpec, dtype: str | None = None) -> str:
    """Key of an expert shape in calibrated kernel tables, e.g. '4096x14336xswiglu:bf16' (quantised
    experts: 'q4.5' for 4.5 bits per weight, which no bf16 table answers)."""
    if dtype is None and spec.expert_bits:
        dtype = f"q{spec.expert_bits:g}"
    return _shape_key(spec.d_model, spec.expert_d_ff, spec.activation, dtype or spec.expert_dtype)


def kernel_table_us(table: KernelTable, tokens: int) -> float:
    return _by_tokens(table.tokens, table.us, tokens)


def _by_tokens(tokens_at: list[int], us: list[float], tokens: int) -> float:
    x = np.asarray(tokens_at, dtype=float)
    y = np.asarray(us, dtype=float)
    if tokens <= x[-1] or len(x) == 1:
        return float(np.interp(tokens, x, y))
    slope = (y[-1] - y[-2]) / (x[-1] - x[-2])  # extrapolate linearly beyond the last measurement
    return float(y[-1] + slope * (tokens - x[-1]))


def attention_table_us(table: AttentionTable, tokens: int, context: float) -> float:
    """An attention table at `tokens` new tokens attending to `context` cached tokens each (on average)."""
    rows = [_by_tokens(table.tokens, r, tokens) for r in table.us]
    c = table.context
    if len(c) == 1 or context <= c[0]:
        return rows[0]
    if context <= c[-1]:
        return float(np.interp(context, c, rows))
    slope = max((rows[-1] - rows[-2]) / (c[-1] - c[-2]), 0.0)  # a longer context never takes less time
    return rows[-1] + slope * (context - c[-1])


def copy_table_us(table: CopyTable, nbytes: float) -> float:
    """Time of an `nbytes` copy from a measured table: linear between measured sizes (exact at them), the
    smallest size's time below it (a copy costs at least the latency floor), and beyond the largest size the
    last segment's rate (the last point's mean rate where that segment is flat). Monotone in `nbytes`."""
    x, y = table.bytes, table.us
    if nbytes <= x[0]:
        return float(y[0])
    if nbytes <= x[-1]:
        return float(np.interp(nbytes, x, y))
    rate = (y[-1] - y[-2]) / (x[-1] - x[-2])  # us per byte
    if rate <= 0:
        rate = y[-1] / x[-1]
    return float(y[-1] + rate * (nbytes - x[-1]))


class CostModel:
    def __init__(self, spec: ModelSpec, hw: HwProfile, runtime: RuntimeProfile | None = None, *,
                 pinned: bool = True, dequant_flops_per_param: float = 0.0) -> None:
        self.spec = spec
        # dequantising weights on the fly: extra work per weight per kernel, independent of token count
        self._dequant_flops = dequant_flops_per_param * spec.expert_params
        self.hw = hw
        self.runtime = runtime = runtime or RuntimeProfile(name="generic", source="generic")
        self.kernels = runtime.kernels
        self.pinned = pinned
        g = hw.gpu
        self._act_bytes = BYTES_PER_PARAM[spec.dtype]
        self._gpu_flops = hw.peak_flops(spec.dtype) * g.matmul_efficiency
        self._gpu_bw = g.hbm_gbps * 1e9 * g.membw_efficiency
        c = hw.cpu
        self._cpu_flops = c.peak_gflops * 1e9 * c.matmul_efficiency
        self._cpu_bw = c.memory_gbps * 1e9 * c.membw_efficiency
        self._cpu_call_us = runtime.cpu.per_call_us if runtime.cpu.per_call_us is not None else c.expert_overhead_us
        # calibration times experts stored in a format torch lacks (int4, mxfp4, fp8) at bf16: look there too
        keys = [shape_key(spec)] if spec.expert_bits else [shape_key(spec), shape_key(spec, compute_dtype(spec))]
        k = hw.kernels
        self._gpu_table = next((k.expert_ffn_gpu[x] for x in keys if x in k.expert_ffn_gpu), None)
        self._cpu_table = next((k.expert_ffn_cpu[x] for x in keys if x in k.expert_ffn_cpu), None)
        # measured blocks of the dense part (calibrated profiles); None: the roofline estimates the block
        akey = attention_key(spec)
        self._attn_table = k.attention_gpu.get(akey) if akey else None
        self._router_table = k.router_gpu.get(router_key(spec))
        self._head_table = k.head_gpu.get(head_key(spec))
        self._gather_table = k.gather_gpu.get(gather_key(spec))
        self.expert_bytes = spec.expert_bytes()
        # bytes a kernel reads per weight: the runtime's formats, else the stored size
        w = runtime.weights
        self._dense_read = self._read_bytes(w.dense, BYTES_PER_PARAM[spec.dtype])
        self._expert_read = self._expert_bytes_read(w.experts)
        self._cpu_expert_read = self._expert_bytes_read(w.cpu_experts or w.experts)
        p = hw.pcie
        self._h2d_gbps = p.h2d_pinned_gbps if pinned else p.h2d_pageable_gbps
        self._d2h_gbps = p.d2h_pinned_gbps if pinned else p.d2h_pageable_gbps
        self._copy_tables = p.copy_tables
        self._copy_memo: dict[tuple[str, float, bool], float] = {}  # the replay copies few distinct sizes
        # cache per-token-count answers: the engine asks the same few sizes millions of times
        self.expert_gpu_us = lru_cache(maxsize=4096)(self._expert_gpu_us)
        self.expert_cpu_us = lru_cache(maxsize=4096)(self._expert_cpu_us)
        self.expert_gpu_us_at = lru_cache(maxsize=4096)(self._expert_gpu_us_at)

    @staticmethod
    def _read_bytes(fmt: str | None, stored: float) -> float:
        """Bytes a kernel reads per weight in format `fmt` (GEMM and dequantisation passes); `stored` (the
        model's own size per weight) when the runtime keeps the model's precision."""
        if fmt is None:
            return stored
        f = get_format(fmt)
        return f.gemm_bytes + f.dequant_bytes

    def _expert_bytes_read(self, fmt: str | None) -> float:
        """Bytes one call of an expert reads: its stored bytes, or its weights in the runtime's format."""
        return self.expert_bytes if fmt is None else self.spec.expert_params * self._read_bytes(fmt, 0.0)

    # ---- GPU ---------------------------------------------------------------------------------------------
    def gpu_roofline_us(self, flops: float, nbytes: float, kernels: int = 1) -> float:
        t = max(flops / self._gpu_flops, nbytes / self._gpu_bw) * 1e6
        return max(t, kernels * self.hw.gpu.kernel_min_us)

    def _expert_gpu_us(self, tokens: int) -> float:
        """One routed expert applied to `tokens` tokens on the GPU (all of its kernels)."""
        if self._gpu_table is not None:
            return kernel_table_us(self._gpu_table, tokens)
        s = self.spec
        act = tokens * (2 * s.d_model + 3 * s.expert_d_ff) * self._act_bytes
        return self.gpu_roofline_us(s.expert_flops(tokens) + self._dequant_flops, self._expert_read + act,
                                    self.kernels.per_expert)

    def _expert_gpu_us_at(self, tokens: int, weight_bytes: int) -> float:
        """As `expert_gpu_us`, reading `weight_bytes` of weights instead of the whole expert (nested
        precision: a kernel computing on a prefix of the expert's bit planes)."""
        if self._gpu_table is not None:
            return kernel_table_us(self._gpu_table, tokens)
        s = self.spec
        act = tokens * (2 * s.d_model + 3 * s.expert_d_ff) * self._act_bytes
        return self.gpu_roofline_us(s.expert_flops(tokens) + self._dequant_flops, weight_bytes + act,
                                    self.kernels.per_expert)

    def _ffn_gpu_us(self, d_ff: int, tokens: int, n: int = 1) -> float:
        s = self.spec
        mats = 3 if s.activation in ("swiglu", "geglu") else 2
        params = n * mats * s.d_model * d_ff
        nbytes = params * self._dense_read + tokens * (2 * s.d_model + mats * d_ff) * self._act_bytes
        return self.gpu_roofline_us(2.0 * params * tokens, nbytes, self.kernels.per_dense_ffn)

    def attention_us(self, tokens: int, context_tokens: int) -> float:
        """Attention block of one layer: projections over `tokens` new tokens, reading `context_tokens` of KV
        (summed over the sequences in the step)."""
        if self._attn_table is not None:  # measured: by the cached tokens each new token attends to
            return attention_table_us(self._attn_table, tokens, context_tokens / max(tokens, 1))
        s = self.spec
        kv_layer = s.kv_bytes_per_token() / s.num_layers
        nbytes = s.attn_params * self._dense_read + context_tokens * kv_layer
        flops = 2.0 * s.attn_params * tokens + 4.0 * context_tokens * s.num_heads * s.head_dim
        return self.gpu_roofline_us(flops, nbytes, self.kernels.per_attention)

    def router_us(self, tokens: int) -> float:
        if self._router_table is not None:
            return kernel_table_us(self._router_table, tokens)
        s = self.spec
        return self.gpu_roofline_us(2.0 * s.router_params * tokens,
                                    s.router_params * BYTES_PER_PARAM[s.dtype], self.kernels.per_router)

    def shared_experts_us(self, tokens: int) -> float:
        s = self.spec
        return self._ffn_gpu_us(s.shared_d_ff, tokens, s.num_shared_experts) if s.num_shared_experts else 0.0

    def dense_ffn_us(self, tokens: int) -> float:
        return self._ffn_gpu_us(self.spec.dense_d_ff, tokens)

    def step_extra_us(self, tokens: int) -> float:
        """Embedding, final norm, lm_head and sampling of one step (lm_head on the sampled rows only)."""
        if self._head_table is not None:
            return kernel_table_us(self._head_table, tokens)
        s = self.spec
        p = s.vocab_size * s.d_model
        return self.gpu_roofline_us(2.0 * p * tokens, p * BYTES_PER_PARAM[s.dtype], self.kernels.per_step)

    def gather_each_us(self, tokens: int, kernels: int) -> float:
        """Each of the `kernels` kernels of an eager expert call's gather, gate weighting and scatter-add around
        its FFN, for the `tokens` tokens routed to it (the roofline: each moves their activations once)."""
        if self._gather_table is not None:
            return kernel_table_us(self._gather_table, tokens) / kernels
        return self.gpu_roofline_us(0.0, 2 * self.activation_bytes(tokens))

    # ---- CPU ---------------------------------------------------------------------------------------------
    def _expert_cpu_us(self, tokens: int) -> float:
        if self._cpu_table is not None:
            return kernel_table_us(self._cpu_table, tokens)
        s = self.spec
        t = max((s.expert_flops(tokens) + self._dequant_flops) / self._cpu_flops, self._cpu_expert_read / self._cpu_bw)
        return t * 1e6 + self._cpu_call_us

    # ---- copies ------------------------------------------------------------------------------------------
    def h2d_us(self, nbytes: float, pinned: bool | None = None) -> float:
        pin = self.pinned if pinned is None else pinned
        t = self._copy_memo.get(("h2d", nbytes, pin))
        return self._copy_us("h2d", nbytes, pin) if t is None else t

    def d2h_us(self, nbytes: float, pinned: bool | None = None) -> float:
        pin = self.pinned if pinned is None else pinned
        t = self._copy_memo.get(("d2h", nbytes, pin))
        return self._copy_us("d2h", nbytes, pin) if t is None else t

    def _copy_us(self, direction: str, nbytes: float, pinned: bool) -> float:
        kind = f"{direction}_{'pinned' if pinned else 'pageable'}"
        table = self._copy_tables.get(kind)
        if table is not None:
            t = copy_table_us(table, nbytes)
        else:
            p = self.hw.pcie
            t = p.latency_us + nbytes / (getattr(p, f"{kind}_gbps") * 1e3)
        if len(self._copy_memo) > 4096:  # a sweep of many sizes must not grow it without bound
            self._copy_memo.clear()
        self._copy_memo[(direction, nbytes, pinned)] = t
        return t

    def activation_bytes(self, tokens: int) -> int:
        return int(tokens * self.spec.d_model * self._act_bytes)
