"""Suspicious but valid configurations: the run goes on as asked, with a SimmoeWarning saying what will not
behave as the user probably expects (the CLI prints each once as one line; `-q` silences them).

Each check is a function of the prepared scenario; `warn_suspicious` runs them all at the end of `prepare`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from simmoe.errors import warn
from simmoe.policies.base import CacheOptions

if TYPE_CHECKING:
    from simmoe.engine.scenario import Scenario

# A run whose rows are at least this share prefill has few decode tokens to measure TPOT and throughput on.
PREFILL_SHARE = 0.9


def batch_message(sc: Scenario) -> str | None:
    """--batch above the run's request count: the batch is never full, at most that many run at once."""
    n = len(sc.ri.ids)
    if sc.cfg.batch > n:
        return (f"batch {sc.cfg.batch} but the run has {n} request{'s' if n != 1 else ''}: at most {n} run at "
                f"once, so this is a batch-{n} run (`requests` cycles the trace's requests)")
    return None


def cache_message(sc: Scenario) -> str | None:
    """A cache size beyond the model's experts: capped at every expert (the cache holds the whole model)."""
    opts, r = sc.policies.cache_opts, sc.policies
    if not isinstance(opts, CacheOptions):
        return None
    E = sc.num_experts
    name = f"policy {r.pset.system or r.cache_cls.name}"
    if opts.slots_per_layer is not None and opts.slots_per_layer > E:
        return (f"{name}: slots_per_layer {opts.slots_per_layer} is more than the model's {E} experts per MoE "
                f"layer: the cache holds all {E} (every access after the first is a hit)")
    gpu_layers = sc.num_layers - len(sc.cpu_layers)
    if opts.cache_gb is not None and gpu_layers:
        slots = int(opts.cache_gb * 2**30) // sc.memory.expert_bytes
        if slots > E * gpu_layers:
            whole = E * gpu_layers * sc.memory.expert_bytes / 2**30
            return (f"{name}: cache_gb {opts.cache_gb:g} is more than the {whole:.2f} GiB all {E * gpu_layers} "
                    f"experts take: the cache holds every expert (every access after the first is a hit)")
    return None


def prefill_message(sc: Scenario) -> str | None:
    """A run of (almost) only prefill rows: decode metrics rest on a handful of tokens."""
    phase = sc.trace.phase
    if not len(phase):
        return None
    decode = int(np.count_nonzero(phase))
    share = 1 - decode / len(phase)
    if share >= PREFILL_SHARE:
        return (f"{share:.0%} of the run's {len(phase):,} trace rows are prefill ({decode:,} decode tokens): TPOT "
                f"and throughput (decode tokens/s) rest on few tokens")
    return None


def prefetch_message(sc: Scenario) -> str | None:
    """A prefetcher with nowhere to put its copies (no cache slots) or nothing to fetch (every expert
    resident): it proposes, and nothing is ever copied ahead."""
    r = sc.policies
    if r.prefetch_cls is None:
        return None
    if r.cache_cls.fixed_capacity == "all":
        return (f"prefetch {r.prefetch_cls.name} has no effect: every expert is resident ({r.cache_cls.name}), "
                f"so there is nothing to copy ahead")
    if sc.cache.total_slots == 0:
        why = "the placement computes misses on the CPU" if r.placement_cls is not None and \
            r.placement_cls.bypass_cache else f"{r.cache_cls.name} keeps no experts"
        return (f"prefetch {r.prefetch_cls.name} has no effect: the cache has no slots ({why}), so nothing is "
                f"copied ahead")
    return None


CHECKS = (batch_message, cache_message, prefill_message, prefetch_message)


def warn_suspicious(sc: Scenario) -> None:
    for check in CHECKS:
        message = check(sc)
        if message:
            warn(message)
