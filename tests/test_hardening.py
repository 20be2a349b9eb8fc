"""Issue 16: every example a hostile but fair user tried, each to the standard (exit 2, one line naming the
file and the field, no traceback, nothing written), or to the decided behaviour (partial captures, outputs
through links and special files, sweep journals)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, assert_clean_error, run_main

from simmoe.trace.format import Trace, make_meta, read_trace, write_trace
from simmoe.trace.synth import PRESETS, synth_trace


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("h") / "mixtral.npz"
    write_trace(synth_trace("mixtral-8x7b", requests=2, prompt_tokens=4, decode_tokens=8, seed=3,
                            **PRESETS["mixtral-like"]), p)
    return p


def _trace(path: Path, experts, model: str = "mixtral-8x7b") -> Path:
    ex = np.asarray(experts, np.int16)
    write_trace(Trace(ex, np.zeros(len(ex), np.int32), np.ones(len(ex), np.int8),
                      make_meta(model=model, source="test")), path)
    return path


def _raw_trace(path: Path, experts, model: str = "mixtral-8x7b") -> Path:
    """Written as another tool would, without simmoe's validation."""
    ex = np.asarray(experts, np.int16)
    meta = np.array(json.dumps(make_meta(model=model, source="test")))
    np.savez(path, experts=ex, request=np.zeros(len(ex), np.int32), phase=np.ones(len(ex), np.int8), meta=meta)
    return path


def _profile(tmp_path: Path, section: str, key: str, value, raw: str | None = None) -> Path:
    data = yaml.safe_load((REPO / "hwprofiles" / "rtx3090.yaml").read_text())
    data[section][key] = value
    text = yaml.safe_dump(data)
    if raw is not None:  # a YAML spelling safe_dump would quote (yes, .nan)
        text = text.replace(f"{key}: {yaml.safe_dump(value).splitlines()[0]}", f"{key}: {raw}")
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


def _clean(res, *needles, folder: Path | None = None) -> None:
    assert_clean_error(res, *needles)
    if folder is not None:
        assert not [p for p in folder.iterdir() if p.name.startswith(("out", ".out"))], list(folder.iterdir())


# ---- tracebacks that became one line ----------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", ".nan", ".inf", "-.inf"])
def test_cache_gb_not_finite(trace, tmp_path, value):
    res = run_main("replay", trace, "--hw", "rtx3090", "--opt", "scope=global", "--opt", f"cache_gb={value}",
                   "--json", tmp_path / "out.json")
    _clean(res, "policy lru", "cache_gb", folder=tmp_path)


def test_negative_seed(trace):
    _clean(run_main("replay", trace, "--hw", "rtx3090", "--arrivals", "poisson", "--rate", "1", "--seed", "-1"),
           "--seed", ">= 0")


def test_sweep_grid_value_that_is_a_mapping(trace, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"trace: {trace}\ngrid:\n  hw: [{{a: 1}}]\n")
    _clean(run_main("sweep", spec, "--out", tmp_path / "out.parquet"), str(spec), "hw", folder=tmp_path)
    spec.write_text(f"trace: {trace}\nbase: {{hw: rtx3090}}\ngrid:\n  batch: [{{a: 1}}]\n")
    _clean(run_main("sweep", spec, "--out", tmp_path / "out.parquet"), str(spec), "batch", folder=tmp_path)


def test_trace_info_plot_into_a_folder(trace, tmp_path):
    _clean(run_main("trace", "info", trace, "--plot", tmp_path), "--plot", "is a folder")


def test_import_token_out_of_range(tmp_path):
    for token in (1_000_000_000_000, 1e30):
        p = tmp_path / "big.jsonl"
        p.write_text(json.dumps({"request": 0, "layer": 0, "token": token, "experts": [1, 2], "phase": 1}) + "\n")
        _clean(run_main("trace", "import", "--from", "jsonl", p, "--model", "mixtral-8x7b", "--out",
                        tmp_path / "out.npz"), "big.jsonl:line 1", "token", folder=tmp_path)


