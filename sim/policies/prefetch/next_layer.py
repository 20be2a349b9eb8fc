"""Speculative next-layer prefetch (Mixtral-offloading): the next layer's gate applied to the current hidden
state guesses the next layer's experts, which are copied while this layer computes.

The guess comes from the trace's `predicted` array when it has one (captured with `simmoe trace capture
--predict`: real speculative accuracy). Otherwise `accuracy` models the predictor: each true next-layer expert
is guessed right with that probability, else replaced by a random other expert (seeded). That mode draws on
the true routing of the next layer to synthesise a guess of known accuracy; it is not an oracle, but it is
only as faithful as the accuracy figure given.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from simmoe.errors import InputError
from simmoe.policies.base import Options, PrefetchPolicy, StepView


class NextLayerOptions(Options):
    accuracy: float | None = Field(None, ge=0.0, le=1.0)  # used when the trace has no `predicted` array
    distance: int = Field(1, ge=1)  # predict layer + distance (ProMoE's stride uses 2)
    seed: int = 0


class NextLayerPrefetch(PrefetchPolicy):
    name = "next-layer"
    summary = "speculative prefetch of the next layer's experts (trace `predicted`, else an accuracy option)"
    reference = "Eliseev & Mazur 2023, Fast Inference of MoE Language Models with Offloading"
    Options = NextLayerOptions

    def __init__(self, ctx, options) -> None:
        super().__init__(ctx, options)
        self._rng = np.random.default_rng(options.seed)

    def guess(self, view: StepView, layer: int) -> np.ndarray | None:
        target = layer + self.options.distance
        if target >= len(view.experts_by_layer):  # the next token's routing is not known yet
            return None
        if view.predicted_by_layer is not None and self.options.distance == 1:
            return view.predicted_by_layer[layer]
        acc = self.options.accuracy
        if acc is None:
            raise InputError(f"policy {self.name}", "accuracy",
                             "the trace has no `predicted` array: give the predictor's accuracy, e.g. "
                             "--prefetch-opt accuracy=0.8")
        true = np.asarray(view.experts_by_layer[target])
        wrong = self._rng.random(len(true)) >= acc
        if not wrong.any():
            return true
        E = self.ctx.num_experts
        guess = true.copy()
        others = np.setdiff1d(np.arange(E), true)
        if len(others):
            guess[wrong] = self._rng.choice(others, size=int(wrong.sum()), replace=len(others) < wrong.sum())
        return np.unique(guess)

    def propose(self, view: StepView, layer: int):
        g = self.guess(view, layer)
        if g is None:
            return ()
        target = layer + self.options.distance
        return [(target, int(e)) for e in g]
