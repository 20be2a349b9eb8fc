"""`simmoe compare` and simmoe.compare: runs from replay JSON and sweep rows, side by side."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from conftest import assert_clean_error, run_main

from simmoe.comparison import compare, format_table, load_runs, metric_rows, to_dict, vs_first
from simmoe.trace.format import write_trace
from simmoe.trace.synth import PRESETS, synth_trace


def closed_rows(summary: dict) -> list[str]:
    """The table's rows for closed-loop runs: the latency statistics the summary holds (mean, then the
    percentiles in order: p95 appears when the summary has it), then the fixed metrics."""
    def stats(key):
        ks = list(summary[key])
        return [f"{key}.{k}" for k in ["mean", *sorted((k for k in ks if k != "mean"), key=lambda k: float(k[1:]))]]

    return [*stats("tpot_ms"), *stats("ttft_ms"),
            "tokens_per_s", "hit_rate", "hits", "misses", "gpu_busy", "pcie_busy", "cpu_busy",
            "stall_ms_per_token.copy", "stall_ms_per_token.dispatch", "stall_ms_per_token.cpu",
            "bytes_h2d", "bytes_d2h", "peak_gpu_mem_bytes", "makespan_s"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two replay JSONs and a 4-row sweep table of one trace, and a JSON of another trace."""
    d = tmp_path_factory.mktemp("cmp")
    a, b = d / "mixtral.npz", d / "other.npz"
    write_trace(synth_trace("mixtral-8x7b", requests=2, prompt_tokens=8, decode_tokens=24, seed=3,
                            **PRESETS["mixtral-like"]), a)
    write_trace(synth_trace("mixtral-8x7b", requests=2, prompt_tokens=8, decode_tokens=24, seed=4,
                            **PRESETS["mixtral-like"]), b)
    for name, trace, opts in (("lru1", a, ["--opt", "slots_per_layer=1"]),
                              ("lfu4", a, ["--policy", "lfu", "--opt", "slots_per_layer=4"]),
                              ("other", b, ["--opt", "slots_per_layer=1"])):
        res = run_main("replay", trace, "--hw", "a100-80gb-sxm", *opts, "--json", d / f"{name}.json", "--quiet")
        assert res.returncode == 0, res.stderr
    spec = d / "s.yaml"
    spec.write_text(f"trace: {a}\ngrid:\n  hw: [a100-80gb-sxm]\n  policy: [lru, lfu]\n"
                    "  policy_options.slots_per_layer: [1, 4]\n")
    res = run_main("sweep", spec, "--out", d / "r.parquet", "--workers", "1", "--quiet")
    assert res.returncode == 0, res.stderr
    return d


def test_table_rows_are_stable(runs):
    df = compare([runs / "lru1.json", runs / "lfu4.json"])
    a = json.loads((runs / "lru1.json").read_text())
    assert list(df.index) == closed_rows(a)
    assert {"tpot_ms.mean", "tpot_ms.p50", "tpot_ms.p90", "tpot_ms.p99"} <= set(df.index)
    assert list(df.columns) == ["lru1", "lfu4"]
    assert df.at["tpot_ms.p90", "lru1"] == a["tpot_ms"]["p90"]
    assert df.at["hit_rate", "lru1"] == a["hit_rate"]
    assert df.at["stall_ms_per_token.copy", "lru1"] == pytest.approx(a["stall_ms"]["copy"] / a["tokens"])
    assert [r["label"] for r in df.attrs["runs"]] == ["lru1", "lfu4"]
    assert df.attrs["runs"][1]["policy"] == "lfu(slots_per_layer=4)"
    assert df.attrs["warnings"] == []
    vs = vs_first(df)
    assert vs.at["tpot_ms.mean", "lfu4"] == pytest.approx(df.at["tpot_ms.mean", "lfu4"] / df.at["tpot_ms.mean", "lru1"])
    assert vs.at["hit_rate", "lfu4"] == pytest.approx(df.at["hit_rate", "lfu4"] - df.at["hit_rate", "lru1"])
    text = format_table(df)
    assert "vs first" in text and "pt" in text and "x" in text


def test_percentiles_are_read_generically(runs):
    a = json.loads((runs / "lru1.json").read_text())
    a["tpot_ms"].pop("p95", None)
    b = dict(a, tpot_ms={**a["tpot_ms"], "p95": 123.0, "p99.9": 200.0})  # percentiles this module never names
    df = compare([a, b])
    tp = [m for m in df.index if m.startswith("tpot_ms.")]
    assert tp == ["tpot_ms.mean", "tpot_ms.p50", "tpot_ms.p90", "tpot_ms.p95", "tpot_ms.p99", "tpot_ms.p99.9"]
    assert math.isnan(df.at["tpot_ms.p95", "run1"]) and df.at["tpot_ms.p95", "run2"] == 123.0