def test_import_token_that_asks_for_more_memory_than_there_is(tmp_path):
    p = tmp_path / "big.jsonl"  # in 32-bit range, but 2e9 rows of Mixtral routing do not fit in memory
    p.write_text(json.dumps({"request": 0, "layer": 0, "token": 2_000_000_000, "experts": [1], "phase": 1}) + "\n")
    _clean(run_main("trace", "import", "--from", "jsonl", p, "--model", "mixtral-8x7b", "--out",
                    tmp_path / "out.npz"), "big.jsonl:line 1", "token", "GiB", folder=tmp_path)


def test_json_into_a_folder_that_cannot_take_files(trace):
    _clean(run_main("replay", trace, "--hw", "rtx3090", "--json", "/proc/self/no-such-dir/x.json"), "--json")
    _clean(run_main("replay", trace, "--hw", "rtx3090", "--json", "/proc/self/x.json"), "--json", "cannot write")


@pytest.mark.parametrize("experts", [[[[1, 2]] * 32], [[[-1, -1]] * 32] * 6], ids=["one-row", "all-minus-one"])
def test_synth_like_with_nothing_to_fit(tmp_path, experts):
    t = _trace(tmp_path / "t.npz", experts)
    _clean(run_main("trace", "synth", "--like", t, "--out", tmp_path / "out.npz"), str(t), "experts",
           folder=tmp_path)


def test_requests_beyond_memory_is_one_line_and_quick(trace):
    _clean(run_main("replay", trace, "--hw", "rtx3090", "--requests", "100000000"), "--requests", "GiB")


def test_synth_seed_and_size(tmp_path):
    _clean(run_main("trace", "synth", "--model", "mixtral-8x7b", "--seed", "-1", "--out", tmp_path / "out.npz"),
           "seed")
    _clean(run_main("trace", "synth", "--model", "mixtral-8x7b", "--requests", "100000000", "--out",
                    tmp_path / "out.npz"), "GiB", folder=tmp_path)


# ---- silently accepted, now rejected ------------------------------------------------------------------------
@pytest.mark.parametrize("section,key,value,raw", [
    ("pcie", "h2d_pinned_gbps", True, None),
    ("gpu", "memory_gib", True, "yes"),
    ("pcie", "h2d_pinned_gbps", 1e-300, None),
    ("pcie", "latency_us", 1e300, None),
    ("gpu", "hbm_gbps", "936", None),
    ("host", "kernels_per_expert", 6.0, None),
    ("gpu", "hbm_gbps", float("nan"), ".nan"),
])
def test_profile_values_are_typed_and_finite(trace, tmp_path, section, key, value, raw):
    p = _profile(tmp_path, section, key, value, raw)
    _clean(run_main("replay", trace, "--hw", p, "--json", tmp_path / "out.json"), str(p), f"{section}.{key}",
           folder=tmp_path)


@pytest.mark.parametrize("opt,field", [("slots_per_layer=yes", "slots_per_layer"),
                                       ("slots_per_layer=4.0", "slots_per_layer"),
                                       ("slots_per_layer='4'", "slots_per_layer")])
def test_policy_options_are_typed(trace, opt, field):
    _clean(run_main("replay", trace, "--hw", "rtx3090", "--opt", opt), "policy lru", field)


