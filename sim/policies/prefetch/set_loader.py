"""SwapMoE's background loading: when the virtual-experts set changes, the experts that joined it are copied
to the GPU ahead of use instead of on first use.

Modelled as a prefetcher that follows the run's `virtual-experts` routing policy (bound through
`bind_routing`): after layer 0's routing is known it proposes, for every later layer, the members of the set
the step's rows are routed with (the engine skips those already resident, so once a set is loaded nothing is
copied); after the last layer it proposes layer 0's set for the same rows, which is the next step's set
unless the set is updated in between. The sets are decided from tokens already served, so this reads no
future. Without the virtual-experts routing it proposes nothing.

Source: Kong et al., ACL 2024, "SwapMoE: Serving Off-the-shelf MoE-based Large Language Models with Tunable
Memory Budget" (virtual experts are updated and swapped in the background, off the critical path).
"""

from __future__ import annotations

from simmoe.policies.base import PrefetchPolicy, StepView


class SetLoader(PrefetchPolicy):
    name = "set-loader"
    summary = "SwapMoE background loading: copy the virtual-experts set members ahead of their layers"
    reference = ("Kong et al. ACL 2024, SwapMoE: Serving Off-the-shelf MoE-based Large Language Models with "
                 "Tunable Memory Budget")

    def __init__(self, ctx, options) -> None:
        super().__init__(ctx, options)
        self._router = None

    def bind_routing(self, router) -> None:
        self._router = router if getattr(router, "version", None) is not None else None

    def propose(self, view: StepView, layer: int) -> list[tuple[int, int]]:
        rows = view.rows
        if self._router is None or rows is None:
            return []
        L = len(view.experts_by_layer)
        targets = range(1, L) if layer == 0 else (0,) if layer == L - 1 else ()
        router = self._router
        per_layer = self.ctx.capacity // max(len(self.ctx.layers), 1)
        out = []
        for m in targets:
            want = router.members(m, rows)
            if len(want) > per_layer:  # batch rows routed with different sets: load the newest one only
                newest = rows[router.version[rows, m].argmax():][:1]
                want = router.members(m, newest)
            out += [(m, e) for e in sorted(want)]
        return out
