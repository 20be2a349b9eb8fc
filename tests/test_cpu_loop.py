"""The CPU calibration loop's machinery (the full run is `python -m simmoe.calibrate.cpu_loop`)."""

from __future__ import annotations

import pytest
from conftest import REPO

torch = pytest.importorskip("torch")


def test_the_loop_runs_repeats_and_reports_medians_and_spread(tmp_path):
    from simmoe.calibrate import cpu_loop
    from simmoe.trace.format import read_trace

    trace = read_trace(REPO / "traces" / "tinymoe-stdlib.npz")
    df, steps = cpu_loop.run_loop(trace, REPO / "docs" / "validation" / "cpu-profile.yaml", repeats=2,
                                  batches=(1,), max_requests=1)
    assert len(df) == len(cpu_loop.configs(trace.spec.num_experts)) == 7
    assert df["counts_match"].all()
    assert (df["measured_min_ms"] <= df["measured_median_ms"]).all() and (df["spread"] >= 0).all()
    text = cpu_loop.report(df, steps, "cpu-profile.yaml", "tinymoe-stdlib.npz", 2, "test")
    assert "mean absolute error" in text and text.count("| 1 | `") == 7


def test_calibrate_takes_a_traces_model(simmoe_cli, tmp_path):
    res = simmoe_cli("calibrate", "--device", "cpu", "--as-device", "--model", str(REPO / "traces" /
                     "tinymoe-stdlib.npz"), "--quick", "--threads", "1", "--max-tokens", "4",
                     "--out", str(tmp_path / "cpu.yaml"))
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "cpu.yaml").read_text()
    assert "128x256xswiglu:fp32" in text and "executes_on_host: true" in text