@pytest.mark.parametrize("args,needle", [
    (["--rate", "5"], "--rate"),
    (["--seed", "3"], "--seed"),
    (["--cv", "2", "--arrivals", "poisson", "--rate", "2"], "--cv"),
    (["--arrivals", "poisson"], "--rate"),
    (["--arrivals", "poisson", "--rate", "inf"], "--rate"),
    (["--arrivals", "poisson", "--rate", "nan"], "--rate"),
    (["--slo-tpot-ms", "inf"], "--slo-tpot-ms"),
    (["--prefetch-chunk-mb", "nan"], "--prefetch-chunk-mb"),
    (["--timeline-steps", "0:5"], "--timeline-steps"),
    (["--placement-opt", "x=1"], "--placement-opt"),
    (["--prefetch-opt", "lookahead=2"], "--prefetch-opt"),
    (["--precision-opt", "bits=4"], "--precision-opt"),
    (["--routing-opt", "top_p=0.5"], "--routing-opt"),
])
def test_flags_without_effect_or_not_finite(trace, tmp_path, args, needle):
    _clean(run_main("replay", trace, "--hw", "rtx3090", *args, "--json", tmp_path / "out.json"), needle,
           folder=tmp_path)


def test_exponent_numbers_read_as_numbers(trace, tmp_path):
    # YAML 1.1 reads 1e3 as text; with strict options that would refuse a plain number
    assert run_main("replay", trace, "--hw", "rtx3090", "--opt", "scope=global", "--opt", "cache_gb=2e0",
                    "--quiet").returncode == 0
    _clean(run_main("replay", trace, "--hw", "rtx3090", "--opt", "slots_per_layer=1e0"), "slots_per_layer",
           "integer")
    p = _profile(tmp_path, "pcie", "h2d_pinned_gbps", 25.0)
    p.write_text(p.read_text().replace("h2d_pinned_gbps: 25.0", "h2d_pinned_gbps: 25e0"))
    assert run_main("replay", trace, "--hw", p, "--quiet").returncode == 0


@pytest.mark.parametrize("args", [["--prefetch-chunk-mb", "5e-324"],
                                  ["--prefetch", "stride", "--prefetch-opt", "chunk_mb=1e-300"]])
def test_chunks_too_small_to_count(trace, args):
    _clean(run_main("replay", trace, "--hw", "rtx3090", "--opt", "slots_per_layer=1", *args), "chunk")


def test_policy_file_options_without_their_policy(trace, tmp_path):
    pf = tmp_path / "pol.yaml"
    pf.write_text("cache: lru\nprefetch_options: {lookahead: 2}\n")
    _clean(run_main("replay", trace, "--hw", "rtx3090", "--policy", pf), str(pf), "prefetch_options")
    pf.write_text("cache: lru\nprefetch: oracle\n")  # --prefetch-opt applies to the file's prefetcher
    assert run_main("replay", trace, "--hw", "rtx3090", "--policy", pf, "--opt", "slots_per_layer=1",
                    "--prefetch-opt", "lookahead=2", "--quiet").returncode == 0


@pytest.mark.parametrize("args,needle", [
    (["--batch", "0"], "--batch"), (["--rate", "-1"], "--rate"), (["--rate", "inf"], "--rate"),
    (["--slots", "-4"], "--slots"), (["--max-requests", "0"], "--max-requests"), (["--top", "0"], "--top")])
def test_plan_rejects_up_front_what_replay_rejects(trace, tmp_path, args, needle):
    _clean(run_main("plan", "--trace", trace, "--slo", "tpot_p90_ms=150", "--hw", "rtx3090", "--policies", "lru",
                    "--out", tmp_path / "out.parquet", *args), needle, folder=tmp_path)


# ---- partial captures and experts per token -----------------------------------------------------------------
def test_fewer_layers_than_the_model_is_a_labelled_partial_capture(tmp_path):
    t = _trace(tmp_path / "t31.npz", [[[1, 2]] * 31] * 4)
    res = run_main("replay", t, "--hw", "rtx3090", "--json", tmp_path / "r.json")
    assert res.returncode == 0, res.stderr
    assert "first 31 of mixtral-8x7b's 32 MoE layers" in res.stderr
    assert "model mixtral-8x7b (first 31 of 32 MoE layers)" in res.stdout
    assert json.loads((tmp_path / "r.json").read_text())["model"] == "mixtral-8x7b (first 31 of 32 MoE layers)"
    info = run_main("trace", "info", t)
    assert info.returncode == 0 and "covers the first 31 of the model's 32 MoE layers" in info.stdout


