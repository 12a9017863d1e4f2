"""``examples/classic_study.ipynb`` runs, offline, in CI (nbclient), so it cannot rot.

Its parameter cell is replaced by a quick one (two photos, the fast methods, a few deletion
steps); the notebook falls back to random weights when none can be downloaded, as here."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("skimage")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "classic_study.ipynb"

QUICK = """PHOTOS = None
N_PHOTOS = 2
METHODS = ["gradcam", "ablationcam"]
SMOOTHING = "eigen"
STEPS = 3
ROAD = False
OUT = {out!r}
"""


def test_committed_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1


def test_notebook_runs(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = QUICK.format(out=str(tmp_path / "run"))
    client = nbclient.NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "resnet50 | random (no weights)" in text or "resnet50 | ResNet50_Weights.IMAGENET1K_V1" in text
    html = [o.data["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    grid = next(h for h in html if "camscope-result" in h)
    assert grid.count("<img ") == 2 * (1 + 4)  # 2 photos: photo + 2 methods x (plain, eigen)
    assert ("RANDOM WEIGHTS" in grid) == ("random (no weights)" in text)
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 2  # the comparison figure and the overlay
    table = next(o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    assert "Deletion AUC" in table and table.count("\n| ") == 4  # a row per variant
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "manifest.json").is_file()
