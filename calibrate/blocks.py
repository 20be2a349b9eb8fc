"""The dense part of a model, timed block by block: what an eager PyTorch model runs around its experts.

An expert table alone leaves the rest of a step to the roofline, and the roofline does not know that a small
block is a dozen eager ops (a CPU's RMSNorm alone is a composite of several): `simmoe calibrate --model M`
times these blocks of M's shapes, at the token counts of the expert sweep, and the profile keeps them as
`kernels.attention_gpu`, `router_gpu`, `head_gpu` and `gather_gpu` (sim/hw/kernel_keys.py names the keys).

    attention  RMSNorm, q/k/v projections, the new K/V written into a preallocated per-sequence cache, the
               batch's cached K/V gathered from it, masked scaled-dot-product attention, the output projection
               and the residual add: a decode step of `tokens` sequences of `context` cached tokens each, at
               each of `CONTEXTS` (grouped-query attention; multi-head latent attention is not timed, the
               roofline estimates it)
    router     the post-attention RMSNorm, the gate projection, softmax in fp32, top-k, the layer output's
               zeroed accumulator
    head       the step's embedding lookup, the final RMSNorm, lm_head and argmax over `tokens` rows
    gather     an eager expert call's work at more than one token besides its FFN: index_select of its tokens,
               the gate weighting and the scatter-add into the layer output (HF transformers' loop)

Each block's `ops` is the number of eager ops it dispatches, counted as runtime profiles count kernels (a view
is not one; at one new token per sequence the attention output's reshape is a view, so attention has 11): on a CPU measured as the device, each op's dispatch is taken out of the table, since the
simulator adds the runtime's own launches (tests/test_calibrate_blocks.py checks the counts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from simmoe.hw.kernel_keys import attention_key, dense_dtype, gather_key, head_key, router_key
from simmoe.models.spec import BYTES_PER_PARAM, ModelSpec

CONTEXTS = (32, 64, 128, 256, 512)  # cached tokens per sequence the attention block is timed at
MAX_CACHED_TOKENS = 2**16  # sequences x context of one timed attention step (beyond: the table's slopes)
# weight sets a timed call rotates over, at most: enough for small experts and blocks to exceed a last-level
# cache of hundreds of MiB (rotate_bytes bounds the memory)
MAX_COPIES = 2048
OPS = {"attention": 11, "router": 6, "head": 4, "gather": 3}


@dataclass(frozen=True)
class Block:
    """One timed block of a model: `make(tokens, context)` builds the inputs of a call at `tokens` (and
    `context` cached tokens per sequence, for attention) and returns the call `fn(i)`, which runs on the i-th
    set of weights (they rotate, so that a call reads them from memory)."""

    kind: str
    key: str
    ops: int
    make: Callable[[int, int], Callable[[int], object]]
    contexts: tuple[int, ...] = (0,)


def blocks_of(spec: ModelSpec, device: str, rotate_bytes: int = 0) -> list[Block]:
    """The timed blocks of `spec` on `device`; each block's weights are repeated to exceed `rotate_bytes`."""
    import torch
    import torch.nn.functional as F

    dt_name = dense_dtype(spec)
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dt_name]
    d = spec.d_model
    bpp = BYTES_PER_PARAM[dt_name]

    def w(*shape: int) -> Any:
        return torch.empty(*shape, dtype=dt, device=device).normal_(0, 0.02)

    def sets(make_set: Callable[[], tuple], nbytes: float) -> list[tuple]:
        return [make_set() for _ in range(weight_copies(int(nbytes), rotate_bytes))]

    def x_of(n: int) -> Any:
        return torch.randn(n, d, dtype=dt, device=device)

    out: list[Block] = []
    akey = attention_key(spec, dt_name)
    if akey is not None:
        H, kvh, hd = spec.num_heads, spec.num_kv_heads, spec.head_dim
        attn_w = sets(lambda: (w(d), w(H * hd, d), w(kvh * hd, d), w(kvh * hd, d), w(d, H * hd)),
                      (2 * H * hd + 2 * kvh * hd) * d * bpp)

        def attention(n: int, ctx: int) -> Callable[[int], object]:
            x = x_of(n)
            # a cache preallocated for twice the context: the step reads a strided prefix of each sequence's
            kc = torch.randn(n, kvh, 2 * ctx + 2, hd, dtype=dt, device=device)
            vc = torch.randn_like(kc)
            slots = torch.arange(n, device=device)
            pos = torch.full((n,), ctx, device=device)
            mask = torch.ones(n, 1, 1, ctx + 1, dtype=torch.bool, device=device)

            def call(i: int) -> object:
                n1, wq, wk, wv, wo = attn_w[i % len(attn_w)]
                hn = F.rms_norm(x, (d,), n1)
                q = F.linear(hn, wq).view(n, 1, H, hd).transpose(1, 2)
                kc[slots, :, pos] = F.linear(hn, wk).view(n, kvh, hd)
                vc[slots, :, pos] = F.linear(hn, wv).view(n, kvh, hd)
                o = F.scaled_dot_product_attention(q, kc[slots, :, :ctx + 1], vc[slots, :, :ctx + 1],
                                                   attn_mask=mask, enable_gqa=kvh != H)
                return x + F.linear(o.transpose(1, 2).reshape(n, H * hd), wo)

            return call

        out.append(Block("attention", akey, OPS["attention"], attention, CONTEXTS))

    E, K = spec.num_experts, spec.top_k
    router_w = sets(lambda: (w(d), w(E, d)), E * d * bpp)

    def router(n: int, _ctx: int) -> Callable[[int], object]:
        x = x_of(n)

        def call(i: int) -> object:
            n2, wg = router_w[i % len(router_w)]
            hn = F.rms_norm(x, (d,), n2)
            top = torch.topk(torch.softmax(F.linear(hn, wg).float(), dim=-1), K, dim=-1).indices
            return top, torch.zeros_like(hn)

        return call

    out.append(Block("router", router_key(spec, dt_name), OPS["router"], router))

    V = spec.vocab_size
    head_w = sets(lambda: (w(V, d), w(d), w(V, d)), 2 * V * d * bpp)

    def head(n: int, _ctx: int) -> Callable[[int], object]:
        ids = torch.randint(0, V, (n,), device=device)
        x = x_of(n)

        def call(i: int) -> object:
            emb, nf, lm = head_w[i % len(head_w)]
            e = F.embedding(ids, emb)
            return e, torch.argmax(F.linear(F.rms_norm(x, (d,), nf), lm), dim=-1)

        return call

    out.append(Block("head", head_key(spec, dt_name), OPS["head"], head))

    def gather(n: int, _ctx: int) -> Callable[[int], object]:
        batch = max(n, 2)
        hn, acc, y = x_of(batch), x_of(batch), x_of(n)
        idx = torch.arange(n, device=device)
        g = torch.rand(n, dtype=dt, device=device)

        def call(i: int) -> object:
            xs = hn.index_select(0, idx)  # the expert's FFN would run on xs; y stands for its output
            return xs, acc.index_add_(0, idx, y * g[:, None])

        return call

    out.append(Block("gather", gather_key(spec, dt_name), OPS["gather"], gather))
    return out


def weight_copies(block_bytes: int, rotate_bytes: int) -> int:
    """Weight sets to rotate over so that a call reads its weights from memory, not from the cache."""
    return max(1, min(MAX_COPIES, math.ceil(rotate_bytes / max(block_bytes, 1))))
