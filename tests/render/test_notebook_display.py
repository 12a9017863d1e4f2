"""Results that show themselves (issue: notebooks): ``camscope.explain`` on what a notebook user
has at hand, the notebook grid, ``figure`` / ``overlay`` (the CLI's rendering), ``save`` (the
CLI's run folder, byte for byte) and ``camscope.report`` on a model given from Python."""

from __future__ import annotations

import filecmp
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import camscope
from camscope.cli import main
from camscope.errors import ImageLoadError, UsageError
from camscope.io.rundir import PYTHON_MODEL, RANDOM_WEIGHTS
from camscope.models import LoadedModel, Preprocess
from camscope.render.comparison import figure_title
from camscope.render.draw import overlay
from camscope.run import ExplainOptions, run_explain
from tests.conftest import photo_array

pytestmark = pytest.mark.usefixtures("one_thread")

PRE = Preprocess("classic", (32, 32))
CLASSES = ["ant", "bee", "<b>cat</b>", "dog", "eel"]


def _loaded(model, weights: str = RANDOM_WEIGHTS) -> LoadedModel:
    return LoadedModel(model, "tiny", weights, list(CLASSES), PRE)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nb") / "photos"
    root.mkdir()
    for i, (name, (h, w)) in enumerate({"b.png": (40, 52), "a.jpg": (36, 36), "<script>x.png": (30, 44)}.items()):
        Image.fromarray(photo_array(h, w, seed=i)).save(root / name)
    return root


def test_explain_takes_paths_folders_pil_and_arrays(tiny_cnn, folder: Path) -> None:
    arr = photo_array(30, 40, seed=7)
    pil = Image.fromarray(photo_array(20, 20, seed=8))
    res = camscope.explain(
        tiny_cnn, [arr, str(folder), pil, arr[..., 0]], layer="features", methods=["gradcam"], preprocess=PRE
    )
    assert res.names == ["image0.png", "<script>x.png", "a.jpg", "b.png", "image2.png", "image3.png"]
    assert res.sources[0] is None and res.sources[1] == str(folder / "<script>x.png")
    assert len(res) == 6 and res.maps["gradcam"].shape == (6, 1, 32, 32)
    # Every input is the model input of its photo: the array's equals the PIL image's of it.
    one = camscope.explain(tiny_cnn, Image.fromarray(arr), layer="features", methods=["gradcam"], preprocess=PRE)
    torch.testing.assert_close(res.maps["gradcam"][:1], one.maps["gradcam"])
    torch.testing.assert_close(res.inputs[0], PRE.to_tensor(Image.fromarray(arr)))
    named = camscope.explain(tiny_cnn, {"cat": arr, "pets": str(folder)}, layer="features", methods=["gradcam"], preprocess=PRE)
    assert named.names == ["cat", "pets/<script>x.png", "pets/a.jpg", "pets/b.png"]
    torch.testing.assert_close(named.maps["gradcam"][:1], one.maps["gradcam"])
    with pytest.raises(UsageError, match=r"image 0: an array must be \(H, W, 3\) or \(H, W\) uint8, not float32"):
        camscope.explain(tiny_cnn, arr.astype(np.float32), layer="features", methods=["gradcam"])
    with pytest.raises(UsageError, match="image 1: expected a path, a folder, a PIL image or a uint8 array, not int"):
        camscope.explain(tiny_cnn, [arr, 3], layer="features", methods=["gradcam"])
    bad = folder.parent / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match="bad.png: cannot identify image file"):
        camscope.explain(tiny_cnn, bad, layer="features", methods=["gradcam"])


def test_explain_in_chunks_equals_one_call(tiny_cnn_dead, folder: Path) -> None:
    kw = dict(layer="features", methods=["gradcam", "ablationcam", "scorecam"], smoothing="eigen,aug", preprocess=PRE, top_k=2)
    whole = camscope.explain(tiny_cnn_dead, folder, **kw)
    parts = camscope.explain(tiny_cnn_dead, folder, images_per_call=1, **kw)
    assert torch.equal(whole.targets, parts.targets) and list(whole.maps) == list(parts.maps)
    for name in whole.maps:
        torch.testing.assert_close(parts.maps[name], whole.maps[name], atol=1e-5, rtol=1e-4)


def test_notebook_grid(tiny_cnn, folder: Path) -> None:
    res = camscope.explain(_loaded(tiny_cnn), folder, layer="features", methods=["gradcam", "ablationcam"], smoothing="eigen")
    page = res._repr_html_()
    assert page.count("<img ") == 3 * (1 + 4)  # per photo: the photo and 4 overlays
    assert all(src.startswith("data:image/jpeg;base64,") for src in re.findall(r'<img src="([^"]*)"', page))
    assert "<script>" not in page and "&lt;script&gt;x.png" in page  # names are escaped
    assert "&lt;b&gt;cat&lt;/b&gt;" in page or all(int(t) != 2 for t in res.targets[:, 0])
    cls = int(res.targets[0, 0])
    assert f"{res.class_name(cls)} {float(res.probabilities[0, cls]):.1%}".replace("<", "&lt;").replace(">", "&gt;") in page
    assert "RANDOM WEIGHTS" in page and "Grad-CAM +eigen" in page
    assert len(page) < 60_000  # thumbnails, not full images
    trained = camscope.explain(_loaded(tiny_cnn, "file:w.pt"), folder, layer="features", methods=["gradcam"])
    assert "RANDOM WEIGHTS" not in trained._repr_html_()
    from camscope.render.notebook import result_html

    few = result_html(res, max_images=2)
    assert few.count("<tr>") == 1 + 2 and "1 more images" in few


