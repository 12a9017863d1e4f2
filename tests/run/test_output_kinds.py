"""The output-kind registry: an output kind defined here, in the test, with one registration
(no library file touched) is written by a run, listed in the manifest, checked on resume, and
never confused with the built-in kinds (a second PNG kind beside the overlays)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camscope.errors import UsageError
from camscope.io.rundir import MANIFEST, ImageRecord
from camscope.models import LoadedModel, Preprocess
from camscope.render.draw import colorize, png_bytes
from camscope.run import ExplainOptions, OutputKind, register_output_kind, run_explain
from camscope.run.outputs import OUTPUT_KINDS, OutputJob
from tests import corpus

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ["gradcam", "ablationcam"]


def _heatmap(job: OutputJob) -> bytes:
    """The map alone, coloured (no photo underneath)."""
    assert job.map is not None
    return png_bytes(Image.fromarray(colorize(job.map, job.colormap)))


def _caption(job: OutputJob) -> bytes:
    """One line per image and explained class: what the figure's title says."""
    return (job.title + "\n").encode()


@pytest.fixture
def example_kinds() -> Iterator[None]:
    before = dict(OUTPUT_KINDS)
    register_output_kind(OutputKind(
        "heatmaps", ".png", "variant", path=lambda variant, stem: f"heatmaps/{variant}/{stem}.png", write=_heatmap,
    ))
    register_output_kind(OutputKind("captions", ".txt", "image", path=lambda stem: f"captions/{stem}.txt", write=_caption))
    try:
        yield
    finally:
        OUTPUT_KINDS.clear()
        OUTPUT_KINDS.update(before)


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kinds")
    for i in range(2):
        Image.fromarray(corpus.smooth_noise(30, 40, seed=500 + i)).save(root / f"im{i}.png")
    return root


def _run(src: Path, out: Path, model, **kw: object):
    loaded = LoadedModel(model, "tiny", "random", None, Preprocess("classic", (48, 48)))
    return run_explain([src], out, ExplainOptions(methods=METHODS, quiet=True, **kw), loaded=loaded)  # type: ignore[arg-type]


def test_an_output_kind_defined_in_a_test_is_written_recorded_and_resumed(
    example_kinds: None, src: Path, tmp_path: Path, make_tiny_cnn
) -> None:
    model = make_tiny_cnn(seed=3)
    out = tmp_path / "run"
    res = _run(src, out, model, outputs="maps,heatmaps,captions")
    assert sorted(res.completed) == ["im0.png", "im1.png"]
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["output_kinds"] == ["maps", "heatmaps", "captions"]
    rec = manifest["images"]["im0.png"]
    assert rec["files"] == {m: [f"{m}/im0.npy"] for m in METHODS}  # the built-in record is unchanged
    assert rec["outputs"] == {"heatmaps": [f"heatmaps/{m}/im0.png" for m in METHODS], "captions": ["captions/im0.txt"]}
    for m in METHODS:  # the heatmap is the colour-mapped .npy map, pixel for pixel
        saliency = np.load(out / m / "im0.npy")
        got = np.asarray(Image.open(io.BytesIO((out / "heatmaps" / m / "im0.png").read_bytes())).convert("RGB"))
        np.testing.assert_array_equal(got, colorize(saliency, "jet"))
    caption = (out / "captions" / "im0.txt").read_text()
    assert caption.startswith("im0.png | explained: class ") and "RANDOM WEIGHTS" in caption
    parsed = ImageRecord.from_json(rec)
    assert parsed.kinds() == {"maps", "heatmaps", "captions"}  # a second PNG kind is not an overlay
    assert ImageRecord.from_json(parsed.to_json()) == parsed

    # Resuming: complete images are skipped; a deleted file of the new kind is rewritten.
    res = _run(src, out, model, outputs="maps,heatmaps,captions")
    assert sorted(res.skipped) == ["im0.png", "im1.png"] and res.completed == []
    (out / "heatmaps" / "gradcam" / "im1.png").unlink()
    res = _run(src, out, model, outputs="maps,heatmaps,captions")
    assert res.completed == ["im1.png"] and (out / "heatmaps" / "gradcam" / "im1.png").is_file()
    # Asking for the kind on a run that lacks it completes every image.
    plain = tmp_path / "plain"
    _run(src, plain, model, outputs="maps")
    res = _run(src, plain, model, outputs="maps,captions")
    assert sorted(res.completed) == ["im0.png", "im1.png"]


def test_a_run_without_extra_kinds_records_no_outputs_key(src: Path, tmp_path: Path, make_tiny_cnn) -> None:
    """Manifests of the built-in kinds stay as they were (byte for byte across versions)."""
    out = tmp_path / "run"
    _run(src, out, make_tiny_cnn(seed=3), outputs="maps,overlays")
    rec = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["images"]["im0.png"]
    assert "outputs" not in rec
    assert ImageRecord.from_json(rec).kinds() == {"maps", "overlays"}


def test_unknown_kind_names_the_registered_ones() -> None:
    with pytest.raises(UsageError, match=r"unknown --outputs 'heatmaps'; choose from: maps, overlays, figures"):
        ExplainOptions(outputs="maps,heatmaps")
