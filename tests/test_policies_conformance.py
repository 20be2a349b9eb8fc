"""One contract for every registered cache policy (taken from the registry, so new policies are covered):
driven like the access planner drives a partition (find; on a miss ask `admit` when the policy has one
(claims_misses or not: with no placement policy the order does not matter), evict `to_evict()` when full,
then insert). Every kind, through the planner itself: tests/test_policies_kinds.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import random_trace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simmoe.engine.scenario import next_use_of
from simmoe.errors import InputError
from simmoe.policies.base import CacheContext, CachePolicy, parse_options
from simmoe.policies.registry import all_policies

E = 6
LAYERS = (0, 1)
CACHE_POLICIES = [c for c in all_policies() if c.kind == "cache"]
IDS = [c.name for c in CACHE_POLICIES]


@dataclasses.dataclass(frozen=True)
class OracleContext(CacheContext):
    """The context plus the run's access sequence (what an engine could give oracles; see belady)."""

    access_keys: np.ndarray | None = None


@pytest.fixture(scope="session")
def profile_path(tmp_path_factory):
    from simmoe.trace.format import write_trace

    p = tmp_path_factory.mktemp("profile") / "profile.npz"
    write_trace(random_trace(40, len(LAYERS), E, 2, seed=3), p)
    return str(p)


def sample_options(cls: type[CachePolicy], profile: str) -> dict:
    """Options a policy needs to be built at all (everything else at its defaults)."""
    return {"profile": profile} if cls.name == "static-popular" else {}


def capacity_of(cls: type[CachePolicy], cap: int) -> int:
    return {"all": E * len(LAYERS), "none": 0}.get(cls.fixed_capacity, cap)  # type: ignore[arg-type]


def make(cls, keys, cap: int, profile: str, access_keys: bool = False, **opts) -> CachePolicy:
    ks = np.asarray(keys, dtype=np.int64)
    ctx = OracleContext(capacity_of(cls, cap), E, LAYERS, next_use_of(ks), ks if access_keys else None)
    return cls(ctx, parse_options(cls.Options, {**sample_options(cls, profile), **opts}, cls.name))


def drive(pol: CachePolicy, keys, probe_evict: int = 1, check=None) -> list[bool]:
    """The planner's use of a partition. Returns the hit vector."""
    cap = pol.capacity
    admit = type(pol).overrides("admit")
    for k in pol.preload():
        pol.insert(k, -1)
    assert len(pol) <= cap
    out = []
    for t, k in enumerate(keys):
        was_in = k in pol
        hit = pol.find(k, t)
        assert hit == was_in
        out.append(hit)
        if not hit and cap and (not admit or pol.admit(k, t)):
            if len(pol) >= cap:
                victims = [pol.to_evict(t) for _ in range(probe_evict)]
                assert len(set(victims)) == 1 and victims[0] in pol
                pol.evict(victims[0])
                assert victims[0] not in pol
            pol.insert(k, t)
            assert k in pol
        assert len(pol) <= cap
        if check:
            check(pol)
    return out


def engine_like_keys(rng: np.random.Generator, steps: int, k: int = 2) -> list[int]:
    """Per step, per layer: k distinct experts (as the engine's look-ups are)."""
    return [m * E + int(e) for _ in range(steps) for m in LAYERS for e in rng.choice(E, k, replace=False)]


def consistent(pol: CachePolicy) -> None:
    ks = list(pol.keys())
    assert len(ks) == len(set(ks)) == len(pol)
    assert all(k in pol for k in ks)
    assert not any(k in pol for k in set(range(E * len(LAYERS))) - set(ks))


@pytest.mark.parametrize("cls", CACHE_POLICIES, ids=IDS)
@pytest.mark.parametrize("cap", [1, 3, 7])
def test_capacity_and_consistency(cls, cap, profile_path):
    keys = engine_like_keys(np.random.default_rng(cap), 60)
    hits = drive(make(cls, keys, cap, profile_path), keys, check=consistent)
    assert len(hits) == len(keys)  # every access is a hit or a miss, once


@pytest.mark.parametrize("cls", CACHE_POLICIES, ids=IDS)
def test_to_evict_has_no_side_effects(cls, profile_path):
    keys = engine_like_keys(np.random.default_rng(11), 80)
    once = make(cls, keys, 4, profile_path)
    thrice = make(cls, keys, 4, profile_path)
    seen = []

    def snapshot(pol):
        seen.append(sorted(pol.keys()))

    a = drive(once, keys, probe_evict=1)
    b = drive(thrice, keys, probe_evict=3, check=snapshot)
    assert a == b
    assert sorted(once.keys()) == seen[-1]


@pytest.mark.parametrize("cls", CACHE_POLICIES, ids=IDS)
def test_deterministic(cls, profile_path):
    keys = engine_like_keys(np.random.default_rng(5), 50)
    runs = []
    for _ in range(2):
        pol = make(cls, keys, 3, profile_path)
        runs.append((drive(pol, keys), list(pol.keys())))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("cls", CACHE_POLICIES, ids=IDS)
def test_unknown_option_lists_valid_keys(cls):
    with pytest.raises(InputError) as ei:
        parse_options(cls.Options, {"no_such_option": 1}, cls.name)
    msg = str(ei.value)
    assert "no_such_option" in msg and cls.name in msg
    for valid in cls.Options.model_fields:
        assert valid in msg


@pytest.mark.parametrize("cls", CACHE_POLICIES, ids=IDS)
def test_describes_itself(cls):
    assert cls.summary and "\n" not in cls.summary
    assert cls.kind == "cache"


# ---- properties -----------------------------------------------------------------------------------------
steps = st.lists(
    st.tuples(*[st.lists(st.integers(0, E - 1), min_size=1, max_size=3, unique=True) for _ in LAYERS]),
    min_size=1, max_size=40)


def flatten(sts) -> list[int]:
    return [m * E + e for step in sts for m, layer in enumerate(step) for e in layer]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sts=steps, cap=st.integers(1, 8))
def test_belady_is_an_upper_bound(sts, cap, profile_path):
    """MIN started from the same resident set beats every policy that admits every miss."""
    from simmoe.policies.cache.belady import Belady

    keys = flatten(sts)
    for cls in CACHE_POLICIES:
        if cls is Belady:
            continue
        pol = make(cls, keys, cap, profile_path)
        hits = sum(drive(pol, keys))
        c = pol.capacity
        pre = list(make(cls, keys, cap, profile_path).preload())
        opt = make(Belady, keys, c, profile_path, access_keys=True)
        for k in pre:
            opt.insert(k, -1)
        opt_hits = sum(drive(opt, keys))
        assert opt_hits >= hits, (cls.name, c)


@settings(max_examples=60, deadline=None)
@given(sts=steps)
def test_lru_hits_never_fall_as_capacity_grows(sts):
    from simmoe.policies.cache.lru import LRU

    keys = flatten(sts)
    hits = [sum(drive(make(LRU, keys, cap, ""), keys)) for cap in range(1, E * len(LAYERS) + 1)]
    assert hits == sorted(hits)
