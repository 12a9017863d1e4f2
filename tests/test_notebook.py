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


def _declared(extra: str) -> set[str]:
    """Distribution names of camscope's core dependencies plus one extra (lower case)."""
    import re

    import tomllib

    project = tomllib.loads((NOTEBOOK.parents[1] / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = [*project["dependencies"], *project["optional-dependencies"][extra]]
    return {re.split(r"[<>=!~\[; ]", s, maxsplit=1)[0].lower() for s in specs}


def _requirement_closure(names: set[str]) -> set[str]:
    """``names`` and every distribution they require, transitively (as installed here)."""
    import importlib.metadata as md
    import re

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for r in reqs:
            if "extra ==" in r:
                continue
            todo.append(re.split(r"[<>=!~\[; (]", r, maxsplit=1)[0].lower().replace("_", "-"))
    return seen


def test_the_notebook_extra_brings_what_the_notebook_imports() -> None:
    """``pip install "camscope[notebook]"`` is enough to run the notebook (issue 19: it imported
    scikit-image, which the extra did not bring)."""
    import ast
    import importlib.metadata as md
    import sys

    nb = nbformat.read(NOTEBOOK, as_version=4)
    modules: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Import):
                modules.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules.add(node.module.split(".")[0])
    third_party = {m for m in modules if m not in sys.stdlib_module_names and m != "camscope"}
    assert "skimage" in third_party  # the default photos
    dists = md.packages_distributions()
    declared = _requirement_closure(_declared("notebook"))
    missing = {m: dists.get(m) for m in third_party if not {d.lower() for d in dists.get(m, [])} & declared}
    assert not missing, f"the notebook imports {missing}, which neither camscope nor camscope[notebook] installs"


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
