"""Sweeps under faults: killed at random points (between records, in the middle of a journal line, while the
table is written) and resumed, the final table equals an uninterrupted run's; a torn journal line; a sweep
whose every configuration failed; a smaller spec against an existing results file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import assert_clean_error, random_trace, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simmoe.sweeps import expand, load_results, run_sweep
from simmoe.sweeps import store as store_mod
from simmoe.sweeps.store import ResultStore, partial_path
from simmoe.trace.format import write_trace

VOLATILE = ["run_s", "wall_s"]  # the simulator's own run times differ between runs


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the sweep catches it."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    trace = folder / "toy.npz"
    write_trace(random_trace(rows=24, layers=2, experts=8, k=2, requests=2, seed=4, prefill=2), trace)
    spec = {"trace": str(trace), "base": {"hw": "rtx3090", "max_requests": 1},
            "grid": {"policy": ["lru", "lfu"], "policy_options.slots_per_layer": [2, 4], "batch": [1, 0]}}
    configs = expand(spec, "s", folder).configs  # 8, of which 4 fail (batch 0) and are recorded
    ref = folder / "ref.parquet"
    run_sweep(configs, ref, workers=1, progress=False)
    return configs, _table(ref)


def _table(out: Path) -> pd.DataFrame:
    return load_results(out).drop(columns=VOLATILE, errors="ignore")


def _run_with_fault(configs, out: Path, kill_at: int, mode: str, cut: float, monkeypatch) -> None:
    """One sweep run killed at its `kill_at`-th record (mode: before it is written, in the middle of its
    journal line, after it) or while finishing (before or after the table is written)."""
    add, write_table = ResultStore.add, store_mod.write_table
    calls = {"n": 0}

    def faulty_add(self, rec):
        calls["n"] += 1
        if calls["n"] != kill_at or mode not in ("before", "mid", "after"):
            return add(self, rec)
        if mode == "mid":
            line = json.dumps(rec, default=store_mod._jsonable) + "\n"
            f = self._journal()
            f.write(line[: max(1, min(len(line) - 2, int(cut * len(line))))])
            f.flush()
        elif mode == "after":
            add(self, rec)
        raise Killed

    def faulty_write_table(df, path):
        if mode == "table-before":
            raise Killed
        write_table(df, path)
        if mode == "table-after":  # the table is written, the journal not yet removed
            raise Killed

    monkeypatch.setattr(ResultStore, "add", faulty_add)
    monkeypatch.setattr(store_mod, "write_table", faulty_write_table)
    try:
        run_sweep(configs, out, workers=1, progress=False)
    except Killed:
        pass
    finally:
        monkeypatch.undo()


MODES = ("before", "mid", "after", "table-before", "table-after")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(faults=st.lists(st.tuples(st.integers(1, 8), st.sampled_from(MODES), st.floats(0.0, 1.0, allow_subnormal=False)),
                       min_size=1, max_size=3))
def test_killed_and_resumed_equals_uninterrupted(setup, tmp_path_factory, monkeypatch, faults):
    configs, ref = setup
    out = tmp_path_factory.mktemp("run") / "r.parquet"
    for kill_at, mode, cut in faults:
        before = set(ResultStore(out).done_keys())
        todo = len(configs) - len(before)
        _run_with_fault(configs, out, kill_at, mode, cut, monkeypatch)
        # a kill loses at most the record being written: every finished one is read back on resume
        if mode.startswith("table") or kill_at > todo:
            kept = todo
        else:
            kept = kill_at - (0 if mode == "after" else 1)
        assert len(ResultStore(out).done_keys() - before) == kept, (kill_at, mode)
    done = ResultStore(out).done_keys()
    rep = run_sweep(configs, out, workers=1, progress=False)
    assert (rep.skipped, rep.ran) == (len(done), len(configs) - len(done))  # recorded work is not redone
    assert rep.crashes == 0
    pd.testing.assert_frame_equal(_table(out), ref)
    assert not partial_path(out).exists()


def test_a_torn_journal_line_is_followed_by_a_new_line(setup, tmp_path):
    configs, ref = setup
    out = tmp_path / "r.parquet"
    journal = partial_path(out)
    whole = json.dumps({"key": configs[0].key, "status": "crash", "error": "x"})
    journal.write_text(whole + "\n" + whole[:17])  # killed in the middle of the second line
    store = ResultStore(out)
    store.add({"key": "k2", "status": "ok"})
    store.close()
    lines = journal.read_text().split("\n")
    assert lines[1] == whole[:17] and json.loads(lines[2]) == {"key": "k2", "status": "ok"}
    assert set(ResultStore(out).records) == {configs[0].key, "k2"}


def test_every_configuration_failed_is_not_success(setup, tmp_path):
    configs, _ = setup
    spec = tmp_path / "s.yaml"
    spec.write_text(f"trace: {configs[0].resolved['trace']}\nbase: {{hw: rtx3090}}\ngrid: {{batch: [0, -1]}}\n")
    res = run_main("sweep", spec, "--out", tmp_path / "r.csv", "--workers", "1")
    assert_clean_error(res, str(spec), "every configuration failed (2", "the first: batch: must be >= 1")  # the spec key
    assert (load_results(tmp_path / "r.csv")["status"] == "error").all()  # recorded all the same


def test_a_smaller_spec_says_the_table_holds_more(setup, tmp_path):
    configs, _ = setup
    trace = configs[0].resolved["trace"]
    spec = tmp_path / "s.yaml"
    out = tmp_path / "r.csv"
    spec.write_text(f"trace: {trace}\nbase: {{hw: rtx3090, max_requests: 1}}\ngrid: {{batch: [1, 2]}}\n")
    assert run_main("sweep", spec, "--out", out, "--workers", "1", "--quiet").returncode == 0
    spec.write_text(f"trace: {trace}\nbase: {{hw: rtx3090, max_requests: 1}}\ngrid: {{batch: [1]}}\n")
    res = run_main("sweep", spec, "--out", out, "--workers", "1")
    assert res.returncode == 0
    assert "also holds 1 configuration from earlier runs that this spec does not list" in res.stderr
    assert len(load_results(out)) == 2


def test_sigkill_of_the_real_process_then_resume(setup, tmp_path):
    configs, ref = setup
    spec = tmp_path / "s.yaml"
    trace = configs[0].resolved["trace"]
    spec.write_text(f"trace: {trace}\nbase: {{hw: rtx3090, max_requests: 1}}\n"
                    "grid: {policy: [lru, lfu], policy_options.slots_per_layer: [2, 4], batch: [1, 0]}\n")
    out = tmp_path / "r.parquet"
    cmd = [sys.executable, "-m", "simmoe.cli.main", "sweep", str(spec), "--out", str(out), "--workers", "1",
           "--quiet"]
    env = dict(os.environ, MPLBACKEND="Agg")
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = partial_path(out)
    deadline = time.monotonic() + 60
    while p.poll() is None and time.monotonic() < deadline:
        if journal.exists() and journal.stat().st_size > 0:
            break
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    pd.testing.assert_frame_equal(_table(out), ref)
