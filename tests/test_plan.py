"""Capacity planning: SLO parsing, cost ranking, binding constraints, Pareto front, the CLI."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from conftest import assert_clean_error, random_trace
from hypothesis import given, settings
from hypothesis import strategies as st

from simmoe.errors import InputError
from simmoe.hw.profile import load_profile
from simmoe.planning import closest_infeasible, evaluate, parse_slo, ranked
from simmoe.sweeps import load_results
from simmoe.trace.format import write_trace


def test_parse_slo():
    s = parse_slo("tpot_p90_ms=150")
    assert (s.metric, s.op, s.limit) == ("tpot_ms.p90", "<=", 150.0)
    assert parse_slo("ttft_p99_ms<=2000").metric == "ttft_ms.p99"
    assert parse_slo("tpot_p95_ms=100").metric == "tpot_ms.p95"
    assert parse_slo("e2e_p95_ms=9").metric == "e2e_ms.p95"
    s = parse_slo("tokens_per_s>=12.5")
    assert (s.metric, s.op, s.limit) == ("tokens_per_s", ">=", 12.5)
    assert s.ratio(25.0) == 0.5 and s.ratio(10.0) == 1.25
    for bad in ("tpot", "tpot_p90_ms=fast", "x=-1", "x=inf", "tokens_per_s=10"):  # '=' only for latencies
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
    with pytest.raises(InputError, match="no metric 'tpot_ms.p95' in these results"):
        evaluate(crafted(), [parse_slo("tpot_ms.p95=10")])  # a known metric, not a column of this table
    with pytest.raises(InputError, match="slos: tpot_p95_msx: no metric 'tpot_p95_msx'"):
        evaluate(crafted(), ["tpot_p95_msx<=10"])


def test_plan_cli(simmoe_cli, tmp_path):
    trace = tmp_path / "toy.npz"
    write_trace(random_trace(rows=48, layers=4, experts=8, k=2, requests=2, seed=2, prefill=4), trace)
    out, png = tmp_path / "plan.parquet", tmp_path / "plan.png"
    res = simmoe_cli("plan", "--trace", trace, "--slo", "tpot_p95_ms=1e6", "--hw", "rtx3090,a100-80gb-sxm",
                     "--policies", "lru,ondemand", "--slots", "2,auto", "--batch", "1,2", "--workers", "1",
                     "--out", out, "--plot", png)
    assert res.returncode == 0, res.stderr
    df = load_results(out)
    assert len(df) == 2 * (2 + 1) * 2 and (df["status"] == "ok").all()
    assert "12 configurations, 12 distinct runs; replays: 12 run, 0 reused" in res.stdout
    assert "12 feasible" in res.stdout and "tpot_ms.p95" in res.stdout
    # the printed ranking is by $/Mtok, and its first row is the cheapest configuration run
    lines = [ln.split() for ln in res.stdout.splitlines() if re.match(r"^\s+\d+\s+(rtx3090|a100)", ln)]
    costs = [float(ln[-5]) for ln in lines]
    assert costs == sorted(costs) and len(costs) == 12
    ev = evaluate(df, [parse_slo("tpot_p95_ms=1e6")])
    assert costs[0] == pytest.approx(ev["usd_per_mtok"].min(), abs=5e-4)
    from simmoe.planning import known_metrics

    assert set(known_metrics(tier=False)) <= set(df.columns)  # SLO names are the sweep table's columns
    # rtx3090 has an SSD tier, unused here (every expert fits in host memory): the summary has no host_tier block
    assert not any(c.startswith("host_tier.") for c in df.columns)
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


# ---- p95 and the one list of summary keys --------------------------------------------------------------------
def test_summary_keys_are_what_a_real_summary_has():
    from simmoe.engine.replay import replay
    from simmoe.engine.results import summary_keys
    from simmoe.sweeps.store import flatten

    tr = random_trace(rows=40, layers=3, experts=8, k=2, requests=2, seed=1, prefill=3)
    closed = replay(tr, "a100-80gb-sxm", "lru", {"slots_per_layer": 2})  # a profile without an SSD tier
    assert list(flatten(closed.summary)) == list(summary_keys())
    served = replay(tr, "rtx3090", "lru", {"slots_per_layer": 2}, arrivals="poisson", rate=5.0, slo_tpot_ms=50.0,
                    host_policy="lru")  # a tier setting given: the summary has its host_tier block
    assert list(flatten(served.summary)) == list(summary_keys(slo=True, tier=True))
    for k in ("tpot_ms", "ttft_ms", "step_ms", "queue_ms", "e2e_ms"):  # p95 everywhere percentiles are
        p = served.summary[k]
        assert list(p) == ["mean", "p50", "p90", "p95", "p99"]
        assert p["p90"] <= p["p95"] <= p["p99"]
    text = served.format()
    assert "latency (ms)      mean       p50       p90       p95       p99" in text
    tpot = next(ln for ln in text.splitlines() if ln.strip().startswith("TPOT")).split()
    assert float(tpot[4].replace(",", "")) == pytest.approx(served.summary["tpot_ms"]["p95"], abs=0.006)


def test_every_summary_metric_is_a_valid_slo_and_others_are_not():
    from simmoe.planning import check_slos, known_metrics

    assert {"tpot_ms.p95", "ttft_ms.p95", "e2e_ms.p95", "tokens_per_s", "summary.requests"} <= set(known_metrics())
    assert "slo_attainment" not in known_metrics() and "slo_attainment" in known_metrics(True)
    assert check_slos(["tpot_p95_ms=100", "tokens_per_s>=3"])[0].metric == "tpot_ms.p95"
    with pytest.raises(InputError, match=r"^slos: tpot_p95_msx: no metric 'tpot_p95_msx'.*did you mean"):
        check_slos(["tpot_p95_msx=100"])
    with pytest.raises(InputError, match="only in runs with a per-request SLO"):
        check_slos(["slo_attainment>=0.9"])
    with pytest.raises(InputError, match="no metric 'wall_s'"):  # the simulator's own time is no SLO
        check_slos(["wall_s<=1"])


# ---- everything is checked before the first replay -----------------------------------------------------------
@pytest.fixture
def no_replays(monkeypatch):
    """Any replay (through the sweep runner or directly) fails the test."""
    import simmoe.engine.replay as rp
    import simmoe.sweeps.runner as runner

    def boom(*a, **k):
        raise AssertionError("a replay ran before the inputs were checked")

    monkeypatch.setattr(runner, "run_sweep", boom)
    monkeypatch.setattr(runner, "run_one", boom)
    monkeypatch.setattr(rp.Replay, "run", boom)


@pytest.fixture
def toy(tmp_path):
    trace = tmp_path / "toy.npz"
    write_trace(random_trace(rows=48, layers=4, experts=8, k=2, requests=2, seed=2, prefill=4), trace)
    return str(trace)


@pytest.mark.parametrize("kw,needle", [
    ({"slos": ["tpot_p95_msx=100"]}, "slos: tpot_p95_msx: no metric"),
    ({"slos": []}, "slos: give at least one SLO"),
    ({"hws": ["rtx9999"]}, "hws: "),
    ({"policies": ["lruu"]}, "unknown policy 'lruu'"),
    ({"batches": [0]}, "batch: must be >= 1"),
    ({"slots": [-1]}, "slots: cache sizes"),
    ({"runtimes": ["nope"]}, "runtimes: "),
    ({"seeds": 0, "rate": 1.0}, "seeds: must be an integer >= 1"),
    ({"seeds": 3}, "seeds: seeds are arrival draws"),
    ({"workers": 0}, "workers: must be an integer >= 1"),
])
def test_plan_checks_inputs_before_any_replay(toy, no_replays, kw, needle):
    from simmoe.planning import plan

    args = {"slos": ["tpot_p95_ms=100"], "hws": ["rtx3090"], "policies": ["lru"], "slots": [2], "batches": [1],
            "workers": 1, **kw}
    slos = args.pop("slos")
    with pytest.raises(InputError) as e:
        plan(toy, slos, progress=False, **args)
    assert needle in e.value.line()


@pytest.mark.parametrize("kw,needle", [
    ({"slos": ["tpot_p95_msx=100"]}, "slos: tpot_p95_msx"),
    ({"tol": 0.0}, "tol: must be"), ({"tol": 2.0}, "tol: relative tolerance"),
    ({"start_rate": -1.0}, "start_rate: "), ({"max_rate": 0.5, "start_rate": 1.0}, "max_rate: must be >="),
    ({"base": {"rate": 3.0}}, "base: rate: find_max_rate searches"), ({"seeds": 0}, "seeds: must be"),
])
def test_find_max_rate_checks_inputs_before_any_replay(toy, no_replays, kw, needle):
    from simmoe.planning import find_max_rate

    args = {"slos": ["ttft_p95_ms=100"], **kw}
    slos = args.pop("slos")
    with pytest.raises(InputError) as e:
        find_max_rate(toy, slos, hws=["rtx3090"], policies=["lru"], slots=[2], batches=[1], workers=1,
                      progress=False, **args)
    assert needle in e.value.line()


def test_cli_bad_slo_exits_2_before_running(toy, no_replays, tmp_path):
    from conftest import run_main

    out = tmp_path / "r.parquet"
    res = run_main("plan", "--trace", toy, "--slo", "tpot_p95_msx=100", "--hw", "rtx3090", "--out", out)
    assert_clean_error(res, "--slo", "tpot_p95_msx", "did you mean 'tpot_ms.p95'")
    assert not out.exists()
    for args, needle in ((["--tol", "0.1"], "--tol: only used with --find-max-rate"),
                         (["--seeds", "3"], "--seeds: seeds are arrival draws"),
                         (["--find-max-rate", "--tol", "7"], "--tol: relative tolerance"),
                         (["--find-max-rate", "--seeds", "0"], "--seeds: must be an integer >= 1"),
                         (["--hw", "nope9"], "--hw: ")):
        assert_clean_error(run_main("plan", "--trace", toy, "--slo", "ttft_p95_ms=100", *args), needle)


# ---- exit status ---------------------------------------------------------------------------------------------
def test_cli_exit_status_and_json(toy, tmp_path):
    import json

    from conftest import run_main

    common = ["--trace", toy, "--hw", "rtx3090", "--policies", "lru", "--slots", "2", "--batch", "1",
              "--workers", "1"]
    ok = run_main("plan", *common, "--slo", "tpot_p95_ms=1e6", "--json", tmp_path / "ok.json")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads((tmp_path / "ok.json").read_text())
    assert doc["feasible"] == 1 and doc["results"][0]["feasible"] is True and doc["mode"] == "rank"
    none = run_main("plan", *common, "--slo", "tpot_p95_ms=0.001")
    assert none.returncode == 1 and "no configuration meets every SLO" in none.stdout
    bad = run_main("plan", *common, "--slo", "tpot_p95_ms=oops")
    assert bad.returncode == 2
    # --json -: the JSON alone on stdout, the readable report on stderr
    piped = run_main("plan", *common, "--slo", "tpot_p95_ms=1e6", "--json", "-")
    assert piped.returncode == 0
    assert json.loads(piped.stdout)["results"][0]["policy"] == "lru" and "simmoe plan" in piped.stderr
    rate_none = run_main("plan", *common, "--slo", "ttft_p95_ms=0.0001", "--find-max-rate", "--max-rate", "4")
    assert rate_none.returncode == 1 and "no rate meets every SLO" in rate_none.stdout


# ---- identical runs are merged -------------------------------------------------------------------------------
def test_identical_runs_are_merged_and_are_identical(tmp_path):
    from simmoe.engine.replay import replay
    from simmoe.planning import merge_identical, plan, search_space

    one = tmp_path / "one.npz"
    write_trace(random_trace(rows=30, layers=4, experts=8, k=2, requests=1, seed=3, prefill=4), one)
    rows = search_space(str(one), ["rtx3090"], ["lru", "ondemand"], [2, 8, None], [1, 4])
    assert len(rows) == 3 * 2 + 2
    groups = merge_identical(rows)
    # one request: batch 4 = batch 1; 8 slots of 8 experts = 'auto' (all free memory, capped at 8); ondemand
    # has no size option
    assert [len(g.rows) for g in groups] == [2, 4, 2]
    assert {r.get("policy_options.slots_per_layer") for r in groups[1].rows} == {8, None}
    # the merged configurations really are the same run
    a = replay(str(one), "rtx3090", "lru", {"slots_per_layer": 8}, batch=1).summary
    b = replay(str(one), "rtx3090", "lru", {}, batch=4).summary
    drop = {"batch", "policy", "wall_s"}  # the labels differ, not the run
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    ev = plan(str(one), ["tpot_p95_ms=1e6"], hws=["rtx3090"], policies=["lru", "ondemand"], slots=[2, 8, None],
              batches=[1, 4], workers=1, progress=False)
    assert len(ev) == 3 and ev.attrs == {"configurations": 8, "runs": 3, "replays_run": 3, "replays_reused": 0}
    assert ev.iloc[1]["merged"] == "rtx3090 lru 8/layer b4; rtx3090 lru b1; rtx3090 lru b4"
    from conftest import run_main

    res = run_main("plan", "--trace", one, "--slo", "tpot_p95_ms=1e6", "--hw", "rtx3090", "--policies",
                   "lru,ondemand", "--slots", "2,8,auto", "--batch", "1,4", "--workers", "1")
    assert res.returncode == 0, res.stderr
    assert "8 configurations, 3 distinct runs; replays: 3 run, 0 reused" in res.stdout
    assert "warning" not in res.stderr  # batch 4 > 1 request, said as a merge rather than a warning
    assert "merged (the same run, reported once): 5 configurations" in res.stdout
    assert "rtx3090 lru 2/layer b4  =  rtx3090 lru 2/layer b1   (1 request (effective batch 1), cache 2 slots " \
           "per layer)" in res.stdout
    # serving: a step holds up to max(batch, prefill) tokens; batch 8 > the 4-row prompt reserves more
    # activation memory (the peak memory differs), batches 1 and 2 do not
    served = search_space(str(one), ["rtx3090"], ["lru"], [2], [1, 2, 8], rate=1.0)
    assert [len(g.rows) for g in merge_identical(served)] == [2, 1]
    # two requests: batch 1 and 2 differ, nothing merges
    two = tmp_path / "two.npz"
    write_trace(random_trace(rows=30, layers=4, experts=8, k=2, requests=2, seed=3, prefill=4), two)
    assert len(merge_identical(search_space(str(two), ["rtx3090"], ["lru"], [2], [1, 2]))) == 2


# ---- the most load within the SLOs ---------------------------------------------------------------------------
def test_find_max_rate_finds_the_boundary(toy, tmp_path):
    """Batch 1, first come first served: each request's service time does not depend on when it arrived, and
    with a fixed seed the arrival times scale as 1/rate, so every request's wait (Lindley) and so TTFT p95
    only grow with the rate: feasibility is monotone here, and the search must bracket the boundary."""
    from simmoe.planning import find_max_rate, plan

    kw = {"hws": ["rtx3090"], "policies": ["lru"], "slots": [2], "batches": [1], "workers": 1, "progress": False}
    slos = ["ttft_p95_ms=25"]
    tol = 0.05
    out = tmp_path / "runs.parquet"
    df = find_max_rate(toy, slos, tol=tol, out=str(out), **kw)
    assert len(df) == 1
    r = df.iloc[0]
    assert r["feasible"] and r["bounded"]
    lo, hi = r["max_rate"], r["rate_infeasible"]
    assert lo < hi <= lo * (1 + tol) * (1 + 1e-3)  # within the tolerance (rates rounded to 4 digits)
    assert r["replays"] == df.attrs["replays_run"] + df.attrs["replays_reused"] >= 4
    at = {rate: plan(toy, slos, rate=rate, **kw).iloc[0] for rate in (lo, lo * (1 + tol), hi)}
    assert at[lo]["feasible"] and not at[lo * (1 + tol)]["feasible"] and not at[hi]["feasible"]
    assert at[lo]["ttft_ms.p95"] <= 25 < at[hi]["ttft_ms.p95"]
    assert r["ttft_ms.p95"] == pytest.approx(at[lo]["ttft_ms.p95"])
    price = load_profile("rtx3090").price_usd_per_hour
    per_request = at[lo]["decode_tokens"] / at[lo]["summary.requests"]  # 2 requests of 20 decode tokens
    assert per_request == 20
    assert r["tokens_per_s_offered"] == pytest.approx(lo * per_request)
    assert r["usd_per_mtok"] == pytest.approx(price / (lo * per_request * 3600) * 1e6)
    # the same search again reuses every run kept in `out`
    again = find_max_rate(toy, slos, tol=tol, out=str(out), **kw)
    assert again.attrs["replays_run"] == 0 and again.iloc[0]["max_rate"] == lo


def test_find_max_rate_cli(toy, tmp_path):
    import json

    from conftest import run_main

    res = run_main("plan", "--trace", toy, "--slo", "ttft_p95_ms=25", "--hw", "rtx3090", "--policies", "lru",
                   "--slots", "2", "--batch", "1,4", "--workers", "1", "--find-max-rate", "--json",
                   tmp_path / "m.json", "--plot", tmp_path / "m.png")
    assert res.returncode == 0, res.stderr
    assert "highest rate meeting every SLO, to 5%" in res.stdout and "replays:" in res.stdout
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["mode"] == "max_rate" and len(doc["results"]) == 2
    assert all(r["max_rate"] > 0 for r in doc["results"])
    assert (tmp_path / "m.png").stat().st_size > 10_000


# ---- seeds and confidence intervals --------------------------------------------------------------------------
def test_bootstrap_ci_contains_the_mean_and_narrows():
    from simmoe.planning import mean_ci

    rng = np.random.default_rng(0)
    draws = rng.normal(10.0, 2.0, 200)
    widths = []
    for n in (8, 32, 128):  # (with very few values a bootstrap interval is too narrow: see mean_ci)
        m, lo, hi = mean_ci(draws[:n])
        assert lo <= m <= hi and m == pytest.approx(draws[:n].mean())
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert mean_ci([3.0, 3.0, 3.0]) == (3.0, 3.0, 3.0)
    m, lo, hi = mean_ci([5.0])
    assert m == 5.0 and math.isnan(lo) and math.isnan(hi)  # one seed: no interval


def test_seeds_give_a_ci_that_narrows_with_more_seeds(toy, tmp_path):
    from simmoe.planning import check_slos, plan, plot

    kw = {"hws": ["rtx3090"], "policies": ["lru"], "slots": [2], "batches": [1], "rate": 20.0, "workers": 1,
          "progress": False}
    few = plan(toy, ["ttft_p95_ms=1e6"], seeds=3, **kw).iloc[0]
    many = plan(toy, ["ttft_p95_ms=1e6"], seeds=12, **kw).iloc[0]
    for r, n in ((few, 3), (many, 12)):
        assert r["seeds"] == n
        for m in ("ttft_ms.p95", "tokens_per_s"):
            assert r[f"{m}.ci_low"] <= r[m] <= r[f"{m}.ci_high"]
    width = {k: r["ttft_ms.p95.ci_high"] - r["ttft_ms.p95.ci_low"] for k, r in (("few", few), ("many", many))}
    assert width["many"] < width["few"]
    # feasibility is judged on the mean: a limit between the mean and the upper bound is met
    mid = (many["ttft_ms.p95"] + many["ttft_ms.p95.ci_high"]) / 2
    ev = plan(toy, [f"ttft_p95_ms={mid}"], seeds=12, **kw)
    assert ev.iloc[0]["feasible"]
    plot(ev, check_slos([f"ttft_p95_ms={mid}"]), str(tmp_path / "ci.png"))  # the CI drawn as error bars
    assert (tmp_path / "ci.png").stat().st_size > 10_000


# ---- the one Pareto front ------------------------------------------------------------------------------------
def test_pareto_mask_example():
    from simmoe.planning import pareto_mask

    x = [1, 2, 3, 2, 1, 4, np.nan]
    y = [5, 3, 1, 4, 5, 1, 0]
    assert pareto_mask(x, y).tolist() == [True, True, True, False, True, False, False]
    assert pareto_mask(x, y, minimize=(True, False)).tolist() == [True, False, False, False, True, False, False]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=25),
       st.tuples(st.booleans(), st.booleans()))
def test_pareto_front_property(points, minimize):
    """No point on the front is dominated; every point off it is dominated by some point."""
    from simmoe.planning import pareto_mask

    a = np.array(points, dtype=float)
    mask = pareto_mask(a[:, 0], a[:, 1], minimize)
    sign = np.where(minimize, 1.0, -1.0)
    b = a * sign  # minimise both

    def dominated(i):
        return any((b[j] <= b[i]).all() and (b[j] < b[i]).any() for j in range(len(b)))

    for i in range(len(a)):
        assert mask[i] == (not dominated(i))


def test_find_max_rate_with_seeds_and_a_pool_is_the_same_search(toy):
    """Seeds multiply the replays per probe (and one closed-loop run starts the search); one warm process
    pool serves every round and gives the in-process answer."""
    from simmoe.planning import find_max_rate

    kw = {"hws": ["rtx3090"], "policies": ["lru"], "slots": [2], "batches": [1, 2], "seeds": 2, "tol": 0.1,
          "progress": False}
    one = find_max_rate(toy, ["ttft_p95_ms=25"], workers=1, **kw)
    two = find_max_rate(toy, ["ttft_p95_ms=25"], workers=2, **kw)
    cols = ["max_rate", "rate_infeasible", "probes", "replays", "ttft_ms.p95", "ttft_ms.p95.ci_low"]
    pd.testing.assert_frame_equal(one[cols], two[cols])
    for _, r in one.iterrows():
        assert r["replays"] == 1 + 2 * len(r["probes"].split(", "))
    assert one.attrs["replays_run"] == one["replays"].sum()


def test_identical_runs_merge_on_several_gpus():
    """Each GPU's cache sizing and memory plan are part of the key: one request at batch 1 and 4 is the same
    run split by layers or by experts (the summaries differ only in the KV reservation they report)."""
    from simmoe.engine.replay import replay
    from simmoe.planning import merge_identical, search_space

    trace = "traces/mixtral-8x7b-synth.npz"
    rows = search_space(trace, ["2x-rtx3090"], ["lru"], [None], [1, 4], base={"max_requests": 1})
    groups = merge_identical(rows)
    assert sorted(g.params["parallel"] for g in groups) == ["expert", "pipeline"]
    assert all([r["batch"] for r in g.rows] == [1, 4] for g in groups)
    a = replay(trace, "2x-rtx3090", "lru", {}, batch=1, max_requests=1, parallel="expert").summary
    b = replay(trace, "2x-rtx3090", "lru", {}, batch=4, max_requests=1, parallel="expert").summary
    for s in (a, b):
        for d in s["parallel"]["devices"]:
            d.pop("kv_reserved_bytes")
    drop = {"batch", "wall_s"}
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}


def test_plan_report_is_one_self_contained_page(tmp_path):
    """--report DIR: the plan as printed, the figure inlined, every configuration, provenance and command."""
    from simmoe.cli.main import main

    rep = tmp_path / "rep"
    rc = main(["plan", "--trace", "traces/deepseek-v2-lite-synth.npz", "--slo", "tpot_p95_ms=1e6", "--hw", "rtx3090",
               "--policies", "lru", "--slots", "8", "--batch", "1", "--max-requests", "2", "--workers", "1",
               "--report", str(rep), "-q"])
    assert rc == 0
    page = (rep / "index.html").read_text()
    assert "simmoe plan" in page and "feasible, cheapest per token first" in page
    assert "data:image/png;base64," in page and 'src="http' not in page
    assert "trace_sha256" in page and "--report" in page  # provenance and the exact command
    # a report folder that cannot be written is refused before any replay
    bad = main(["plan", "--trace", "traces/deepseek-v2-lite-synth.npz", "--slo", "tpot_p95_ms=1", "--hw", "rtx3090",
                "--report", str(tmp_path / "missing" / "deeper" / "rep")])
    assert bad == 2


def test_host_memory_is_a_plan_dimension_priced_by_the_ram():
    """Two 3090s or one 4090 with less / more RAM: host memory sizes the SSD tier, and the price follows it."""
    import warnings

    from simmoe.errors import InputError, SimmoeWarning
    from simmoe.planning import RAM_USD_PER_GIB_HOUR, _price, plan, search_space

    trace = "traces/mixtral-8x7b-synth.npz"
    rows = search_space(trace, ["rtx4090"], ["lru"], [None], [1], host_memory=[48.0, None])
    assert [r.get("host_memory_gib") for r in rows] == [48.0, None]
    with warnings.catch_warnings(record=True) as caught:  # several GPUs: their own RAM only, said once
        warnings.simplefilter("always", SimmoeWarning)
        rows = search_space(trace, ["2x-rtx3090"], ["lru"], [None], [1], host_memory=[48.0, None])
    assert all("host_memory_gib" not in r for r in rows) and len(caught) == 1
    with pytest.raises(InputError, match="host_memory: a100-80gb-sxm has no nvme"):
        search_space(trace, ["a100-80gb-sxm"], ["lru"], [None], [1], host_memory=[48.0])
    with pytest.raises(InputError, match="host_memory"):
        search_space(trace, ["rtx4090"], ["lru"], [None], [1], host_memory=[0])
    # the rtx4090 desktop has 96 GiB: 48 GiB for experts (+4 GiB OS reserve) is 44 GiB less RAM
    base = _price("rtx4090")
    assert _price("rtx4090", 48.0) == pytest.approx(base - 44 * RAM_USD_PER_GIB_HOUR)
    ev = plan(trace, ["tpot_p95_ms=1e6"], hws=["rtx4090"], policies=["lru"], slots=[None], batches=[1],
              host_memory=[48.0, None], base={"max_requests": 1}, workers=1, progress=False)
    small = ev[ev["host_memory_gib"] == 48.0].iloc[0]
    full = ev[ev["host_memory_gib"].isna()].iloc[0]
    assert small["host_tier.nvme_bytes"] > 0  # experts beyond 48 GiB come from the SSD
    assert small["tpot_ms.p95"] > full["tpot_ms.p95"] and small["usd_per_hour"] < full["usd_per_hour"]


def test_host_memory_flag_errors_are_one_line():
    from simmoe.cli.main import main

    assert main(["plan", "--trace", "traces/mixtral-8x7b-synth.npz", "--slo", "tpot_p95_ms=1", "--hw", "rtx4090",
                 "--host-memory-gib", "32,lots"]) == 2
    assert main(["plan", "--trace", "traces/mixtral-8x7b-synth.npz", "--slo", "tpot_p95_ms=1", "--hw", "h100-sxm",
                 "--host-memory-gib", "32"]) == 2