def test_sweep_rows_where_and_key(runs):
    table = runs / "r.parquet"
    df = compare([runs / "lru1.json", table], where=["policy=lfu"])
    assert list(df.columns) == ["lru1", "r:slots_per_layer=1", "r:slots_per_layer=4"]
    sweep = pd.read_parquet(table)
    row = sweep[(sweep["policy"] == "lfu") & (sweep["policy_options.slots_per_layer"] == 4)].iloc[0]
    assert df.at["tokens_per_s", "r:slots_per_layer=4"] == row["tokens_per_s"]
    # the sweep row of the same configuration as lru1.json gives the same simulated figures
    key = sweep[(sweep["policy"] == "lru") & (sweep["policy_options.slots_per_layer"] == 1)]["key"].iloc[0]
    one = compare([runs / "lru1.json", f"{table}#{key[:10]}"])
    assert list(one.columns) == ["lru1", "r"]
    for m in ("hits", "misses", "tpot_ms.p90", "ttft_ms.mean", "bytes_h2d"):
        assert one.at[m, "r"] == pytest.approx(one.at[m, "lru1"], rel=1e-12)
    assert one.attrs["warnings"] == []
    assert len(compare([table], where=["policy_options.slots_per_layer=4"]).columns) == 2


def test_different_traces_warn(runs):
    df = compare([runs / "lru1.json", runs / "other.json"])
    assert len(df.attrs["warnings"]) == 1 and "different traces" in df.attrs["warnings"][0]
    res = run_main("compare", runs / "lru1.json", runs / "other.json")
    assert res.returncode == 0
    assert "warning: the runs replay different traces" in res.stderr


def test_cli_table_json_and_plot(runs, tmp_path):
    png, out = tmp_path / "c.png", tmp_path / "c.json"
    res = run_main("compare", runs / "lru1.json", runs / "lfu4.json", "--plot", png, "--json", out)
    assert res.returncode == 0, res.stderr
    assert "tpot_ms.p90" in res.stdout and "lfu4" in res.stdout and "vs first" in res.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(out.read_text())
    assert list(data["metrics"]) == closed_rows(json.loads((runs / "lru1.json").read_text()))
    assert data["vs_first_kind"]["hit_rate"] == "difference" and data["vs_first_kind"]["tokens_per_s"] == "ratio"
    assert data["runs"][0]["trace_sha256"] == data["runs"][1]["trace_sha256"]
    # --json - : the JSON alone on stdout
    res = run_main("compare", runs / "lru1.json", runs / "lfu4.json", "--json", "-")
    assert res.returncode == 0
    assert json.loads(res.stdout) == to_dict(compare([runs / "lru1.json", runs / "lfu4.json"]))


def test_serving_runs_add_queueing_rows(runs, tmp_path):
    trace = json.loads((runs / "lru1.json").read_text())["trace"]
    out = tmp_path / "s.json"
    assert run_main("replay", trace, "--hw", "a100-80gb-sxm", "--opt", "slots_per_layer=1", "--arrivals", "poisson",
                    "--rate", "1", "--json", out, "--quiet").returncode == 0
    rows = list(compare([runs / "lru1.json", out]).index)
    assert rows == metric_rows(load_runs([runs / "lru1.json", out]))
    assert "queue_ms.p90" in rows and "e2e_ms.mean" in rows and "requests_per_s" in rows
    assert "queue_ms.p90" not in metric_rows(load_runs([runs / "lru1.json"]))


def test_bad_inputs(runs, tmp_path):
    notres = tmp_path / "x.json"
    notres.write_text('{"a": 1}')
    garbage = tmp_path / "g.json"
    garbage.write_text("{not json")
    table = runs / "r.parquet"
    cases = [
        ((tmp_path / "missing.json",), ("missing.json", "no such file")),
        ((notres,), ("x.json", "not a simmoe replay result")),
        ((garbage,), ("g.json", "not JSON")),
        ((table, "--where", "polcy=lru"), ("--where", "polcy", "no such column")),
        ((table, "--where", "policy"), ("--where", "COLUMN=VALUE")),
        ((table, "--where", "policy=nope"), ("r.parquet", "no successful configuration")),
        ((f"{table}#zzzz",), ("#zzzz", "no configuration with this key")),
        ((runs / "lru1.json", "--where", "policy=lru"), ("--where", "sweep tables")),
        ((runs / "lru1.json", "--json", tmp_path / "no" / "o.json"), ("--json", "does not exist")),
    ]
    for args, needles in cases:
        assert_clean_error(run_main("compare", *args), *needles)
    csv = tmp_path / "foreign.csv"
    csv.write_text("a,b\n1,2\n")
    assert_clean_error(run_main("compare", csv), "foreign.csv", "not a simmoe sweep result table")


def test_python_api_takes_results(runs):
    from simmoe.engine.replay import replay

    trace = json.loads((runs / "lru1.json").read_text())["trace"]
    a = replay(trace, "a100-80gb-sxm", "lru", {"slots_per_layer": 1})
    b = replay(trace, "a100-80gb-sxm", "lfu", {"slots_per_layer": 4})
    df = compare([a, b, runs / "lru1.json"])
    assert list(df.columns) == ["run1", "run2", "lru1"]
    assert df.attrs["warnings"] == []  # the same trace file
    for m in ("hits", "misses", "tpot_ms.p99", "ttft_ms.mean"):  # a Result and its --json give the same row
        assert df.at[m, "run1"] == pytest.approx(df.at[m, "lru1"], rel=1e-12)
    assert df.at["hits", "run2"] == b.summary["hits"]
