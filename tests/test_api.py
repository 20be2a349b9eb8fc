"""The notebook API: `import simmoe` stays light, simmoe.replay / sweep / loaders take paths or objects, Result's
frame, HTML and timeline, and errors that name Python parameters (the CLI prints the same errors with flags)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, assert_clean_error, run_main

import simmoe
from simmoe.errors import InputError, param_ref

TRACE = str(REPO / "traces" / "deepseek-v2-lite-synth.npz")
SMALL = {"max_requests": 1}


@pytest.fixture(scope="module")
def result():
    return simmoe.replay(TRACE, "rtx3090", "lru", {"slots_per_layer": 16}, max_requests=2, timeline_steps=(0, 20))


# ---- import cost ---------------------------------------------------------------------------------------------
def test_import_simmoe_is_light_and_names_resolve_on_use():
    code = ("import sys, simmoe; heavy = [m for m in ('numpy', 'pandas', 'simpy', 'matplotlib', 'pydantic', "
            "'scipy') if m in sys.modules]; print(heavy); simmoe.replay; print('pandas' in sys.modules); "
            "simmoe.Result; print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "False", "True"]  # nothing heavy at import; replay's module defers its own imports


def test_exports_resolve_and_unknown_names_are_attribute_errors():
    import simmoe.planning

    for name in ("replay", "sweep", "load_trace", "load_hw", "load_runtime", "load_model", "policy_set",
                 "load_results", "synth_trace", "InputError", "Result", "Trace", "HwProfile", "ModelSpec"):
        assert name in simmoe.__all__ and name in dir(simmoe) and getattr(simmoe, name) is not None
    assert simmoe.plan is simmoe.planning.plan
    with pytest.raises(AttributeError):
        simmoe.no_such_thing  # noqa: B018


def test_compare_is_exported():
    import importlib

    module = importlib.import_module("simmoe.comparison")  # the module is simmoe.comparison: no name clash
    assert simmoe.compare is module.compare and callable(simmoe.compare)
    with pytest.raises(InputError, match=r"^where: selects rows of sweep tables"):  # its errors name parameters
        simmoe.compare([simmoe.replay(TRACE, "rtx3090", **SMALL)], where=["policy=lru"])


# ---- replay: paths or objects ------------------------------------------------------------------------------
def test_paths_and_loaded_objects_give_the_same_run(tmp_path):
    a = simmoe.replay(TRACE, "rtx3090", "lru", {"slots_per_layer": 8}, runtime="torch-eager", **SMALL)
    b = simmoe.replay(simmoe.load_trace(TRACE), simmoe.load_hw("rtx3090"),
                      simmoe.policy_set("lru", {"slots_per_layer": 8}), runtime=simmoe.load_runtime("torch-eager"),
                      **SMALL)
    for k in ("hits", "misses", "makespan_s", "tpot_ms", "policy", "runtime"):
        assert a.summary[k] == b.summary[k], k
    assert a.summary["hw"] == "rtx3090"


def test_replay_matches_the_command_line(tmp_path):
    out = tmp_path / "s.json"
    res = run_main("replay", TRACE, "--hw", "rtx3090", "--policy", "lru", "--opt", "slots_per_layer=4",
                   "--prefetch", "oracle", "--runtime", "torch-eager", "--runtime-opt", "experts.order=index",
                   "--batch", "2", "--max-requests", "2", "--json", out, "--quiet")
    assert res.returncode == 0, res.stderr
    cli = json.loads(out.read_text())
    api = simmoe.replay(TRACE, "rtx3090", "lru", {"slots_per_layer": 4}, prefetch="oracle", runtime="torch-eager",
                        runtime_opts={"experts.order": "index"}, batch=2, max_requests=2).summary
    for k in ("hits", "misses", "prefetches", "makespan_s", "tpot_ms", "policy", "runtime"):
        assert api[k] == cli[k], k


def test_runtime_opts_on_a_loaded_runtime():
    rt = simmoe.load_runtime("torch-eager")
    a = simmoe.replay(TRACE, "rtx3090", runtime=rt, runtime_opts={"experts.order": "index"}, **SMALL)
    b = simmoe.replay(TRACE, "rtx3090", runtime="torch-eager", runtime_opts={"experts.order": "index"}, **SMALL)
    assert a.summary["makespan_s"] == b.summary["makespan_s"]


def test_a_named_system_brings_its_runtime():
    r = simmoe.replay(str(REPO / "traces" / "mixtral-8x7b-synth.npz"), "rtx3060", "mixtral-offloading",
                      {"slots_per_layer": 2}, **SMALL)
    assert r.summary["runtime"] == "mixtral-offloading"


def test_model_argument_replays_the_trace_as_another_model(tmp_path):
    spec = simmoe.load_model("deepseek-v2-lite").to_dict()
    spec.update(name="dsv2-fp8-experts", expert_dtype="fp8")
    p = tmp_path / "fp8.yaml"
    import yaml

    p.write_text(yaml.safe_dump(spec))
    r = simmoe.replay(TRACE, "rtx3090", "lru", {"slots_per_layer": 16}, model=p, **SMALL)
    base = simmoe.replay(TRACE, "rtx3090", "lru", {"slots_per_layer": 16}, **SMALL)
    assert r.summary["model"] == "dsv2-fp8-experts"
    assert r.summary["expert_bytes"] * 2 == base.summary["expert_bytes"]
    assert r.summary["hits"] == base.summary["hits"]  # same routing, same cache: same hits


# ---- errors: parameters from Python, flags from the command line -------------------------------------------
@pytest.mark.parametrize(("kwargs", "python", "cli_args", "cli"), [
    ({"batch": 0}, "batch: must be >= 1, got 0", ["--batch", "0"], "--batch: must be >= 1, got 0"),
    ({"rate": 2.0}, "rate: only used with arrivals poisson or gamma", ["--rate", "2"],
     "--rate: only used with --arrivals poisson or gamma"),
    ({"batch": 4, "max_batched_tokens": 2}, "max_batched_tokens: must be >= batch (4), got 2",
     ["--batch", "4", "--max-batched-tokens", "2"], "--max-batched-tokens: must be >= --batch (4), got 2"),
    ({"opts": {"slots_per_layer": 10**5}}, "opts.slots_per_layer: cache of", ["--opt", "slots_per_layer=100000"],
     "--opt: slots_per_layer: cache of"),
    ({"prefetch_opts": {"lookahead": 2}}, "prefetch_opts.lookahead: given without prefetch",
     ["--prefetch-opt", "lookahead=2"], "--prefetch-opt: lookahead: given without --prefetch"),
    ({"policy": "nope"}, "policy: unknown policy 'nope'", ["--policy", "nope"], "--policy: unknown policy 'nope'"),
    ({"prefetch": "lru"}, "prefetch: 'lru' is a cache policy", ["--prefetch", "lru"], "--prefetch: 'lru' is a cache"),
    ({"runtime": "nope"}, "runtime: no such runtime 'nope'", ["--runtime", "nope"], "--runtime: no such runtime"),
    ({"runtime_opts": {"experts.bogus": 1}}, "runtime_opts.experts.bogus: unknown runtime field",
     ["--runtime-opt", "experts.bogus=1"], "--runtime-opt: experts.bogus: unknown runtime field"),
    ({"arrivals": "poisson", "rate": 1.0, "policy": "belady"}, "arrivals: oracle policies",
     ["--arrivals", "poisson", "--rate", "1", "--policy", "belady"], "--arrivals: oracle policies"),
    ({"model": "mixtral-8x8b"}, "model: unknown model 'mixtral-8x8b'", ["--model", "mixtral-8x8b"],
     "--model: unknown model 'mixtral-8x8b'"),
])
def test_errors_name_the_parameter_from_python_and_the_flag_from_the_cli(kwargs, python, cli_args, cli):
    with pytest.raises(InputError) as e:
        simmoe.replay(TRACE, "rtx3090", **{**SMALL, **kwargs})
    assert str(e.value).startswith(python), str(e.value)
    assert "--" not in str(e.value)
    res = run_main("replay", TRACE, "--hw", "rtx3090", "--max-requests", "1", *cli_args)
    assert_clean_error(res, cli)


def test_the_same_error_renders_both_ways():
    e = InputError(None, "slots_per_layer", f"too big for {param_ref('batch')} 4", param="opts")
    assert str(e) == "opts.slots_per_layer: too big for batch 4" and e.message == "too big for batch 4"
    from simmoe.cli.params import flag_of

    assert e.line(flag_of) == "--opt: slots_per_layer: too big for --batch 4"
    rebuilt = type(e)(*e.args)  # SimPy re-raises process errors so
    assert str(rebuilt) == str(e) and rebuilt.param == "opts"
    assert str(InputError("f.yaml", "k", "bad")) == "f.yaml: k: bad"  # errors without a parameter: unchanged


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"opts": [1]}, "opts: must be a mapping"),
    ({"policy": 3}, "policy: must be a policy name"),
    ({"bogus": 1}, "bogus: unknown setting"),
    ({"prefetch_opt": {}}, "prefetch_opt: unknown setting"),
])
def test_bad_api_arguments(kwargs, needle):
    with pytest.raises(InputError, match=needle):
        simmoe.replay(TRACE, "rtx3090", **kwargs)
    with pytest.raises(InputError, match="hw: must be a profile name"):
        simmoe.replay(TRACE, 3)
    with pytest.raises(InputError, match="opts: a PolicySet holds every kind"):
        simmoe.replay(TRACE, "rtx3090", simmoe.policy_set("lru"), {"slots_per_layer": 2})


# ---- Result -------------------------------------------------------------------------------------------------
def test_to_frame_is_one_tidy_row(result):
    df = result.to_frame()
    assert len(df) == 1
    row = df.iloc[0]
    assert row["hit_rate"] == result.summary["hit_rate"] and row["tpot_ms.p90"] == result.summary["tpot_ms"]["p90"]
    assert row["stall_ms.copy"] == result.summary["stall_ms"]["copy"] and row["policy"] == "lru(slots_per_layer=16)"
    assert not any(isinstance(v, dict) for v in row)
    two = pd.concat([result.to_frame(), result.to_frame()], ignore_index=True)
    assert list(two.columns) == list(df.columns) and len(two) == 2


def test_repr_html_shows_the_headline_figures(result):
    h = result._repr_html_()
    s = result.summary
    assert h.startswith("<div") and "<table>" in h and h.count("<tr>") >= 8
    assert f"{100 * s['hit_rate']:.1f}%" in h and f"{s['tpot_ms']['p90']:,.2f}" in h and "deepseek-v2-lite" in h
    assert "queueing" not in h  # a closed-loop run has no arrivals
    served = simmoe.replay(TRACE, "rtx3090", "lru", {"slots_per_layer": 8}, max_requests=2, arrivals="poisson",
                           rate=0.5, slo_tpot_ms=100.0)._repr_html_()
    assert "queueing" in served and "end to end" in served and "SLO attainment" in served
    r = simmoe.replay(TRACE, "rtx3090", "lru", {"slots_per_layer": 4}, max_requests=1)
    r.summary["model"] = "<script>"  # escaped, never markup
    assert "<script>" not in r._repr_html_() and "&lt;script&gt;" in r._repr_html_()


def test_write_timeline_writes_the_recorded_steps(result, tmp_path):
    n = result.write_timeline(tmp_path / "all.json")
    data = json.loads((tmp_path / "all.json").read_text())
    assert n == len(data["traceEvents"]) and n > 100
    steps = [e for e in data["traceEvents"] if e.get("cat") == "step"]
    assert [e["name"].split()[-1] for e in steps] == [str(i) for i in range(20)]
    m = result.write_timeline(tmp_path / "sub.json", steps=(2, 5))
    sub = json.loads((tmp_path / "sub.json").read_text())["traceEvents"]
    assert 0 < m < n and [e["name"].split()[-1] for e in sub if e.get("cat") == "step"] == ["2", "3", "4"]
    win = result.steps[(result.steps["step"] >= 2) & (result.steps["step"] < 5)]
    t0, t1 = win["start_us"].iloc[0], win["end_us"].iloc[-1]
    assert all(t0 - 1e-3 <= e["ts"] <= t1 + 1e-3 for e in sub if e["ph"] == "X")


def test_write_timeline_errors(result, tmp_path):
    with pytest.raises(InputError, match=r"steps: 10:30 is not inside the recorded steps 0:20"):
        result.write_timeline(tmp_path / "x.json", steps=(10, 30))
    with pytest.raises(InputError, match=r"steps: must be \(START, STOP\)"):
        result.write_timeline(tmp_path / "x.json", steps=5)
    bare = simmoe.replay(TRACE, "rtx3090", **SMALL)
    with pytest.raises(InputError, match="timeline_steps: this run recorded no timeline"):
        bare.write_timeline(tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_write_timeline_is_the_chrome_trace_writer_with_the_run_s_own_arguments(tmp_path):
    from simmoe.engine.chrome_trace import write_chrome_trace

    r = simmoe.replay(TRACE, "rtx3090", max_requests=1, timeline_steps=(0, 10))
    s = r.summary
    write_chrome_trace(tmp_path / "ref.json", r.events, r.steps, f"simmoe {s['model']} on {s['hw']} ({s['runtime']}, "
                       f"{s['policy']})", r.memory["expert_bytes"], (0, 10), memory=r.memory,
                       metadata=getattr(r, "provenance", None))
    r.write_timeline(tmp_path / "api.json")
    res = run_main("replay", TRACE, "--hw", "rtx3090", "--max-requests", "1", "--timeline", tmp_path / "cli.json",
                   "--timeline-steps", "0:10", "--quiet")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "api.json").read_text()) == json.loads((tmp_path / "ref.json").read_text())
    ref, cli = (json.loads((tmp_path / f).read_text())["traceEvents"] for f in ("ref.json", "cli.json"))
    assert cli == ref  # the CLI's run is another run of the same configuration: the same events


# ---- sweep --------------------------------------------------------------------------------------------------
def test_sweep_from_a_mapping_rows_and_a_file(tmp_path):
    spec = {"trace": TRACE, "base": {"hw": "rtx3090", "max_requests": 1},
            "grid": {"policy_options.slots_per_layer": [4, 8]}}
    a = simmoe.sweep(spec)
    assert list(a["policy_options.slots_per_layer"]) == [4, 8] and (a["status"] == "ok").all()
    rows = [{"trace": TRACE, "hw": "rtx3090", "max_requests": 1, "policy_options.slots_per_layer": s} for s in (4, 8)]
    b = simmoe.sweep(rows)
    c = simmoe.sweep(pd.DataFrame(rows), out=tmp_path / "r.csv")
    assert list(a["hits"]) == list(b["hits"]) == list(c["hits"])
    assert a["hits"].iloc[0] < a["hits"].iloc[1]  # a larger cache hits more
    assert (tmp_path / "r.csv").exists() and len(simmoe.load_results(tmp_path / "r.csv")) == 2
    f = tmp_path / "spec.yaml"
    import yaml

    f.write_text(yaml.safe_dump({**spec, "trace": str(Path(TRACE).relative_to(REPO))}).replace(
        str(Path(TRACE).relative_to(REPO)), str(Path(TRACE))))
    d = simmoe.sweep(f)
    assert list(d["hits"]) == list(a["hits"])


def test_sweep_errors(tmp_path):
    with pytest.raises(InputError, match="spec: grid.batch: empty list"):
        simmoe.sweep({"trace": TRACE, "base": {"hw": "rtx3090"}, "grid": {"batch": []}})
    with pytest.raises(InputError, match="spec: must be a spec path"):
        simmoe.sweep(42)
    with pytest.raises(InputError, match=r"every configuration failed \(1\); the first: batch: must be >= 1"):
        simmoe.sweep([{"trace": TRACE, "hw": "rtx3090", "batch": 0}])
    rows = [{"trace": TRACE, "hw": "rtx3090", "max_requests": 1}]
    with pytest.raises(InputError, match=r"^workers: must be >= 1, got 0"):
        simmoe.sweep(rows, workers=0)
    with pytest.raises(InputError, match=r"^out: must end in \.parquet or \.csv, got '.*r\.txt'"):
        simmoe.sweep(rows, out=tmp_path / "r.txt")
