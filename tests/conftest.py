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


def assert_clean_error(res: CliResult, *needles: str) -> None:
    """Bad input: exit 2, one line on stderr naming the file/field, no traceback."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
