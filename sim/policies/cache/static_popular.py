"""A fixed hot set of the most popular experts, resident from the start and never evicted (Fiddler, MoNDE):
popularity comes from a profile, the hot set is preloaded (no copy counted) and pinned.

Sources of the profile (exactly one):
- `profile`: a separate routing trace (.npz); popularity = tokens routed to each (layer, expert). This is the
  honest setting: profile on one workload, replay another.
- `profile_prefix`: the first fraction of the replayed run's own accesses; popularity = accesses per key.
  That is knowledge of the run's future, so with this option the policy is an oracle
  (`reads_future_for(options)` is True) and it needs the access sequence from the engine
  (`ctx.access_keys`, the key of every access in order).

`lru_slots` slots of each partition stay outside the hot set, managed LRU, for experts outside it (slots the
profile leaves empty, when it saw fewer experts than the hot set could hold, join them). With lru_slots = 0
every slot is hot and a miss cannot be cached: pair the policy with a placement that computes misses
elsewhere (e.g. on the CPU, as Fiddler does) or an engine that honours `admit()`.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
from pydantic import Field

from simmoe.errors import InputError
from simmoe.policies.base import CacheOptions, CachePolicy

_PROFILES: dict[tuple[str, int, int], np.ndarray] = {}  # (path, mtime_ns, size) -> counts [L, E]


def profile_counts(path: str) -> np.ndarray:
    """Tokens routed to each (MoE layer, expert) in the trace at `path`, shape [L, E] (cached per file)."""
    from simmoe.trace.format import read_trace

    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        raise InputError("policy static-popular", "profile", f"no such file: {path}") from None
    key = (str(p), st.st_mtime_ns, st.st_size)
    counts = _PROFILES.get(key)
    if counts is None:
        tr = read_trace(p)
        ex = tr.experts
        e = max(int(ex.max()) + 1, tr.num_experts)
        counts = np.zeros((tr.num_layers, e), dtype=np.int64)
        for m in range(tr.num_layers):
            col = ex[:, m, :].ravel()
            counts[m] = np.bincount(col[col >= 0], minlength=e)
        _PROFILES.clear()  # one profile at a time is all a run needs
        _PROFILES[key] = counts
    return counts


class StaticPopularOptions(CacheOptions):
    profile: str | None = Field(None, description="routing trace (.npz) to count expert popularity on")
    profile_prefix: float | None = Field(None, gt=0.0, le=1.0,
                                         description="fraction of the replayed run's accesses to profile (oracle)")
    lru_slots: int = Field(1, ge=0, description="slots per partition kept for experts outside the hot set (LRU)")

    def model_post_init(self, _ctx) -> None:
        super().model_post_init(_ctx)
        if (self.profile is None) == (self.profile_prefix is None):
            raise ValueError("give exactly one of profile (a trace file) or profile_prefix (a fraction)")


class StaticPopular(CachePolicy):
    name = "static-popular"
    summary = "pinned hot set of the most popular experts from a profile (+ lru_slots LRU slots for the rest)"
    reference = "Fiddler (Kamahori et al. 2024); MoNDE (Kim et al. 2024)"
    Options = StaticPopularOptions

    @classmethod
    def reads_future_for(cls, options: StaticPopularOptions) -> bool:
        return options.profile_prefix is not None

    def __init__(self, ctx, options: StaticPopularOptions) -> None:
        super().__init__(ctx, options)
        e = ctx.num_experts
        counts = self._counts()
        cand = [(int(counts[m, x]), m * e + x) for m in ctx.layers for x in range(e) if counts[m, x] > 0]
        cand.sort(key=lambda c: (-c[0], c[1]))
        n = max(self.capacity - options.lru_slots, 0)
        self.hot: tuple[int, ...] = tuple(k for _, k in cand[:n])
        self._hot = frozenset(self.hot)
        self._held: set[int] = set()  # hot keys resident
        self._lru: OrderedDict[int, None] = OrderedDict()  # the other keys, least recent first

    def _counts(self) -> np.ndarray:
        o, ctx = self.options, self.ctx
        e = ctx.num_experts
        need = max(ctx.layers) + 1
        if o.profile is not None:
            counts = profile_counts(o.profile)
            if counts.shape[0] < need or counts.shape[1] > e:
                raise InputError("policy static-popular", "profile",
                                 f"{o.profile} has {counts.shape[0]} MoE layers and {counts.shape[1]} experts; "
                                 f"the replayed model needs {need} layers of {e} experts")
            out = np.zeros((counts.shape[0], e), dtype=np.int64)
            out[:, :counts.shape[1]] = counts
            return out
        keys = getattr(ctx, "access_keys", None)
        if keys is None:
            raise InputError("policy static-popular", "profile_prefix",
                             "needs the run's access sequence, which this engine does not give cache policies "
                             "(ctx.access_keys); use profile=TRACE.npz")
        prefix = np.asarray(keys[: int(round(len(keys) * o.profile_prefix))], dtype=np.int64)
        return np.bincount(prefix, minlength=need * e)[: need * e].reshape(need, e)

    def preload(self) -> tuple[int, ...]:
        return self.hot

    def admit(self, key: int, t: int) -> bool:
        """Whether a missed key may be cached (False: compute it from a staging buffer or elsewhere)."""
        return key in self._hot or self.options.lru_slots > 0

    def find(self, key: int, t: int) -> bool:
        if key in self._held:
            return True
        if key in self._lru:
            self._lru.move_to_end(key)
            return True
        return False

    def insert(self, key: int, t: int) -> None:
        if key in self._hot:
            self._held.add(key)
        else:
            self._lru[key] = None

    def to_evict(self, t: int) -> int:
        if not self._lru:
            raise InputError("policy static-popular", "lru_slots",
                             "a miss must be cached but every slot holds the pinned hot set: set lru_slots >= 1 "
                             "or compute misses elsewhere (a CPU placement)")
        return next(iter(self._lru))

    def evict(self, key: int) -> None:
        if key in self._lru:
            del self._lru[key]
        else:  # only reachable if an engine evicts a hot key on its own
            self._held.remove(key)

    def __contains__(self, key: int) -> bool:
        return key in self._held or key in self._lru

    def __len__(self) -> int:
        return len(self._held) + len(self._lru)

    def keys(self) -> list[int]:
        return [k for k in self.hot if k in self._held] + list(self._lru)
