"""``--outputs``: each image writes only the kinds asked for; a resumed run that asks for more
completes the images that lack them; the report refuses a run without maps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from camscope.errors import UsageError
from camscope.io.rundir import MANIFEST, PREDICTIONS
from camscope.models import LoadedModel, Preprocess
from camscope.run import ExplainOptions, run_explain
from tests import corpus

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ["gradcam", "ablationcam"]


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("outputs")
    for i in range(3):
        Image.fromarray(corpus.smooth_noise(30, 40, seed=300 + i)).save(root / f"im{i}.png")
    return root


def _run(src: Path, out: Path, model, **kw: object):
    loaded = LoadedModel(model, "tiny", "random", None, Preprocess("classic", (48, 48)))
    return run_explain([src], out, ExplainOptions(methods=METHODS, quiet=True, **kw), loaded=loaded)  # type: ignore[arg-type]


def _files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def test_outputs_choose_what_each_image_writes(src: Path, tmp_path: Path, make_tiny_cnn) -> None:
    model = make_tiny_cnn(seed=7)
    full = tmp_path / "full"
    _run(src, full, model)
    maps = tmp_path / "maps"
    res = _run(src, maps, model, outputs=("maps",))
    assert sorted(res.completed) == ["im0.png", "im1.png", "im2.png"]
    stems = ["im0", "im1", "im2"]
    assert _files(maps) == sorted([MANIFEST, PREDICTIONS, *(f"{m}/{s}.npy" for m in METHODS for s in stems)])
    for f in _files(maps):  # the maps are the full run's
        if f.endswith(".npy"):
            assert (maps / f).read_bytes() == (full / f).read_bytes()
    manifest = json.loads((maps / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["output_kinds"] == ["maps"]
    assert manifest["images"]["im0.png"]["files"] == {m: [f"{m}/im0.npy"] for m in METHODS}
    assert manifest["images"]["im0.png"]["figures"] == []
    assert (maps / PREDICTIONS).read_bytes() == (full / PREDICTIONS).read_bytes()

    # Asking for more completes every image that lacks it; asking for less recomputes nothing.
    res = _run(src, maps, model, outputs="maps,overlays,figures")
    assert res.skipped == [] and len(res.completed) == 3
    assert _files(maps) == _files(full)
    res = _run(src, maps, model, outputs=("overlays",))
    assert res.skipped == ["im0.png", "im1.png", "im2.png"] and res.completed == []

    figures_off = ExplainOptions(figures=False)  # --no-figures is figures dropped from --outputs
    assert figures_off.outputs == ("maps", "overlays") and not figures_off.figures
    assert ExplainOptions(outputs="figures,maps").outputs == ("maps", "figures")


def test_report_refuses_a_run_without_maps(src: Path, tmp_path: Path, make_tiny_cnn) -> None:
    from camscope.reporting import evaluate_run

    out = tmp_path / "overlays"
    _run(src, out, make_tiny_cnn(seed=7), outputs=("overlays",))
    assert all(not f.endswith(".npy") for f in _files(out))
    with pytest.raises(UsageError, match=r"the run wrote no \.npy maps \(--outputs overlays\).*--outputs including maps$"):
        evaluate_run(out, faithfulness=False)
    assert not (out / "metrics").exists()
    assert len(list((out / "gradcam").iterdir())) == 3
