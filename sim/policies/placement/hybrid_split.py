"""HybriMoE's intra-layer CPU/GPU split: within a layer, cached experts run on the GPU; the missing ones are
ordered by token count and dealt greedily, the GPU taking from the head (most tokens: worth the copy) and
the CPU from the tail, whichever side would finish sooner, so both finish at about the same time.

The `hybrimoe` system combines it with the MRS score cache (`mrs`) and the impact-driven prefetch (`impact`).
"""

from __future__ import annotations

from collections.abc import Sequence

from simmoe.policies.base import Access, Options, PlacementPolicy


class HybridSplit(PlacementPolicy):
    name = "hybrid-split"
    summary = "HybriMoE intra-layer split: misses by token count, GPU from the head, CPU from the tail, balanced"
    reference = "Zhong et al. DAC 2025, HybriMoE: Hybrid CPU-GPU Scheduling and Cache Management for MoE"
    Options = Options
    layer_wise = True

    def place_layer(self, hits: Sequence[Access], misses: Sequence[Access], costs) -> list[str]:
        gpu_t = sum(costs.expert_gpu_us(a.tokens) for a in hits)
        act = costs.activation_bytes(max((a.tokens for a in misses), default=1))
        cpu_t = costs.d2h_us(act) + costs.h2d_us(act, pinned=True)  # the activations' round trip
        order = sorted(range(len(misses)), key=lambda i: -misses[i].tokens)
        out = ["gpu"] * len(misses)
        head, tail = 0, len(order) - 1
        while head <= tail:
            g, c = misses[order[head]], misses[order[tail]]
            g_end = gpu_t + costs.h2d_us(costs.expert_bytes) + costs.expert_gpu_us(g.tokens)
            c_end = cpu_t + costs.expert_cpu_us(c.tokens)
            if g_end <= c_end:
                gpu_t = g_end
                head += 1
            else:
                cpu_t = c_end
                out[order[tail]] = "cpu"
                tail -= 1
        return out

    def place(self, acc: Access, costs) -> str:  # single-expert form, for completeness
        return self.place_layer((), (acc,), costs)[0]
