"""Serving runs: arrivals, the online continuous-batching scheduler, serving metrics, trace cycling."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import assert_clean_error, random_trace

from simmoe.engine.replay import replay
from simmoe.engine.schedule import Idle, RowIndex, online_schedule, static_schedule
from simmoe.engine.serving import arrival_times_s, cycle_trace

HW = "a100-80gb-sxm"


@pytest.fixture(scope="module")
def tr():
    return random_trace(240, 4, 16, 2, requests=6, seed=5, prefill=8)


def test_arrivals_all_at_zero_equal_the_closed_replay(tr):
    t0 = dataclasses.replace(tr, arrival_s=np.zeros(6))
    a = replay(t0, HW, "lru", {"slots_per_layer": 4}, batch=3).summary
    b = replay(t0, HW, "lru", {"slots_per_layer": 4}, batch=3, arrivals="trace").summary
    for k in ("hits", "misses", "steps", "makespan_s", "tpot_ms"):
        assert a[k] == b[k], k


def test_online_scheduler_waits_for_arrivals(tr):
    ri = RowIndex(tr.request, tr.phase)
    arr = np.arange(6) * 1e9  # far apart: each request runs alone
    gen = online_schedule(ri, arr, batch=4)
    next(gen)
    now, items = 0.0, []
    while True:
        try:
            it = gen.send(now)
        except StopIteration:
            break
        items.append(it)
        now = it.until_us if isinstance(it, Idle) else now + 1.0
    steps = [s for s in items if not isinstance(s, Idle)]
    assert sum(isinstance(s, Idle) for s in items) == 5
    assert all(len(s.requests) and len(set(s.requests)) == 1 for s in steps)  # never two requests at once
    assert sorted(np.concatenate([s.rows for s in steps]).tolist()) == list(range(tr.num_rows))
    static = list(static_schedule(ri, 1))
    assert [s.rows.tolist() for s in steps] == [s.rows.tolist() for s in static]


def test_sparse_arrivals_have_no_queueing_and_makespan_covers_them(tr):
    s = replay(tr, HW, "lru", {"slots_per_layer": 4}, batch=4, arrivals="poisson", rate=0.01, seed=3).summary
    arr = arrival_times_s("poisson", np.arange(6), tr, 0.01, 1.0, 3)
    assert s["queue_ms"]["p99"] == 0.0
    assert s["makespan_s"] >= arr[-1]
    assert s["ttft_ms"]["mean"] > 0 and s["e2e_ms"]["mean"] > s["ttft_ms"]["mean"]


def test_heavier_load_queues_more(tr):
    lo = replay(tr, HW, "lru", {"slots_per_layer": 4}, batch=2, arrivals="poisson", rate=1.0).summary
    hi = replay(tr, HW, "lru", {"slots_per_layer": 4}, batch=2, arrivals="poisson", rate=1e4).summary
    assert hi["queue_ms"]["mean"] > lo["queue_ms"]["mean"]
    assert hi["requests_per_s"] > lo["requests_per_s"]


def test_arrival_draws_are_seeded_and_match_the_rate():
    ids = np.arange(4000)
    a = arrival_times_s("poisson", ids, None, 50.0, 1.0, 7)
    assert np.array_equal(a, arrival_times_s("poisson", ids, None, 50.0, 1.0, 7))
    assert a[0] == 0 and np.all(np.diff(a) >= 0)
    assert len(ids) / a[-1] == pytest.approx(50.0, rel=0.06)
    g = np.diff(arrival_times_s("gamma", ids, None, 50.0, 3.0, 7))
    assert g.std() / g.mean() == pytest.approx(3.0, rel=0.2)  # bursty: cv 3


def test_slo_attainment_grows_with_the_slo(tr):
    got = [replay(tr, HW, "lru", {"slots_per_layer": 4}, batch=2, arrivals="poisson", rate=50.0,
                  slo_ttft_ms=x).summary for x in (1e-3, 50.0, 1e9)]
    att = [s["slo_attainment"] for s in got]
    assert att[0] == 0.0 and att[2] == 1.0 and att[0] <= att[1] <= att[2]
    assert got[2]["goodput_requests_per_s"] == pytest.approx(got[2]["requests_per_s"])


def test_kv_reservation_takes_room_from_the_expert_cache():
    from simmoe.engine.memory import fixed_plan, free_slots
    from simmoe.hw.profile import load_profile
    from simmoe.models import get_model

    spec, hw = get_model("mixtral-8x7b"), load_profile("a100-80gb-sxm")
    plans = [fixed_plan(spec, hw, batch=b, max_request_rows=4096, max_step_tokens=b, staging_buffers=0,
                        hw_name="a100-80gb-sxm")
             for b in (1, 8, 32)]
    slots = [free_slots(p) for p in plans]
    kv = [p.kv_reserved for p in plans]
    assert kv[1] == 8 * kv[0] == 8 * 4096 * spec.kv_bytes_per_token()
    assert slots[0] > slots[1] > slots[2]  # every running request's KV is room the expert cache loses
    assert slots[0] - slots[2] >= (kv[2] - kv[0]) // spec.expert_bytes() - 1


def test_cycle_trace_repeats_requests_explicitly(tr):
    c = cycle_trace(tr, 15)
    assert c.num_requests == 15 and c.meta["cycled_from_requests"] == 6
    ri0, ri = RowIndex(tr.request, tr.phase), RowIndex(c.request, c.phase)
    for r in range(15):
        src = r % 6
        a = c.experts[ri.starts[r]:ri.stops[r]]
        b = tr.experts[ri0.starts[src]:ri0.stops[src]]
        assert np.array_equal(a, b)
    s = replay(tr, HW, "lru", {"slots_per_layer": 4}, requests=15).summary
    assert s["requests"] == 15


def test_serving_cli_and_errors(simmoe_cli, tmp_path):
    from conftest import REPO

    t = REPO / "traces/mixtral-8x7b-synth.npz"
    ok = simmoe_cli("replay", t, "--hw", HW, "--opt", "slots_per_layer=2", "--arrivals", "poisson", "--rate", "0.5",
                    "--batch", "2", "--slo-tpot-ms", "500", "--max-requests", "3")
    assert ok.returncode == 0, ok.stderr
    assert "queueing" in ok.stdout and "SLO attainment" in ok.stdout
    assert_clean_error(simmoe_cli("replay", t, "--hw", HW, "--arrivals", "poisson"), "--rate")
    assert_clean_error(simmoe_cli("replay", t, "--hw", HW, "--arrivals", "trace"), "arrival_s")
    assert_clean_error(simmoe_cli("replay", t, "--hw", HW, "--policy", "belady", "--arrivals", "poisson",
                                  "--rate", "1"), "--arrivals", "oracle")
