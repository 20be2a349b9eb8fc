"""One contract for every registered policy of every kind (from the registry, so new policies are covered),
driven through the access planner exactly as the engine and the executor drive them: cache hooks in the
planner's order (find, admit and claims_misses before or after placement, to_evict / evict / insert),
prefetch proposals after each layer, placement of misses, precision, routing. Cache policies alone also have
tests/test_policies_conformance.py."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import plan_run, random_trace
from test_planner import check_plan

from simmoe.policies.base import Access, PolicySet, parse_options
from simmoe.policies.registry import all_policies
from simmoe.trace.format import Trace, write_trace

E, L, K = 8, 3, 2


def by_kind(kind: str) -> list:
    return [c for c in all_policies() if c.kind == kind]


@pytest.fixture(scope="module")
def trace() -> Trace:
    tr = random_trace(72, L, E, K, requests=3, seed=21, prefill=4)
    g = np.random.default_rng(5).random(tr.experts.shape).astype(np.float32)
    pred = np.roll(tr.experts, -1, axis=1)  # "next layer's experts", as captured traces carry them
    return Trace(tr.experts, tr.request, tr.phase, tr.meta, gates=g, predicted=pred)


@pytest.fixture(scope="module")
def profile(trace, tmp_path_factory) -> str:
    p = tmp_path_factory.mktemp("profile") / "popularity.npz"
    write_trace(trace, p)
    return str(p)


def options_for(name: str, profile: str) -> dict:
    """Options a policy needs to be built at all (everything else at its defaults)."""
    return {"static-popular": {"profile": profile}, "monde": {"profile": profile},
            "fiddler-mixtral": {"profile": profile},
            "stride": {"accuracy": 0.8}}.get(name, {})


def psets(kind: str, profile: str):
    """Each policy of `kind` in a configuration that exercises it (a small LRU cache beside it)."""
    for cls in by_kind(kind):
        opts = options_for(cls.name, profile)
        if kind == "cache":
            yield cls.name, PolicySet(cls.name, {**opts, **({} if cls.fixed_capacity else {"slots_per_layer": 3})})
        elif kind == "system":
            yield cls.name, PolicySet(cls.name, opts)
        else:
            yield cls.name, PolicySet("lru", {"slots_per_layer": 3}, **{kind: cls.name, f"{kind}_options": opts})


KINDS = ("cache", "prefetch", "placement", "precision", "routing", "system")
CASES = [(k, name) for k in KINDS for name in (c.name for c in by_kind(k))]


@pytest.mark.parametrize("kind,name", CASES)
@pytest.mark.parametrize("batch", [1, 3])
def test_every_policy_keeps_the_plans_promises(trace, profile, kind, name, batch):
    pset = dict(psets(kind, profile))[name]
    planner, records = plan_run(trace, pset, batch=batch)
    check_plan(trace, records, planner)
    again, records2 = plan_run(trace, pset, batch=batch)
    assert records2 == records and again.c == planner.c  # deterministic


def cut_future(trace: Trace, row: int, seed: int = 9) -> Trace:
    """The same trace up to `row`, different routing from `row` on."""
    ex = trace.experts.copy()
    rng = np.random.default_rng(seed)
    ex[row:] = np.argsort(rng.random((len(ex) - row, L, E)), axis=2)[:, :, :K]
    return Trace(ex, trace.request, trace.phase, trace.meta, gates=trace.gates, predicted=trace.predicted)


@pytest.mark.parametrize("kind,name", CASES)
def test_policies_that_do_not_read_the_future_do_not(trace, profile, kind, name):
    """Actions planned for the steps before a row are the same whatever that row and later rows route to.
    Oracles are exempt, and so are policies whose options read the future."""
    pset = dict(psets(kind, profile))[name]
    planner, a = plan_run(trace, pset)
    r = planner.sc.policies
    pairs = ((r.cache_cls, r.cache_opts), (r.prefetch_cls, r.prefetch_opts), (r.placement_cls, r.placement_opts),
             (r.precision_cls, r.precision_opts), (r.routing_cls, r.routing_opts))
    if any(c is not None and c.reads_future_for(o) for c, o in pairs):
        pytest.skip("reads the future by design")
    row = 40
    _, b = plan_run(cut_future(trace, row), pset)
    before = {i for i, s in enumerate(planner.sc.steps) if s.rows.max() < row}  # steps of rows < `row` only
    first = [x for x in a if x[0] in before]
    assert len(before) > 20 and first == [x for x in b if x[0] in before]


# ---- hooks of each kind, on their own -------------------------------------------------------------------------
@pytest.mark.parametrize("cls", by_kind("placement"), ids=lambda c: c.name)
def test_placement_answers_gpu_or_cpu_for_every_miss(cls):
    from simmoe.engine.costs import CostModel
    from simmoe.hw.profile import load_profile
    from simmoe.models.catalog import get_model

    pol = cls(parse_options(cls.Options, {}, cls.name))
    costs = CostModel(get_model("mixtral-8x7b"), load_profile("rtx3090"))
    misses = [Access(0, e, nt, e) for e, nt in enumerate((1, 2, 7, 40))]
    assert all(pol.place(a, costs) in ("gpu", "cpu") for a in misses)
    out = pol.place_layer([Access(0, 5, 1, 9)], misses, costs)
    assert len(out) == len(misses) and set(out) <= {"gpu", "cpu"}
    assert pol.cpu_layers(L) <= frozenset(range(L))


@pytest.mark.parametrize("cls", by_kind("routing"), ids=lambda c: c.name)
def test_routing_serves_valid_experts_and_reports_fidelity(trace, cls):
    pol = cls(parse_options(cls.Options, {}, cls.name))
    out, fid = pol.reroute(trace.experts, trace.gates)
    assert out.shape == trace.experts.shape and out.dtype == trace.experts.dtype
    assert ((out == -1) | ((out >= 0) & (out < E))).all()
    assert 0.0 <= fid <= 1.0
    for row in out.reshape(-1, K):  # a token is not served twice by one expert
        kept = row[row >= 0]
        assert len(set(kept.tolist())) == len(kept)


@pytest.mark.parametrize("cls", by_kind("precision"), ids=lambda c: c.name)
def test_precision_shrinks_experts_and_copies_grow_with_bits(cls):
    from simmoe.models.catalog import get_model

    pol = cls(parse_options(cls.Options, {}, cls.name))
    spec = get_model("mixtral-8x7b")
    low = pol.apply(spec)
    assert low.expert_bytes() <= spec.expert_bytes()
    levels = pol.levels()
    if levels:  # nested: copying more planes costs more, and a resident level needs only what it lacks
        sizes = [pol.copy_bytes(low, 0, b) for b in levels]
        assert sizes == sorted(sizes) and sizes[-1] <= low.expert_bytes()
        assert pol.copy_bytes(low, levels[0], levels[-1]) == sizes[-1] - sizes[0]
