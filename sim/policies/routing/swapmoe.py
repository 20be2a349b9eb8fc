"""SwapMoE's virtual experts (Kong et al., ACL 2024, "SwapMoE: Serving Off-the-shelf MoE-based Large Language
Models with Tunable Memory Budget", arXiv 2308.15030): each MoE layer keeps a small dynamic set of important
experts (the "virtual experts") in GPU memory, and the gate is masked so that tokens go only to experts of
that set; the set is re-chosen from importance scores as the workload shifts, and the swapped-in experts are
loaded in the background. The memory budget is the set size (`slots` per layer).

What is modelled here, per MoE layer, over the trace's rows in row order (deterministic; requests one after
another, whatever the batch the engine builds later):

- importance: an exponential moving average of the gate mass each expert is *asked for* (the unmasked
  gate's choice): score <- decay * score + p, p = the token's gate weights normalised over its top-k (1/k per
  slot when the trace has no gates). The paper's exact importance estimate is not public in a form we could
  check, so this rule is ours (documented, option `decay`).
- the set: every `update_every` tokens it becomes the `slots` highest-scoring experts (ties keep current
  members, then the lower id; an expert never asked for is never added). While a set has room (cold start)
  it fills on first use: a token's experts outside it join it, in slot order.
- masked routing: a token keeps the experts of its top-k that are in the set; the others become -1. A trace
  holds only each token's top-k, not the gate's full logits, so the next-best resident expert a masked gate
  would pick instead cannot be known: dropped experts are not replaced. A token none of whose experts is in
  the set is given the set's most important expert (highest score so far) so that every token is served,
  and its gate mass counts as lost.
- fidelity = gate mass kept / total (per token and layer, averaged); 1.0 when `slots` >= the experts in use.

Copies: `entries` experts join the sets in all (fills and swaps). The `virtual-set` cache follows the sets
(its victim is a resident expert outside the current rows' sets), so at one row per step every miss is the
first use of an expert since it (re)joined its set: misses <= `loads` (tenures in which the expert served a
token) <= `entries`; an expert that left stays resident until its slot is needed, so a quick return hits.
Without a prefetcher the copies are made on that first use. The paper loads swapped-in experts in the
background: the `set-loader` prefetcher (on in the `swapmoe` system unless background=false) copies every
expert that joins a later layer's set after layer 0's routing, so only layer 0 still misses; it loads joining
experts whether or not they serve a token in their tenure, and its copies share the H2D engine with demand
copies (on the bundled synthetic trace this costs more than it hides: see the golden test). At batch > 1 a
step's rows may belong to different periods: the cache keeps their union. The `swapmoe` system composes the
routing, the `virtual-set` cache and the loader.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from simmoe.policies.base import Options, RoutingPolicy

REFERENCE = ("Kong et al. ACL 2024, SwapMoE: Serving Off-the-shelf MoE-based Large Language Models with "
             "Tunable Memory Budget (arXiv 2308.15030)")


class VirtualExpertsOptions(Options):
    slots: int = Field(8, ge=1, description="virtual experts per MoE layer (the memory budget)")
    update_every: int = Field(16, ge=1, description="tokens between updates of the virtual set")
    decay: float = Field(0.9, ge=0.0, lt=1.0, description="importance: score <- decay * score + gate mass")


class VirtualExperts(RoutingPolicy):
    name = "virtual-experts"
    summary = "SwapMoE virtual experts: tokens routed only to a per-layer set of `slots` important experts"
    reference = REFERENCE
    Options = VirtualExpertsOptions

    def __init__(self, options: VirtualExpertsOptions) -> None:
        super().__init__(options)
        # filled by reroute: per MoE layer, the set a row was routed with = sets[m][version[row, m]]
        self.version: np.ndarray | None = None
        self.sets: list[list[np.ndarray]] = []
        self.entries = 0  # experts that joined a set (fills and swaps)
        self.loads = 0  # tenures (join .. leave) in which the expert served at least one token
        self.substituted = 0  # (token, layer) pairs none of whose experts was in the set

    def members(self, layer: int, rows: np.ndarray) -> set[int]:
        """The union of the virtual sets of `layer` that `rows` were routed with."""
        ver = self.version[rows, layer]
        sets = self.sets[layer]
        out: set[int] = set()
        for v in np.unique(ver).tolist():
            out.update(sets[v].tolist())
        return out

    def reroute(self, experts: np.ndarray, gates: np.ndarray | None) -> tuple[np.ndarray, float]:
        o = self.options
        n = experts.shape[0]
        sets = _Sets(experts, gates, o.slots, o.decay)
        r = 0
        while r < n:
            if r and r % o.update_every == 0:
                sets.update()
            if sets.filling():  # a set has room: experts join on first use, row by row
                sets.row(r)
                r += 1
                continue
            stop = min(n, (r // o.update_every + 1) * o.update_every, r + _BLOCK)
            sets.block(r, stop)  # the sets are fixed until the next update: many rows at once
            r = stop
        self.version, self.sets = sets.version, sets.sets
        self.entries, self.loads, self.substituted = sets.entries, sets.loads, sets.substituted
        denom = float(sets.p.sum())
        return sets.out, (sets.kept_mass / denom if denom else 1.0)


_BLOCK = 256  # rows routed at once between updates (bounds the [rows, layers, experts] score array)


class _Sets:
    """The per-layer virtual sets and importance scores while rerouting a trace (rows in order)."""

    def __init__(self, experts: np.ndarray, gates: np.ndarray | None, slots: int, decay: float) -> None:
        n, nl, k = experts.shape
        ne = max(int(experts.max()) + 1, 1) if experts.size else 1
        self.ne, self.nl, self.k = ne, nl, k
        self.slots = min(slots, ne)
        self.decay = decay
        self.experts = experts
        self.valid = valid = experts >= 0
        if gates is None:
            w = valid.astype(np.float64)
        else:
            w = np.where(valid, np.nan_to_num(gates, nan=0.0), 0.0).astype(np.float64)
        tot = w.sum(axis=-1, keepdims=True)
        self.p = np.divide(w, tot, out=np.zeros_like(w), where=tot > 0)  # each token's gate mass sums to 1
        self.ex0 = np.where(valid, experts, 0).astype(np.int64)
        self.lidx = np.arange(nl)
        self.member = np.zeros((nl, ne), dtype=bool)
        self.served = np.zeros((nl, ne), dtype=bool)  # used since it last joined
        self.size = np.zeros(nl, dtype=np.int64)
        self.score = np.zeros((nl, ne))
        self.out = np.where(valid, experts, -1).astype(experts.dtype)
        self.version = np.empty((n, nl), dtype=np.int32)
        self.sets: list[list[np.ndarray]] = [[np.zeros(0, np.int64)] for _ in range(nl)]
        self.ver = np.zeros(nl, dtype=np.int32)
        self.kept_mass = 0.0
        self.entries = self.loads = self.substituted = 0

    def filling(self) -> bool:
        return bool((self.size < self.slots).any())

    def _snapshot(self, changed: np.ndarray) -> None:
        for m in np.flatnonzero(changed).tolist():
            self.sets[m].append(np.flatnonzero(self.member[m]))
            self.ver[m] += 1

    def update(self) -> None:
        """The `slots` highest scores (members win ties, then lower ids); never-asked experts stay out."""
        member, score = self.member, self.score
        ids = np.broadcast_to(np.arange(self.ne), member.shape)
        order = np.lexsort((ids, ~member, -score), axis=-1)[:, :self.slots]
        new = np.zeros_like(member)
        new[self.lidx[:, None], order] = True
        new &= (score > 0) | member
        joined = new & ~member
        self.entries += int(joined.sum())
        self.served &= ~joined
        changed = (new != member).any(axis=1)
        self.member = new
        self.size = new.sum(axis=1)
        if changed.any():
            self._snapshot(changed)

    def _use(self, lay: np.ndarray, exp: np.ndarray) -> None:
        """Count the tenures these (layer, expert) uses open (first use since joining); mark them served."""
        first = ~self.served[lay, exp]
        self.loads += int(np.unique(lay[first] * self.ne + exp[first]).size)
        self.served[lay, exp] = True

    def row(self, r: int) -> None:
        """One row, the sets filling on first use (slot order) while they have room."""
        member, lidx, slots = self.member, self.lidx, self.slots
        ex, vr, pr = self.ex0[r], self.valid[r], self.p[r]  # [L, K]
        changed = np.zeros(self.nl, dtype=bool)
        for j in range(self.k):
            e = ex[:, j]
            add = vr[:, j] & (self.size < slots) & ~member[lidx, e]
            if add.any():
                member[lidx[add], e[add]] = True
                self.served[lidx[add], e[add]] = False
                self.size += add
                self.entries += int(add.sum())
                changed |= add
        if changed.any():
            self._snapshot(changed)
        self.version[r] = self.ver
        keep = vr & member[lidx[:, None], ex]
        self.kept_mass += float((pr * keep).sum())
        self.out[r] = np.where(keep, self.experts[r], -1)
        use_e, use = ex.copy(), keep.copy()
        lost = vr.any(axis=1) & ~keep.any(axis=1)
        for m in np.flatnonzero(lost).tolist():  # the set's most important expert serves it; its mass is lost
            best = int(np.argmax(np.where(member[m], self.score[m], -np.inf)))
            self.out[r, m, 0] = use_e[m, 0] = best
            use[m, 0] = True
        self.substituted += int(lost.sum())
        lay = np.broadcast_to(lidx[:, None], ex.shape)
        self._use(lay[use], use_e[use])
        self.score *= self.decay
        np.add.at(self.score, (lay[vr], ex[vr]), pr[vr])

    def block(self, r0: int, r1: int) -> None:
        """Rows r0..r1-1 with fixed, full sets: the same rule as `row`, vectorised over the rows."""
        member, lidx, ne = self.member, self.lidx, self.ne
        u = r1 - r0
        ex, vr, pr = self.ex0[r0:r1], self.valid[r0:r1], self.p[r0:r1]  # [U, L, K]
        self.version[r0:r1] = self.ver
        keep = vr & member[lidx[None, :, None], ex]
        self.kept_mass += float((pr * keep).sum())
        self.out[r0:r1] = np.where(keep, self.experts[r0:r1], -1)
        # importance before each row: y[i] = decay * y[i-1] + mass asked at row i-1, y[0] = the current score
        q = np.zeros((u + 1, self.nl * ne))
        q[0] = self.score.ravel()
        rows = np.broadcast_to(np.arange(1, u + 1)[:, None, None], ex.shape)
        flat = np.broadcast_to((lidx * ne)[None, :, None], ex.shape) + ex
        np.add.at(q, (rows[vr], flat[vr]), pr[vr])
        for i in range(1, u + 1):  # (a loop of vector ops: scipy's lfilter is slower at these shapes)
            q[i] += self.decay * q[i - 1]
        y = q.reshape(u + 1, self.nl, ne)
        self.score = y[u].copy()
        use_e, use = ex.copy(), keep.copy()
        lost = vr.any(axis=2) & ~keep.any(axis=2)  # [U, L]
        if lost.any():
            best = np.argmax(np.where(member[None], y[:u], -np.inf), axis=2)  # [U, L]
            ui, li = np.nonzero(lost)
            self.out[r0 + ui, li, 0] = best[ui, li]
            use_e[ui, li, 0] = best[ui, li]
            use[ui, li, 0] = True
            self.substituted += len(ui)
        lay = np.broadcast_to(lidx[None, :, None], ex.shape)
        self._use(lay[use], use_e[use])
