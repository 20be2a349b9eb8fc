"""`simmoe trace` through the real console script: info, synth, import, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO, assert_clean_error

from simmoe.trace.format import read_trace, write_trace
from simmoe.trace.importers import export_jsonl
from simmoe.trace.synth import PRESETS, synth_trace


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    p = tmp_path_factory.mktemp("tr") / "good.npz"
    write_trace(synth_trace("mixtral-8x7b", requests=2, prompt_tokens=4, decode_tokens=30, seed=1,
                            **PRESETS["mixtral-like"]), p)
    return p


def test_info_prints_writes_json_and_plot(simmoe_cli, good, tmp_path):
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    res = simmoe_cli("trace", "info", good, "--json", out, "--plot", png)
    assert res.returncode == 0, res.stderr
    for word in ("requests   2", "rows 68 (prefill 8, decode 60)", "LRU", "reuse", "successor", "SYNTHETIC"):
        assert word in res.stdout, word
    s = json.loads(out.read_text())
    assert s["rows"] == 68 and [c["capacity"] for c in s["lru"]] == [1, 2, 4, 6]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_info_on_bundled_trace_matches_library(simmoe_cli, tmp_path):
    from simmoe.trace.stats import trace_stats

    path = REPO / "traces" / "mixtral-8x7b-synth.npz"
    res = simmoe_cli("trace", "info", path, "--json", tmp_path / "s.json")
    assert res.returncode == 0, res.stderr
    got = json.loads((tmp_path / "s.json").read_text())
    want = trace_stats(read_trace(path))
    assert [c["hits"] for c in got["lru"]] == [c["hits"] for c in want["lru"]]


def test_synth_preset_and_knobs(simmoe_cli, tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    res = simmoe_cli("trace", "synth", "--model", "mixtral-8x7b", "--preset", "mixtral-like", "--requests", "2",
                     "--prompt-tokens", "3", "--decode-tokens", "10", "--seed", "5", "--out", a)
    assert res.returncode == 0, res.stderr
    want = synth_trace("mixtral-8x7b", requests=2, prompt_tokens=3, decode_tokens=10, seed=5,
                       **PRESETS["mixtral-like"])
    assert np.array_equal(read_trace(a).experts, want.experts)
    res = simmoe_cli("trace", "synth", "--model", "mixtral-8x7b", "--preset", "mixtral-like", "--reuse", "0.9",
                     "--requests", "2", "--prompt-tokens", "3", "--decode-tokens", "10", "--seed", "5", "--out", b)
    assert res.returncode == 0, res.stderr
    assert read_trace(b).meta["generator_params"]["reuse"] == 0.9


def test_synth_like(simmoe_cli, good, tmp_path):
    out = tmp_path / "like.npz"
    res = simmoe_cli("trace", "synth", "--like", good, "--requests", "4", "--seed", "2", "--out", out)
    assert res.returncode == 0, res.stderr
    assert "max error" in res.stdout
    tr = read_trace(out)
    assert tr.num_requests == 4 and tr.meta["fitted_to"]["file"] == str(good)


def test_import_cli(simmoe_cli, good, tmp_path):
    src = read_trace(good)
    j = tmp_path / "r.jsonl"
    export_jsonl(src, j)
    out = tmp_path / "imp.npz"
    res = simmoe_cli("trace", "import", "--from", "jsonl", j, "--model", "mixtral-8x7b", "--out", out)
    assert res.returncode == 0, res.stderr
    assert np.array_equal(read_trace(out).experts, src.experts)
    res = simmoe_cli("trace", "import", "--from", "jsonl", j, "--model", "nope", "--out", out)
    assert_clean_error(res, "--model", "unknown model")
    j.write_text('{"request": 0, "layer": 0, "token": 0, "experts": [0, 12], "phase": 1}\n')
    res = simmoe_cli("trace", "import", "--from", "jsonl", j, "--model", "mixtral-8x7b", "--out", tmp_path / "x.npz")
    assert_clean_error(res, f"{j}:line 1", "experts", "12")
    assert not (tmp_path / "x.npz").exists()


def _arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _save(path, arrays):
    np.savez(path, **arrays)
    return path


def _bad_files(good, tmp_path):
    """(name, path, needle naming the field) for each kind of bad trace."""
    a = _arrays(good)
    out = []
    data = good.read_bytes()
    t = tmp_path / "truncated.npz"
    t.write_bytes(data[: len(data) // 2])
    out.append(("truncated", t, "truncated"))
    out.append(("missing", _save(tmp_path / "missing.npz", {k: v for k, v in a.items() if k != "phase"}), "phase"))
    out.append(("dtype", _save(tmp_path / "dtype.npz", {**a, "experts": a["experts"].astype(np.int64)}), "experts"))
    out.append(("shape", _save(tmp_path / "shape.npz", {**a, "request": a["request"][:-1]}), "request"))
    ex = a["experts"].copy()
    ex[3, 2, 1] = 8
    out.append(("range", _save(tmp_path / "range.npz", {**a, "experts": ex}), "expert id 8"))
    g = a["gates"].copy()
    g[1, 0, 0] = np.nan
    out.append(("nan", _save(tmp_path / "nan.npz", {**a, "gates": g}), "gates"))
    out.append(("meta", _save(tmp_path / "meta.npz", {**a, "meta": np.array("{not json")}), "meta"))
    meta = json.loads(str(a["meta"][()]))
    meta["model"] = "mixtral-9x9b"
    out.append(("model", _save(tmp_path / "model.npz", {**a, "meta": np.array(json.dumps(meta))}), "meta.model"))
    return out


BAD = ["truncated", "missing", "dtype", "shape", "range", "nan", "meta", "model"]


@pytest.mark.parametrize("kind", BAD)
def test_info_bad_input(simmoe_cli, good, tmp_path, kind):
    name, path, needle = next(x for x in _bad_files(good, tmp_path) if x[0] == kind)
    assert_clean_error(simmoe_cli("trace", "info", path), str(path), needle)


def test_bad_options(simmoe_cli, good, tmp_path):
    assert_clean_error(simmoe_cli("trace", "info", tmp_path / "nope.npz"), "nope.npz", "no such file")
    assert_clean_error(simmoe_cli("trace", "info", good, "--json", tmp_path / "no" / "x.json"), "--json")
    assert_clean_error(simmoe_cli("trace", "synth", "--like", good, "--reuse", "0.3", "--out", tmp_path / "x.npz"),
                       "--reuse", "--like")
    assert_clean_error(simmoe_cli("trace", "synth", "--model", "mixtral-8x7b", "--reuse", "2",
                                  "--out", tmp_path / "x.npz"), "reuse")
    assert_clean_error(simmoe_cli("trace", "synth", "--model", "nope", "--out", tmp_path / "x.npz"), "model")
    assert list(tmp_path.iterdir()) == []