def test_grid_of_an_engine_result_draws_on_the_inputs(tiny_cnn, images) -> None:
    """``CamEngine`` results have no photos: the grid de-normalises the model inputs."""
    norm = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = images(2, 32, seed=3)
    res = camscope.CamEngine(tiny_cnn, "features", methods=["gradcam"], normalization=norm)(x)
    assert res._repr_html_().count("<img ") == 2 * 2
    got = np.asarray(res.photo(1), dtype=np.float64) / 255.0
    want = (x[1] * 0.25 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, want, atol=0.5 / 255 + 1e-6)


def test_figure_and_overlay_are_the_clis(tiny_cnn, folder: Path) -> None:
    res = camscope.explain(_loaded(tiny_cnn), folder, layer="features", methods=["gradcam", "ablationcam"], smoothing="aug")
    fig = res.figure(2)
    axes_with_images = [ax for ax in fig.axes if ax.images]
    assert len(axes_with_images) == 1 + 2 * 2  # the photo, 2 methods x (plain, aug)
    cls = int(res.targets[2, 0])
    label = f"{res.class_name(cls)} {float(res.probabilities[2, cls]):.1%}"
    assert fig._suptitle.get_text() == figure_title(res.names[2], label, None, RANDOM_WEIGHTS)
    assert "RANDOM WEIGHTS" in fig._suptitle.get_text()
    assert [ax.get_title() for ax in axes_with_images][1] == f"Grad-CAM\n{label}"
    assert len([ax for ax in res.figure(0, methods=["ablationcam"]).axes if ax.images]) == 1 + 2
    with pytest.raises(ValueError, match="none of"):
        res.figure(0, methods=["scorecam"])
    ov = res.overlay(1, "ablationcam+aug", alpha=0.3, colormap="viridis")
    want = overlay(res.photo(1), res.maps["ablationcam+aug"][1, 0].numpy(), alpha=0.3, colormap="viridis")
    assert np.array_equal(np.asarray(ov), np.asarray(want))


def test_save_writes_the_clis_run_folder(tiny_cnn, folder: Path, tmp_path: Path) -> None:
    """From files, ``res.save`` writes what ``camscope explain`` writes: every map, overlay,
    figure and table byte for byte, and the same manifest but for the run's duration."""
    loaded = _loaded(tiny_cnn)
    kw = dict(layer="features", methods=["gradcam", "scorecam"], smoothing=["eigen"], top_k=2)
    res = camscope.explain(loaded, folder, **kw)
    saved = res.save(tmp_path / "saved")
    opts = ExplainOptions(methods=kw["methods"], smoothing=kw["smoothing"], top_k=2, layer="features", quiet=True)
    run_explain([folder], tmp_path / "cli", opts, loaded=loaded)
    cmp = filecmp.dircmp(saved, tmp_path / "cli")
    assert cmp.left_only == [] and cmp.right_only == [] and cmp.diff_files == ["manifest.json"]
    for sub in cmp.subdirs.values():
        assert sub.diff_files == [] and sub.left_only == [] and sub.right_only == []
    a = json.loads((saved / "manifest.json").read_text(encoding="utf-8"))
    b = json.loads((tmp_path / "cli" / "manifest.json").read_text(encoding="utf-8"))
    b.pop("seconds")
    assert a == b


def test_saved_python_model_is_reported(tiny_cnn, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Photos given in memory are kept in the folder; a model passed as an nn.Module cannot be
    rebuilt by name: the shell reports map-only metrics, Python every metric."""
    arrays = [photo_array(30, 30, seed=s) for s in (1, 2)]
    res = camscope.explain(tiny_cnn, arrays, layer="features", methods=["gradcam"], preprocess=PRE)
    out = res.save(tmp_path / "run")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["settings"]["model"] == "TinyCNN" and manifest["settings"]["weights"] == PYTHON_MODEL
    src = manifest["images"]["image0.png"]["source"]
    assert src == str((out / "inputs" / "image0.png").resolve())
    assert np.array_equal(np.asarray(Image.open(src)), arrays[0])
    capsys.readouterr()
    assert main(["report", str(out), "--quiet", "--steps", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("camscope: error: the run's model 'TinyCNN' was given as a Python object")
    assert "camscope.report(DIR, model=model)" in err[-1]
    assert main(["report", str(out), "--quiet", "--no-faithfulness"]) == 0
    ev, files = camscope.report(out, model=tiny_cnn, steps=3, road=False)
    assert ev.computed["faithfulness"] == 2 and not ev.problems and files.html.is_file()
    auc = ev.images["image0.png"]["targets"][0]["variants"]["gradcam"]["deletion_auc"]
    assert 0.0 <= auc <= 1.0
    with pytest.raises(UsageError, match="other settings"):
        camscope.explain(tiny_cnn, arrays, layer="features", methods=["ablationcam"], preprocess=PRE).save(out)


def test_cli_figure_title_says_random_weights(monkeypatch, tiny_cnn, folder: Path, tmp_path: Path) -> None:
    import camscope.run.outputs as outputs  # the figure writer of a run

    titles: list[str] = []
    real = outputs.comparison_figure

    def recording(photo, rows, **kw):
        titles.append(kw["suptitle"])
        return real(photo, rows, **kw)

    monkeypatch.setattr(outputs, "comparison_figure", recording)
    opts = ExplainOptions(methods=["gradcam"], layer="features", quiet=True)
    run_explain([folder], tmp_path / "r", opts, loaded=_loaded(tiny_cnn))
    run_explain([folder], tmp_path / "t", opts, loaded=_loaded(tiny_cnn, "file:w.pt"))
    assert len(titles) == 6
    assert all(t.endswith("RANDOM WEIGHTS: these maps say nothing about a trained model") for t in titles[:3])
    assert not any("RANDOM" in t for t in titles[3:])
