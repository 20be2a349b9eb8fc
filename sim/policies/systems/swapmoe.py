"""SwapMoE (Kong et al., ACL 2024): routing to a dynamic set of virtual experts kept on the GPU (the
`virtual-experts` routing policy), a cache that holds exactly that set, and background loading of the
experts that join it."""

from __future__ import annotations

from pydantic import Field

from simmoe.policies.base import Options, PolicySet, SystemPolicy
from simmoe.policies.routing.swapmoe import REFERENCE


class SwapMoEOptions(Options):
    slots: int = Field(8, ge=1, description="virtual experts per MoE layer = GPU cache slots per layer")
    update_every: int = Field(16, ge=1, description="tokens between updates of the virtual set")
    decay: float = Field(0.9, ge=0.0, lt=1.0, description="importance EMA decay per token")
    background: bool = Field(True, description="load joining experts ahead of use (set-loader prefetch), "
                                               "not on first use")


class SwapMoE(SystemPolicy):
    name = "swapmoe"
    summary = "SwapMoE: virtual-experts routing + a cache of `slots` per layer that holds exactly the set"
    reference = REFERENCE
    Options = SwapMoEOptions

    @classmethod
    def expand(cls, options) -> PolicySet:
        ropts = {"slots": options.slots, "update_every": options.update_every, "decay": options.decay}
        return PolicySet(cache="virtual-set", cache_options={"slots_per_layer": options.slots},
                         routing="virtual-experts", routing_options=ropts,
                         prefetch="set-loader" if options.background else None)
