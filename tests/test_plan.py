"""Capacity planning: SLO parsing, cost ranking, binding constraints, Pareto front, the CLI."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from conftest import assert_clean_error, random_trace

from simmoe.errors import InputError
from simmoe.hw.profile import load_profile
from simmoe.planning import closest_infeasible, evaluate, pareto, parse_slo, ranked
from simmoe.sweeps import load_results
from simmoe.trace.format import write_trace


def test_parse_slo():
    s = parse_slo("tpot_p90_ms=150")
    assert (s.metric, s.op, s.limit) == ("tpot_ms.p90", "<=", 150.0)
    assert parse_slo("ttft_p99_ms<=2000").metric == "ttft_ms.p99"
    s = parse_slo("tokens_per_s>=12.5")
    assert (s.metric, s.op, s.limit) == ("tokens_per_s", ">=", 12.5)
    assert s.ratio(25.0) == 0.5 and s.ratio(10.0) == 1.25
    for bad in ("tpot", "tpot_p90_ms=fast", "x=-1", "x=inf"):
        with pytest.raises(InputError):
            parse_slo(bad)


def crafted() -> pd.DataFrame:
    rows = [  # hw prices: rtx3090 0.18, rtx4090 0.20, a100-80gb-sxm 1.79 $/h
        {"key": "a", "hw": "rtx3090", "policy": "lru", "batch": 1, "status": "ok", "error": "",
         "tokens_per_s": 10.0, "tpot_ms.p90": 100.0, "ttft_ms.p90": 500.0},
        {"key": "b", "hw": "a100-80gb-sxm", "policy": "resident", "batch": 1, "status": "ok", "error": "",
         "tokens_per_s": 100.0, "tpot_ms.p90": 20.0, "ttft_ms.p90": 100.0},
        {"key": "c", "hw": "rtx3090", "policy": "ondemand", "batch": 1, "status": "ok", "error": "",
         "tokens_per_s": 50.0, "tpot_ms.p90": 200.0, "ttft_ms.p90": 900.0},
        {"key": "d", "hw": "rtx4090", "policy": "resident", "batch": 1, "status": "error",
         "error": "rtx4090: gpu.memory_gib: cache of 1664 experts (26.81 GiB) does not fit: 20.51 GiB left"},
        {"key": "e", "hw": "rtx4090", "policy": "lru", "batch": 4, "status": "ok", "error": "",
         "tokens_per_s": 20.0, "tpot_ms.p90": 120.0, "ttft_ms.p90": 5000.0},
    ]
    return pd.DataFrame(rows)


def test_ranks_by_cost_and_reports_binding_constraints():
    slos = [parse_slo("tpot_p90_ms=150"), parse_slo("ttft_p90_ms=1000")]
    ev = evaluate(crafted(), slos).set_index("key")
    price = {h: load_profile(h).price_usd_per_hour for h in ("rtx3090", "rtx4090", "a100-80gb-sxm")}
    assert ev.loc["a", "usd_per_mtok"] == pytest.approx(price["rtx3090"] / (10.0 * 3600) * 1e6)
    assert ev.loc["b", "usd_per_mtok"] == pytest.approx(price["a100-80gb-sxm"] / (100.0 * 3600) * 1e6)
    assert ev["feasible"].to_dict() == {"a": True, "b": True, "c": False, "d": False, "e": False}
    order = ranked(ev.reset_index())["key"].tolist()
    expect = sorted(["a", "b"], key=lambda k: ev.loc[k, "usd_per_mtok"])
    assert order == expect
    # c: only the TPOT SLO fails, by 200/150
    assert ev.loc["c", "binding"] == "tpot_ms.p90 200 > 150 (+33.3%)"
    assert ev.loc["c", "violation"] == pytest.approx(200 / 150)
    # e: both are checked, TTFT (x5) binds rather than TPOT (x0.8, met)
    assert ev.loc["e", "binding"].startswith("ttft_ms.p90 5000 > 1000 (+400.0%)")
    # d: did not fit, the memory limit binds
    assert ev.loc["d", "binding"].startswith("memory: ") and "does not fit" in ev.loc["d", "binding"]
    assert math.isinf(ev.loc["d", "violation"])
    near = closest_infeasible(ev.reset_index())
    assert set(near["key"]) == {"c", "d", "e"}  # (rtx3090, lru) is feasible: not listed


def test_lower_bound_slo_and_unknown_metric():
    ev = evaluate(crafted(), [parse_slo("tokens_per_s>=40")]).set_index("key")
    assert ev["feasible"].to_dict() == {"a": False, "b": True, "c": True, "d": False, "e": False}
    assert ev.loc["a", "binding"] == "tokens_per_s 10 < 40 (+300.0%)"
    with pytest.raises(InputError, match="no metric 'tpot_ms.p95'"):
        evaluate(crafted(), [parse_slo("tpot_ms.p95=10")])


def test_pareto_front():
    x = np.array([1.0, 2.0, 3.0, 1.5, 4.0])
    y = np.array([5.0, 3.0, 4.0, 6.0, 1.0])
    assert pareto(x, y).tolist() == [0, 1, 4]


def test_plan_cli(simmoe_cli, tmp_path):
    trace = tmp_path / "toy.npz"
    write_trace(random_trace(rows=48, layers=4, experts=8, k=2, requests=2, seed=2, prefill=4), trace)
    out, png = tmp_path / "plan.parquet", tmp_path / "plan.png"
    res = simmoe_cli("plan", "--trace", trace, "--slo", "tpot_p90_ms=1e6", "--hw", "rtx3090,a100-80gb-sxm",
                     "--policies", "lru,ondemand", "--slots", "2,auto", "--batch", "1,2", "--workers", "1",
                     "--out", out, "--plot", png)
    assert res.returncode == 0, res.stderr
    df = load_results(out)
    assert len(df) == 2 * (2 + 1) * 2 and (df["status"] == "ok").all()
    assert "12 configurations: 12 feasible" in res.stdout
    # the printed ranking is by $/Mtok, and its first row is the cheapest configuration run
    lines = [ln.split() for ln in res.stdout.splitlines() if re.match(r"^\s+\d+\s+(rtx3090|a100)", ln)]
    costs = [float(ln[-5]) for ln in lines]
    assert costs == sorted(costs) and len(costs) == 12
    ev = evaluate(df, [parse_slo("tpot_p90_ms=1e6")])
    assert costs[0] == pytest.approx(ev["usd_per_mtok"].min(), abs=5e-4)
    assert png.stat().st_size > 10_000
    # a tight SLO on the same results: nothing feasible, each hw x policy says what binds
    tight = evaluate(df, [parse_slo("tpot_p90_ms=0.001")])
    assert not tight["feasible"].any()
    assert len(closest_infeasible(tight)) == 4
    assert_clean_error(simmoe_cli("plan", "--trace", trace, "--slo", "tpot_p90=fast"), "--slo", "tpot_p90=fast")
    assert_clean_error(simmoe_cli("plan", "--trace", trace, "--slo", "tpot_p90_ms=9", "--policies", "lruu"),
                       "unknown policy 'lruu'")


def test_profile_price_needs_a_source(tmp_path):
    import yaml

    from simmoe.hw.profile import dump_profile, load_profile

    data = yaml.safe_load(dump_profile(load_profile("rtx3090")))
    del data["price_source"]
    bad = tmp_path / "box.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match="price_source: a price_usd_per_hour needs a price_source"):
        load_profile(bad)
    data["price_usd_per_hour"] = None  # no price: no source needed
    bad.write_text(yaml.safe_dump(data))
    assert load_profile(bad).price_usd_per_hour is None