def test_layers_without_records_in_an_import_are_said(tmp_path):
    p = tmp_path / "l.jsonl"
    p.write_text("".join(json.dumps({"request": 0, "layer": m, "token": 0, "experts": [1, 2], "phase": 1}) + "\n"
                         for m in range(31)))
    res = run_main("trace", "import", "--from", "jsonl", p, "--model", "mixtral-8x7b", "--out", tmp_path / "t.npz")
    assert res.returncode == 0, res.stderr
    assert "1 of the model's 32 MoE layers have no record at all (layer 31)" in res.stdout


def test_more_experts_per_token_than_top_k_is_rejected_everywhere(tmp_path):
    t = _raw_trace(tmp_path / "k3.npz", [[[1, 2, 3]] * 32] * 4)
    for args in (["replay", t, "--hw", "rtx3090"], ["trace", "info", t]):
        _clean(run_main(*args), str(t), "experts", "routes 3 experts", "top-2")
    p = tmp_path / "k3.jsonl"
    p.write_text(json.dumps({"request": 0, "layer": 0, "token": 0, "experts": [1, 2, 3], "phase": 1}) + "\n")
    _clean(run_main("trace", "import", "--from", "jsonl", p, "--model", "mixtral-8x7b", "--out", tmp_path / "o.npz"),
           "k3.jsonl:line 1", "experts", "top-2")


def test_slots_beyond_top_k_that_only_pad_are_accepted(tmp_path):
    t = _trace(tmp_path / "pad.npz", [[[1, -1, 2]] * 32] * 4)
    assert read_trace(t).top_k == 3
    p = tmp_path / "pad.jsonl"
    p.write_text(json.dumps({"request": 0, "layer": 0, "token": 0, "experts": [1, -1, 2], "phase": 1}) + "\n")
    res = run_main("trace", "import", "--from", "jsonl", p, "--model", "mixtral-8x7b", "--out", tmp_path / "o.npz")
    assert res.returncode == 0, res.stderr
    assert read_trace(tmp_path / "o.npz").experts[0, 0].tolist() == [1, 2]


def test_more_experts_per_token_with_an_embedded_spec(tmp_path):
    from dataclasses import replace

    from simmoe.models import get_model

    spec = replace(get_model("mixtral-8x7b"), name="mixtral-8x7b-top3", top_k=3)
    ex = np.tile(np.array([1, 2, 3], np.int16), (4, 32, 1))
    t = tmp_path / "k3spec.npz"
    write_trace(Trace(ex, np.zeros(4, np.int32), np.ones(4, np.int8), make_meta(model_spec=spec, source="t")), t)
    assert run_main("replay", t, "--hw", "a100-80gb-sxm", "--opt", "slots_per_layer=3", "--quiet").returncode == 0


# ---- one line --------------------------------------------------------------------------------------------------
def test_yaml_with_nul_bytes(trace, tmp_path):
    p = tmp_path / "nul.yaml"
    p.write_bytes(b"\0\0\0name: x\n")
    _clean(run_main("replay", trace, "--hw", p), str(p), "not valid YAML")
    spec = tmp_path / "nul-spec.yaml"
    spec.write_bytes(b"\0trace: x\n")
    _clean(run_main("sweep", spec, "--out", tmp_path / "out.parquet"), str(spec), "not valid YAML")
    pol = tmp_path / "nul-pol.yaml"
    pol.write_bytes(b"\0cache: lru\n")
    _clean(run_main("replay", trace, "--hw", "rtx3090", "--policy", pol), str(pol), "not valid YAML")


@pytest.mark.parametrize("args,needle", [(["--batch", "abc"], "--batch"),
                                         (["--timeline-steps", "-5:2"], "--timeline-steps"),
                                         (["--engine", "warp"], "--engine"),
                                         (["--no-such-flag"], "--no-such-flag")])
