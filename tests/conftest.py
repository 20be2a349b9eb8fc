"""Shared test fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def _simmoe_exe() -> list[str]:
    exe = shutil.which("simmoe", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "simmoe.cli.main"]


@pytest.fixture
def simmoe_cli():
    """Runs the real `simmoe` console script in a subprocess: simmoe_cli(*args, cwd=None) -> CliResult."""

    def run(*args: str, cwd: str | Path | None = None, timeout: float = 300) -> CliResult:
        env = dict(os.environ, PYTHONHASHSEED="0", MPLBACKEND="Agg")
        p = subprocess.run([*_simmoe_exe(), *map(str, args)], capture_output=True, text=True,
                           cwd=cwd, env=env, timeout=timeout)
        return CliResult(p.returncode, p.stdout, p.stderr)

    return run


def run_main(*args: str, cwd: str | Path | None = None) -> CliResult:
    """Runs `simmoe ARGS` in this process through simmoe.cli.main.main (fast: for many generated cases).

    An exception that escapes main() comes back as its traceback on stderr with status 1, as the console
    script would show it."""
    import contextlib
    import io
    import traceback

    from simmoe.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse: --help, or an error it printed
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 - reported like the interpreter would
            traceback.print_exc()
            rc = 1
    return CliResult(rc, out.getvalue(), err.getvalue())


@pytest.fixture
def simmoe_main():
    """simmoe_main(*args, cwd=None) -> CliResult: the CLI in this process (see run_main)."""
    return run_main


def assert_clean_error(res: CliResult, *needles: str) -> None:
    """Bad input: exit 2, one line on stderr naming the file/field, no traceback."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def make_trace(experts, request=None, phase=None, model: str = "mixtral-8x7b", **kw):
    """A validated in-memory trace from nested lists/arrays of expert ids [N, L, K]."""
    import numpy as np

    from simmoe.trace.format import Trace, make_meta, validate

    ex = np.asarray(experts, dtype=np.int16)
    n = ex.shape[0]
    req = np.zeros(n, np.int32) if request is None else np.asarray(request, np.int32)
    ph = np.ones(n, np.int8) if phase is None else np.asarray(phase, np.int8)
    tr = Trace(ex, req, ph, make_meta(model=model, source="test"), **kw)
    validate(tr)
    return tr


def random_trace(rows: int, layers: int, experts: int, k: int, requests: int = 1, seed: int = 0,
                 model: str | None = None, prefill: int = 0):
    """Uniformly random routing, `requests` equal-length requests with `prefill` prefill rows each."""
    import numpy as np

    from simmoe.models.spec import ModelSpec

    rng = np.random.default_rng(seed)
    ex = np.argsort(rng.random((rows, layers, experts)), axis=2)[:, :, :k].astype(np.int16)
    req = np.sort(rng.integers(0, requests, rows)).astype(np.int32) if requests > 1 else np.zeros(rows, np.int32)
    # re-number so ids are 0..R-1 and contiguous
    _, req = np.unique(req, return_inverse=True)
    ph = np.ones(rows, np.int8)
    if prefill:
        starts = np.flatnonzero(np.r_[True, req[1:] != req[:-1]])
        for s in starts:
            ph[s:s + prefill] = 0
    kw = {}
    if model is None:
        spec = ModelSpec(name=f"toy-{layers}x{experts}", num_layers=layers, moe_layers=tuple(range(layers)),
                         num_experts=experts, top_k=k, d_model=1024, expert_d_ff=2048, num_heads=8,
                         num_kv_heads=8, head_dim=128, vocab_size=32000)
        from simmoe.trace.format import Trace, make_meta, validate

        tr = Trace(ex, req.astype(np.int32), ph, make_meta(model_spec=spec, source="test"))
        validate(tr)
        return tr
    return make_trace(ex, req, ph, model=model, **kw)


def plan_run(trace, pset, hw: str = "a100-80gb-sxm", order: str = "appearance", lookup: str = "at-use", **cfg):
    """Drive the access planner over a whole run, as the engine and the executor do (no timing). Returns the
    planner and one record per (step, MoE layer): (step index, layer, actions, CPU experts, prefetches)."""
    from simmoe.engine.config import ReplayConfig
    from simmoe.engine.planner import AccessPlanner
    from simmoe.engine.scenario import prepare
    from simmoe.hw.profile import load_profile

    sc = prepare(trace, load_profile(hw), pset, ReplayConfig(**cfg))
    planner = AccessPlanner(sc, order=order, lookup=lookup)
    out = []
    for i, step in enumerate(sc.steps):
        planner.begin_step(step, i)
        for m in range(sc.num_layers):
            ops, cpu, pre = planner.plan_layer(m)
            out.append((i, m, ops, cpu, pre))
    return planner, out
