"""The notebooks in notebooks/ run top to bottom without an error and draw their figures; they are kept with
their outputs stripped (clear the outputs before committing a notebook you ran)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
# notebook -> (modules it needs beyond the base install, the fewest figures it must draw)
EXPECTED = {
    "01-quickstart.ipynb": ((), 4),
    "02-policy-research.ipynb": ((), 2),
    "03-capacity-planning.ipynb": ((), 2),
    "04-calibration.ipynb": (("torch",), 3),
    "05-ssd-tier.ipynb": ((), 3),
    "06-multi-gpu.ipynb": ((), 2),
}


def _on_disk() -> list[str]:
    return sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


def test_every_notebook_is_executed_here():
    assert _on_disk() == sorted(EXPECTED)


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory, monkeypatch_module):
    """A `python3` kernelspec that runs this interpreter (where simmoe is installed), ahead of any other."""
    pytest.importorskip("ipykernel")
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (simmoe tests)", "language": "python"}))
    monkeypatch_module.setenv("JUPYTER_PATH", str(root))
    monkeypatch_module.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return root


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs(name, kernel_env):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    needs, min_figures = EXPECTED[name]
    for mod in needs:
        pytest.importorskip(mod)
    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the cell on any error
    print(f"{name}: executed in {time.perf_counter() - t0:.1f} s")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = sum("image/png" in o.get("data", {}) for o in outputs)
    assert figures >= min_figures, f"{name}: {figures} figures drawn, expected at least {min_figures}"
    # A figure that was not displayed shows up as its text repr only.
    texts = [o["data"]["text/plain"] for o in outputs if "text/plain" in o.get("data", {})
             and "image/png" not in o["data"]]
    assert not [t for t in texts if t.startswith(("<Axes", "<Figure", "<matplotlib"))]


@pytest.mark.parametrize("name", _on_disk())
def test_notebook_is_stripped(name):
    """What is in notebooks/ is what gets committed: no outputs, no execution counts (CI executes them)."""
    nbformat = pytest.importorskip("nbformat")
    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"{name} cell {i} has outputs: clear them before committing"
        assert cell.execution_count is None, f"{name} cell {i} has an execution count"