def test_argparse_errors_are_one_line(trace, args, needle):
    _clean(run_main("replay", trace, "--hw", "rtx3090", *args), needle, "--help")


def test_argparse_error_through_the_console_script(simmoe_cli, trace):
    res = simmoe_cli("replay", trace, "--hw", "rtx3090", "--batch", "abc")
    assert_clean_error(res, "--batch", "invalid int value")
    assert "usage:" not in res.stderr


# ---- files -------------------------------------------------------------------------------------------------------
def test_json_through_a_symlink_writes_the_target(trace, tmp_path):
    target = tmp_path / "real.json"
    link = tmp_path / "link.json"
    link.symlink_to(target.name)
    assert run_main("replay", trace, "--hw", "rtx3090", "--quiet", "--json", link).returncode == 0
    assert link.is_symlink() and json.loads(target.read_text())["hw"] == "rtx3090"
    dangling = tmp_path / "d.json"
    dangling.symlink_to(tmp_path / "no-such-dir" / "x.json")
    _clean(run_main("replay", trace, "--hw", "rtx3090", "--json", dangling), "--json", "does not exist")


def test_json_to_dev_stdout_and_null_writes_into_them(simmoe_cli, trace, tmp_path):
    res = simmoe_cli("replay", trace, "--hw", "rtx3090", "--json", "/dev/stdout")
    assert res.returncode == 0, res.stderr
    doc, end = json.JSONDecoder().raw_decode(res.stdout)  # the JSON, then the summary, in that order
    assert doc["hw"] == "rtx3090" and "simmoe replay" in res.stdout[end:]
    assert Path("/dev/stdout").is_symlink() or Path("/dev/stdout").exists()
    st = os.stat("/dev/null")
    assert simmoe_cli("replay", trace, "--hw", "rtx3090", "--quiet", "--json", "/dev/null").returncode == 0
    after = os.stat("/dev/null")
    assert (after.st_ino, after.st_rdev) == (st.st_ino, st.st_rdev)  # still the device, not a regular file


def test_json_to_stdout_redirected_to_a_file_keeps_both(trace, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "both.txt"
    with open(out, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "simmoe.cli.main", "replay", str(trace), "--hw", "rtx3090",
                             "--json", "/proc/self/fd/1"], stdout=f, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, MPLBACKEND="Agg")).returncode
    assert rc == 0
    text = out.read_text()
    doc, end = json.JSONDecoder().raw_decode(text)
    assert doc["hw"] == "rtx3090" and "simmoe replay" in text[end:]


def test_user_policy_with_a_syntax_error(trace, tmp_path):
    (tmp_path / "badpol.py").write_text("from simmoe.policies.base import CachePolicy\nclass X(CachePolicy)\n")
    _clean(run_main("replay", trace, "--hw", "rtx3090", "--policy", "badpol:X", cwd=tmp_path), "--policy",
           "badpol.py:2", "syntax error")
    (tmp_path / "raising.py").write_text("raise RuntimeError('boom')\n")
    _clean(run_main("replay", trace, "--hw", "rtx3090", "--policy", "raising:X", cwd=tmp_path), "--policy",
           "RuntimeError: boom")


USER_POLICY = '''
from simmoe.policies.cache.lru import LRU


class Mine(LRU):
    name = "mine-from-cwd"
'''


def test_console_script_imports_a_policy_from_the_working_folder(simmoe_cli, trace, tmp_path):
    (tmp_path / "mypol.py").write_text(USER_POLICY)
    env_path = os.environ.pop("PYTHONPATH", None)
    try:
        res = simmoe_cli("replay", trace, "--hw", "rtx3090", "--policy", "mypol:Mine", "--opt",
                         "slots_per_layer=1", "--quiet", "--json", "r.json", cwd=tmp_path)
    finally:
        if env_path is not None:
            os.environ["PYTHONPATH"] = env_path
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "r.json").read_text())["policy"] == "mypol:Mine(slots_per_layer=1)"
