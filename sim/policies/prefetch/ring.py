"""SE-MoE's ring of memory sections, for a model larger than GPU memory.

SE-MoE (Shen et al. 2022, "SE-MoE: A Scalable and Efficient Mixture-of-Experts Distributed Training and
Inference System", arXiv 2205.10034, section on inference) "forms the CPU-GPU memory jointly into a ring of
sections to load the model, and executes the computation tasks across the memory sections in a round-robin
manner". Modelled per MoE layer: the GPU holds `sections` whole layers of experts; once layer l has
computed, every expert of layer l + sections (past the last layer: the next token's layers) is copied into
the section layer l frees. The copies do not depend on the routing at all.

- `ring` (prefetch): after layer l, propose every expert of layer (l + depth) mod L, in expert order.
  depth defaults to the number of whole layers the cache holds (capacity // experts, at least 1).
- `se-moe` (system): a global FIFO cache (the section copied in longest ago is the one just computed) with
  the `ring` prefetch. Give the cache size as usual (slots_per_layer or cache_gb; default: the free GPU
  memory); `sections` sets the ring depth (default: the whole layers that fit).

What characterises it: once warm, every decode token copies L x E experts (each layer passes through the GPU
once per token: with fewer sections than layers a layer is always evicted before its next use), whatever the
routing; the only demand misses are the cold first layers, unless `sections` is set deeper than the memory
holds, when the ring evicts layers before they are computed.
"""

from __future__ import annotations

from pydantic import Field

from simmoe.policies.base import (
    Options,
    PrefetchPolicy,
    StepView,
)


class RingOptions(Options):
    depth: int | None = Field(None, ge=1, description="layers ahead (default: whole layers the cache holds)")


class RingPrefetch(PrefetchPolicy):
    name = "ring"
    summary = "SE-MoE ring: after layer l, copy every expert of layer l+depth (wrapping to the next token)"
    reference = "Shen et al. 2022, SE-MoE: A Scalable and Efficient MoE Distributed Training and Inference System"
    Options = RingOptions

    def __init__(self, ctx, options) -> None:
        super().__init__(ctx, options)
        self.depth = options.depth if options.depth is not None else max(ctx.capacity // max(ctx.num_experts, 1), 1)

    def propose(self, view: StepView, layer: int):
        if not self.ctx.capacity:
            return ()
        target = (layer + self.depth) % len(view.experts_by_layer)
        return [(target, e) for e in range(self.ctx.num_experts)]
