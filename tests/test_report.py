"""`--report DIR` (replay, sweep) and simmoe.report: one self-contained page, written atomically."""

from __future__ import annotations

import base64
import html
import re

import pandas as pd
import pytest
from conftest import assert_clean_error, run_main
from matplotlib.figure import Figure

from simmoe.report import Section, write_report
from simmoe.trace.format import write_trace
from simmoe.trace.synth import PRESETS, synth_trace


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("t") / "my trace.npz"  # a space: the command is shell-quoted
    write_trace(synth_trace("mixtral-8x7b", requests=2, prompt_tokens=8, decode_tokens=24, seed=3,
                            **PRESETS["mixtral-like"]), p)
    return p


def assert_self_contained(page: str) -> None:
    assert 'src="http' not in page and "src='http" not in page
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r"url\(\s*['\"]?http", page)
    imgs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert imgs and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)


def test_write_report_library(tmp_path):
    fig = Figure()
    fig.add_subplot().plot([1, 2], [3, 4])
    prov = {"simmoe_version": "9.9", "trace_sha256": "ab" * 32, "settings": {"batch": 2}}
    path = write_report(tmp_path / "rep", "A <title>", "simmoe replay 'a b.npz' --hw x", prov,
                        [Section("Table", table=pd.DataFrame({"x": [1, 2]})), Section("Figure", figure=fig),
                         Section("Text", text="1 < 2", pre="pre & text")])
    page = path.read_text()
    assert path == tmp_path / "rep" / "index.html"
    assert_self_contained(page)
    assert html.escape("simmoe replay 'a b.npz' --hw x") in page
    assert "ab" * 32 in page and "9.9" in page and html.escape('{"batch": 2}') in page
    assert "A &lt;title&gt;" in page and "1 &lt; 2" in page and "pre &amp; text" in page


def test_write_report_is_atomic(tmp_path):
    class Broken(Figure):
        def savefig(self, *a, **k):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_report(tmp_path / "rep", "t", None, {}, [Section("ok", text="x"), Section("bad", figure=Broken())])
    assert list(tmp_path.iterdir()) == []  # not even the folder
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "index.html").write_text("previous")
    with pytest.raises(RuntimeError):
        write_report(tmp_path / "old", "t", None, {}, [Section("bad", figure=Broken())])
    assert (tmp_path / "old" / "index.html").read_text() == "previous"


def test_replay_report(trace_file, tmp_path):
    d = tmp_path / "rep"
    res = run_main("replay", trace_file, "--hw", "rtx3090", "--opt", "slots_per_layer=1", "--report", d, "--quiet")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in d.iterdir()) == ["index.html"]
    page = (d / "index.html").read_text()
    assert_self_contained(page)
    assert len(re.findall("data:image/png;base64", page)) == 3  # per step, the panels, per layer
    cmd = f"simmoe replay '{trace_file}' --hw rtx3090 --opt slots_per_layer=1 --report {d} --quiet"
    assert html.escape(cmd) in page
    from simmoe.provenance import file_sha256

    assert file_sha256(trace_file) in page and "hw_sha256" in page and "runtime_sha256" in page
    for title in ("Summary", "Latency per step", "Hit rate per MoE layer", "Requests", "Provenance"):
        assert f"<h2>{title}</h2>" in page
    assert "TPOT" in page and "hit rate" in page


def test_sweep_report(trace_file, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"trace: '{trace_file}'\nbase: {{max_requests: 1}}\ngrid:\n  hw: [rtx3090]\n"
                    "  policy: [lru, lfu]\n  policy_options.slots_per_layer: [1, 2]\n")
    d = tmp_path / "srep"
    res = run_main("sweep", spec, "--out", tmp_path / "r.parquet", "--workers", "1", "--report", d, "--quiet")
    assert res.returncode == 0, res.stderr
    page = (d / "index.html").read_text()
    assert_self_contained(page)
    assert html.escape(f"simmoe sweep {spec} --out {tmp_path / 'r.parquet'}") in page
    assert "spec_sha256" in page and "<h2>Results</h2>" in page
    assert page.count("<tr>") >= 4 + 1  # 4 configurations and the header (plus the provenance rows)


def test_report_bad_dir(trace_file, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert_clean_error(run_main("replay", trace_file, "--hw", "rtx3090", "--report", f), "--report", "is a file")
    assert_clean_error(run_main("replay", trace_file, "--hw", "rtx3090", "--report", tmp_path / "a" / "b"),
                       "--report", "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_sweep_report_needs_a_run(trace_file, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"trace: '{trace_file}'\ngrid:\n  hw: [rtx3090]\n")
    assert_clean_error(run_main("sweep", spec, "--out", tmp_path / "r.csv", "--dry-run", "--report", tmp_path / "d"),
                       "--report", "--dry-run")
    assert not (tmp_path / "d").exists()
