"""simmoe.plots: every figure renders headless and draws what it should, on tiny traces."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from conftest import assert_clean_error, random_trace  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from simmoe import plots  # noqa: E402
from simmoe.engine.replay import replay  # noqa: E402

HW = "a100-80gb-sxm"


@pytest.fixture(scope="module")
def trace():
    return random_trace(rows=48, layers=4, experts=8, k=2, requests=2, prefill=4, seed=1)


@pytest.fixture(scope="module")
def lru(trace):
    return replay(trace, HW, "lru", {"slots_per_layer": 2}, timeline_steps=(0, 6))


@pytest.fixture(scope="module")
def cpu(trace):
    return replay(trace, HW, "cpu-experts", timeline_steps=(2, 4))


@pytest.fixture(scope="module")
def ondemand(trace):
    return replay(trace, HW, "ondemand")


def test_sweep_and_hit_rate_curve(trace):
    df = plots.sweep_cache_sizes(trace, HW, ["lru"], [1, 2, 4, 8])
    assert list(df["size"]) == [1, 2, 4, 8]
    assert list(df["cache_slots"]) == [4, 8, 16, 32] and df["cache_frac"].iloc[-1] == 1.0
    assert (df["hits"] + df["misses"]).nunique() == 1
    assert df["hit_rate"].is_monotonic_increasing  # LRU is a stack algorithm: more slots never hurt
    # with every expert cached only the first touch of each of the 32 (layer, expert) keys misses
    assert df["misses"].iloc[-1] == 32
    ax = plots.hit_rate_curve(df, x="cache_frac")
    assert len(ax.get_lines()) == 1 and ax.get_xlabel() == "cache size (fraction of experts)"
    assert list(ax.get_lines()[0].get_ydata()) == list(df["hit_rate"])


def test_sweep_with_a_policy_set_and_latency_curve(trace):
    from simmoe.policies.base import PolicySet

    sets = {"lru": {}, "lru+oracle": PolicySet(cache="lru", prefetch="oracle")}
    df = plots.sweep_cache_sizes(trace, HW, sets, [1, 2])
    assert list(df["policy"]) == ["lru", "lru", "lru+oracle", "lru+oracle"]
    plain = plots.sweep_cache_sizes(trace, HW, ["lru"], [1, 2])
    assert list(df["hits"][:2]) == list(plain["hits"])  # the plain label is the plain policy
    assert list(df["bytes_h2d"][2:]) != list(df["bytes_h2d"][:2])  # the prefetcher's copies are counted
    ax = plots.hit_rate_curve(df, x="size", y="tpot_ms")
    assert [ln.get_label() for ln in ax.get_lines()] == ["lru", "lru+oracle"]
    assert list(ax.get_lines()[1].get_ydata()) == list(df["tpot_ms"][2:])
    assert ax.get_ylabel().startswith("time per output token")


def test_hit_rate_curve_series_per_policy(lru, ondemand):
    df = pd.DataFrame({"policy": ["a", "a", "b", "b", "b"], "cache_slots": [4, 8, 4, 8, 16],
                       "hit_rate": [0.1, 0.2, 0.15, 0.3, 0.5]})
    ax = plots.hit_rate_curve(df)
    assert [ln.get_label() for ln in ax.get_lines()] == ["a", "b"]
    assert [len(ln.get_xdata()) for ln in ax.get_lines()] == [2, 3]
    assert ax.get_ylabel() == "expert cache hit rate"
    ax = plots.hit_rate_curve([lru, ondemand])  # from Results: grouped by policy name
    assert sorted(ln.get_label() for ln in ax.get_lines()) == ["lru", "ondemand"]
    with pytest.raises(ValueError, match="cache_frac"):
        plots.hit_rate_curve(df, x="cache_frac")


def test_latency_breakdown(lru, cpu, ondemand):
    results = [lru, cpu, ondemand]
    bf = plots.breakdown_frame(results)
    parts = ["compute", "copy stall", "dispatch stall", "CPU stall", "other"]
    assert np.allclose(bf[parts].sum(axis=1), bf["total"])
    # batch 1: one token per decode step, so the bar is the mean decode step latency
    assert np.allclose(bf["total"], [r.summary["step_ms"]["mean"] for r in results])
    assert bf.loc[1, "CPU stall"] > 0 and bf.loc[1, "copy stall"] == 0  # experts on the CPU: no expert copies
    assert bf.loc[2, "copy stall"] > bf.loc[0, "copy stall"]  # no cache: every expert is copied
    assert (bf["other"] >= 0).all() and (bf["other"] < 0.01 * bf["total"]).all()
    ax = plots.latency_breakdown(results)
    assert len(ax.patches) == len(parts) * len(results)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == parts
    assert ax.get_ylabel() == "time per decode token (ms)"
    tops = [max(p.get_y() + p.get_height() for p in ax.patches if abs(p.get_x() + p.get_width() / 2 - i) < 0.01)
            for i in range(3)]
    assert np.allclose(tops, bf["total"])


def test_step_timeline(lru, cpu, ondemand):
    ax = plots.step_timeline(lru, (4, 6))
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["host dispatch", "GPU compute", "H2D copy"]
    assert ax.collections  # broken_barh collections
    lo, hi = lru.steps.loc[4, "start_us"] / 1e3, lru.steps.loc[5, "end_us"] / 1e3
    xmin, xmax = ax.get_xlim()
    assert xmin <= lo <= hi <= xmax and (hi - lo) > 0.9 * (xmax - xmin)
    assert ax.get_title() == "Timeline, steps 4-5"
    ax = plots.step_timeline(cpu, (3, 4))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["host dispatch", "GPU compute", "H2D copy",
                                                            "D2H copy", "CPU experts"]
    with pytest.raises(ValueError, match="timeline_steps"):
        plots.step_timeline(ondemand)
    with pytest.raises(ValueError, match="not recorded"):
        plots.step_timeline(lru, (7, 9))


def test_memory_over_time(lru):
    ax = plots.memory_over_time(lru)
    polys = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(polys) == 4
    mf = plots.memory_frame(lru)
    assert (mf["expert_cache"].iloc[-1] == lru.summary["cache_slots"] * lru.memory["expert_bytes"])
    top = mf[["dense", "workspace", "kv_cache", "expert_cache"]].sum(axis=1).max()
    assert top <= lru.summary["peak_gpu_mem_bytes"] <= lru.memory["usable"]
    assert ax.get_ylabel() == "GPU memory (GiB)"


def test_pareto_front_draws_the_planning_front():
    # the front itself is simmoe.planning.pareto_mask (tests/test_plan.py); this checks what is drawn
    df = pd.DataFrame({"cost": [1, 2, 3, 2, 1, 4], "lat": [5, 3, 1, 4, 5, 1], "name": list("abcdef")})
    ax = plots.pareto_front(df, "cost", "lat", label="name")
    assert sorted(t.get_text() for t in ax.texts) == ["a", "b", "c", "e"]
    assert ax.get_xlabel() == "cost" and ax.get_ylabel() == "lat"


def test_overview(lru, cpu, tmp_path):
    fig = plots.overview(lru)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert "lru(slots_per_layer=2)" in fig.get_suptitle()
    first = int(lru.steps.loc[lru.steps["kind"] == "decode", "step"].iloc[0])  # one prefill step before it
    assert first == 1 and fig.axes[2].get_title() == "Timeline, steps 1-2"  # first two recorded decode steps
    out = tmp_path / "o.png"
    plots.save(fig, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = plots.overview(cpu)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert {"GPU cache hits", "computed on CPU"} <= set(legend)  # per-layer bars, CPU share stacked on top
    assert fig.axes[0].get_xlabel() == "MoE layer" and len(fig.axes[0].patches) == 2 * len(cpu.layers)


def test_replay_plot_cli(simmoe_cli, trace, tmp_path):
    from simmoe.trace.format import write_trace

    p = tmp_path / "t.npz"
    write_trace(trace, p)
    out = tmp_path / "o.png"
    res = simmoe_cli("replay", p, "--hw", HW, "--opt", "slots_per_layer=2", "--plot", out, "--quiet")
    assert res.returncode == 0, res.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_clean_error(simmoe_cli("replay", p, "--hw", HW, "--plot", tmp_path / "o.txt"), "--plot",
                       "unknown image format")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["o.png", "t.npz"]  # nothing half-written
