"""Batch runs that survive bad input: per-image isolation, odd inputs handled correctly,
argument errors caught before any work, memory that does not grow with the number of images.

The bad-input corpus (``tests/corpus.py``) is run through ``run_explain`` with a tiny CNN; the
CLI is exercised with ``mobilenet_v3_small`` (random weights: nothing is downloaded).
"""

from __future__ import annotations

import csv
import gc
import json
import logging
import os
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from camscope.cli import main
from camscope.io.atomic import is_temp_file
from camscope.io.rundir import FAILURES, MANIFEST, PREDICTIONS
from camscope.models import LoadedModel, Preprocess
from camscope.run import ExplainOptions, run_explain
from camscope.run import explainer as pipeline
from tests import corpus

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ["gradcam", "ablationcam"]
SIZE = (64, 64)
CLI_MODEL = ["--model", "mobilenet_v3_small", "--weights-tag", "none"]


def _loaded(model: nn.Module) -> LoadedModel:
    cats = [f"class{i}" for i in range(5)]
    return LoadedModel(model.eval(), "tiny", "random", cats, Preprocess("classic", SIZE))


def _opts(**kw: object) -> ExplainOptions:
    base: dict[str, object] = {"methods": METHODS, "quiet": True, "figures": False}
    base.update(kw)
    return ExplainOptions(**base)  # type: ignore[arg-type]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def errors(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.ERROR]


@pytest.fixture
def log_records() -> Iterator[_Records]:
    """Every record of the ``camscope`` loggers (which the CLI may have made non-propagating)."""
    handler = _Records()
    logger = logging.getLogger("camscope")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _failures(out: Path) -> dict[str, str]:
    with open(out / FAILURES, encoding="utf-8", newline="") as fh:
        return {row["source"]: row["reason"] for row in csv.DictReader(fh)}


def _manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST).read_text(encoding="utf-8"))


def _leftovers(out: Path) -> list[str]:
    return [
        os.path.join(d, n)
        for d, _, files in os.walk(out)
        for n in files
        if is_temp_file(n) or n == ".camscope-write-test"
    ]


def _check_map_files(out: Path, rec: dict) -> None:
    assert sorted(rec["files"]) == sorted(METHODS)
    for rel in (f for files in rec["files"].values() for f in files):
        path = out / rel
        if rel.endswith(".npy"):
            m = np.load(path)
            assert m.dtype == np.float32 and m.shape == SIZE, rel
            assert np.isfinite(m).all(), rel
            assert m.min() >= 0.0 and m.max() <= 1.0, rel
        else:
            with Image.open(path) as png:
                assert png.format == "PNG" and png.mode == "RGB", rel
                assert list(png.size) == rec["size"], rel  # small photos: overlay at full size


# --------------------------------------------------------------------------- bad-input corpus


def _add_references(root: Path) -> dict[str, str]:
    """Plain 8-bit RGB files holding the pixels that odd files must be read as.

    Returns {odd file: its reference}: the two must give the same maps, which checks that the
    pipeline handled the odd file correctly (composited, scaled, rotated), not just survived.
    """
    white = Image.new("RGBA", (8, 6), (255, 255, 255, 255))
    flat = Image.alpha_composite(white, Image.fromarray(corpus.rgba_array())).convert("RGB")
    flat.save(root / "ref_rgba.png")
    pal = corpus.palette_image()
    pal.info["transparency"] = corpus.PALETTE_ALPHA
    flat_pal = Image.alpha_composite(Image.new("RGBA", pal.size, (255,) * 4), pal.convert("RGBA"))
    flat_pal.convert("RGB").save(root / "ref_palette.png")
    gray8 = np.rint(corpus.gray16_array() / 257.0).astype(np.uint8)
    Image.fromarray(np.repeat(gray8[..., None], 3, axis=2)).save(root / "ref_gray16.png")
    with Image.open(root / "gray.png") as g:
        Image.fromarray(np.repeat(np.asarray(g)[..., None], 3, axis=2)).save(root / "ref_gray.png")
    with Image.open(root / "exif_rot6.jpg") as stored:  # orientation 6: shown turned 90° clockwise
        stored.convert("RGB").transpose(Image.Transpose.ROTATE_270).save(root / "ref_exif.png")
    return {
        "rgba.png": "ref_rgba.png",
        "palette_trns.png": "ref_palette.png",
        "gray16.png": "ref_gray16.png",
        "gray16.tif": "ref_gray16.png",
        "gray.png": "ref_gray.png",
        "exif_rot6.jpg": "ref_exif.png",
    }


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory, make_tiny_cnn, one_thread):
    root = tmp_path_factory.mktemp("hardening")
    src = root / "in"
    entries = corpus.make_bad_input_corpus(src)
    refs = _add_references(src)
    entries += [(src / ref, corpus.OK) for ref in sorted(set(refs.values()))]
    handler = _Records()
    logger = logging.getLogger("camscope")
    logger.addHandler(handler)
    try:
        # The folder, plus files a folder walk skips (no image suffix / hidden) named explicitly.
        inputs = [src, src / "notes.txt", src / ".hidden.png"]
        res = run_explain(inputs, root / "out", _opts(images_per_batch=4), loaded=_loaded(make_tiny_cnn(seed=3)))
    finally:
        logger.removeHandler(handler)
    return root / "out", entries, refs, res, handler


def test_corpus_good_files_give_complete_correct_outputs(corpus_run) -> None:
    out, entries, refs, res, _ = corpus_run
    manifest = _manifest(out)
    by_real = {os.path.realpath(rec["source"]): rec for rec in manifest["images"].values()}
    ok = [p for p, exp in entries if exp == corpus.OK]
    for path in ok:  # a symlink to another input is explained once, under the real file's name
        assert os.path.realpath(path) in by_real, f"{path.name}: no output"
    assert len(manifest["images"]) == len({os.path.realpath(p) for p in ok})
    assert sorted(res.completed) == sorted(manifest["images"])
    for rec in manifest["images"].values():
        assert rec["status"] == "complete"
        _check_map_files(out, rec)
    assert _leftovers(out) == []

    def maps(name: str) -> dict[str, np.ndarray]:
        rec = by_real[os.path.realpath(out.parent / "in" / name)]
        return {m: np.load(out / rec["files"][m][1]) for m in METHODS}

    for odd, ref in refs.items():  # same pixels as the plain reference file -> same maps
        for m in METHODS:
            np.testing.assert_allclose(maps(odd)[m], maps(ref)[m], atol=1e-4, err_msg=f"{odd} {m}")
    # EXIF orientation applied: stored 40x24, shown 24 wide and 40 tall.
    assert by_real[os.path.realpath(out.parent / "in" / "exif_rot6.jpg")]["size"] == [24, 40]
    assert by_real[os.path.realpath(out.parent / "in" / "tiny_1x1.png")]["size"] == [1, 1]
    # Names: non-ASCII / HTML-special kept verbatim, equal base names never collide.
    stem = corpus.UNICODE_NAME.rsplit(".", 1)[0]
    assert (out / "gradcam" / f"{stem}.npy").is_file()
    assert (out / "gradcam" / f"{stem}.png").is_file()
    cats = [np.load(out / "gradcam" / sub / "cat.npy") for sub in ("sub_a", "sub_b")]
    assert not np.array_equal(*cats)  # two different photos, two different outputs
    assert (out / "gradcam" / "a.jpg.npy").is_file() and (out / "gradcam" / "a.png.npy").is_file()
    with open(out / PREDICTIONS, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["file"] for r in rows) == sorted(manifest["images"])


def test_corpus_bad_files_each_give_one_reason(corpus_run) -> None:
    out, entries, _, res, handler = corpus_run
    bad = {str(p): exp for p, exp in entries if exp != corpus.OK and exp != corpus.IS_DIR}
    # A folder named "folder.jpg" is walked as a folder (it holds no images), not reported.
    assert not any(corpus.IS_DIR == exp for exp in bad.values())
    assert res.exit_code == 1
    failures = _failures(out)
    assert sorted(failures) == sorted(bad)
    assert sorted(p for p, _ in res.failed) == sorted(bad)
    errors = handler.errors()
    for path, expected in bad.items():
        reason = failures[path]
        assert expected in reason, (path, reason)
        assert "\n" not in reason
        assert errors.count(f"{path}: {reason}") == 1, path  # logged once, on one line
    assert "89478485" in failures[str(out.parent / "in" / "big_header.png")]  # the limit is named
    manifest = _manifest(out)
    assert {rec["source"] for rec in manifest["images"].values()}.isdisjoint(bad)
    assert {f["source"] for f in manifest["failures"].values()} == set(bad)
    assert not any(r.exc_info for r in handler.records)  # no traceback anywhere


def test_max_pixels_bounds_real_images(tmp_path: Path, make_tiny_cnn, log_records) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(corpus.smooth_noise(300, 400, seed=7)).save(src / "big.png")
    Image.fromarray(corpus.smooth_noise(30, 40, seed=8)).save(src / "small.png")
    res = run_explain([src], tmp_path / "out", _opts(max_pixels=100_000), loaded=_loaded(make_tiny_cnn()))
    assert res.completed == ["small.png"]
    reason = _failures(tmp_path / "out")[str(src / "big.png")]
    assert "400×300 = 120000 pixels, over the limit of 100000 pixels" in reason
    assert "decompression-bomb guard" in reason


# --------------------------------------------------------------------------- failures in the model


class _Trap(nn.Module):
    """Wraps a model; misbehaves for "bright" inputs (mean over the image above a threshold)."""

    def __init__(self, inner: nn.Module, mode: str) -> None:
        super().__init__()
        self.inner, self.mode = inner, mode

    def forward(self, x: Tensor) -> Tensor:
        y = self.inner(x)
        bright = x.mean(dim=(1, 2, 3)) > 1.0
        if self.mode == "nan":
            return torch.where(bright[:, None], torch.full_like(y, float("nan")), y)
        if self.mode == "inf" and bright.any():
            return y + torch.where(bright[:, None], float("inf"), 0.0)
        if bright.any():
            if self.mode == "cuda-oom":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 123456789012 bytes. Error code 12 (Cannot allocate memory): out of memory")
        return y


@pytest.fixture(scope="module")
def four_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """im0..im3; im2 is almost white (the "bright" one of `_Trap`)."""
    src = tmp_path_factory.mktemp("four")
    for i in range(4):
        arr = corpus.smooth_noise(20, 30, seed=10 + i) // 3
        if i == 2:
            arr = np.full_like(arr, 250)
        Image.fromarray(arr).save(src / f"im{i}.png")
    return src


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("nan", "not finite"),
        ("inf", "not finite"),
        ("cpu-oom", "out of memory while computing the maps"),
        ("cuda-oom", "out of memory while computing the maps"),
    ],
)
def test_model_failure_on_one_image_costs_that_image_only(
    tmp_path: Path, make_tiny_cnn, four_photos: Path, log_records: _Records, mode: str, reason: str
) -> None:
    # Three images per batch: the batch holding the culprit is retried image by image.
    model = _Trap(make_tiny_cnn(), mode)
    res = run_explain([four_photos], tmp_path, _opts(images_per_batch=3), loaded=_loaded(model))
    assert res.exit_code == 1
    assert sorted(res.completed) == ["im0.png", "im1.png", "im3.png"]
    culprit = str(four_photos / "im2.png")
    assert [p for p, _ in res.failed] == [culprit]
    assert reason in _failures(tmp_path)[culprit]
    line = [e for e in log_records.errors() if e.startswith(culprit)]
    assert len(line) == 1 and reason in line[0] and "\n" not in line[0]
    for rec in _manifest(tmp_path)["images"].values():
        _check_map_files(tmp_path, rec)


def test_out_of_memory_while_preparing_one_image(
    tmp_path: Path, make_tiny_cnn, four_photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Preprocess.to_tensor

    def to_tensor(self: Preprocess, image: Image.Image) -> Tensor:
        if np.asarray(image).mean() > 200:  # the huge photo of the batch
            raise MemoryError
        return real(self, image)

    monkeypatch.setattr(Preprocess, "to_tensor", to_tensor)
    res = run_explain([four_photos], tmp_path, _opts(), loaded=_loaded(make_tiny_cnn()))
    assert sorted(res.completed) == ["im0.png", "im1.png", "im3.png"]
    assert "out of memory while loading the image" in _failures(tmp_path)[str(four_photos / "im2.png")]


def test_unwritable_output_of_one_image_costs_that_image_only(
    tmp_path: Path, make_tiny_cnn, four_photos: Path
) -> None:
    (tmp_path / "gradcam" / "im1.npy").mkdir(parents=True)  # the .npy cannot replace a folder
    res = run_explain([four_photos], tmp_path, _opts(), loaded=_loaded(make_tiny_cnn()))
    assert sorted(res.completed) == ["im0.png", "im2.png", "im3.png"]
    assert "while writing the outputs" in _failures(tmp_path)[str(four_photos / "im1.png")]
    assert "im1.png" not in _manifest(tmp_path)["images"]
    assert _leftovers(tmp_path) == []


def test_fail_fast_stops_at_the_first_failure(
    tmp_path: Path, make_tiny_cnn, four_photos: Path, log_records: _Records
) -> None:
    model = _Trap(make_tiny_cnn(), "nan")
    res = run_explain([four_photos], tmp_path, _opts(images_per_batch=1, fail_fast=True), loaded=_loaded(model))
    assert res.exit_code == 1
    assert res.completed == ["im0.png", "im1.png"]  # im3 never started
    assert [p for p, _ in res.failed] == [str(four_photos / "im2.png")]
    assert sorted(_manifest(tmp_path)["images"]) == ["im0.png", "im1.png"]
    assert any("--fail-fast" in e and "1 images not processed" in e for e in log_records.errors())


# --------------------------------------------------------------------------- through the CLI


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("mixed")
    (src / "a_not_an_image.jpg").write_text("plain text", encoding="utf-8")
    Image.fromarray(corpus.smooth_noise(24, 32, seed=1)).save(src / "b_good.png")
    jpeg = src / "c_good.jpg"
    Image.fromarray(corpus.smooth_noise(48, 64, seed=2)).save(jpeg, quality=90)
    data = jpeg.read_bytes()
    (src / "d_truncated.jpg").write_bytes(data[: len(data) // 2])
    return src


def test_cli_reports_each_bad_image_on_one_line_and_exits_1(
    tmp_path: Path, mixed_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc = main(["explain", str(mixed_folder), "--out", str(out), *CLI_MODEL, "--methods", "gradcam",
               "--quiet", "--no-figures"])
    err = capsys.readouterr().err
    assert rc == 1
    bad = [f"{mixed_folder / 'a_not_an_image.jpg'}: cannot identify image file",
           f"{mixed_folder / 'd_truncated.jpg'}: truncated or corrupt image data"]
    lines = err.splitlines()
    for prefix in bad:
        assert sum(line.startswith(f"camscope: {prefix}") for line in lines) == 1, err
    assert "2 images explained, 0 already complete, 2 failed" in err
    assert "Traceback" not in err
    assert sorted(_failures(out)) == sorted(str(mixed_folder / n) for n in ("a_not_an_image.jpg", "d_truncated.jpg"))
    assert sorted(_manifest(out)["images"]) == ["b_good.png", "c_good.jpg"]


def test_cli_fail_fast(tmp_path: Path, mixed_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc = main(["explain", str(mixed_folder), "--out", str(out), *CLI_MODEL, "--methods", "gradcam",
               "--quiet", "--no-figures", "--fail-fast"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "stopped at the first failure (--fail-fast); 3 images not processed" in err
    assert list(_failures(out)) == [str(mixed_folder / "a_not_an_image.jpg")]
    assert _manifest(out)["images"] == {}


# --------------------------------------------------------------------------- argument errors


@pytest.fixture(scope="module")
def one_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("one")
    Image.fromarray(corpus.smooth_noise(24, 32, seed=3)).save(root / "photo.png")
    (root / "labels.txt").write_text("".join(f"name{i}\n" for i in range(1000)), encoding="utf-8")
    (root / "regular_file").write_text("I am a file", encoding="utf-8")
    return root


ARG_ERRORS = {
    "unknown model": (["--model", "resnet1800"], ["unknown model 'resnet1800'", "resnet18"]),
    "unknown weights tag": (["--weights-tag", "IMAGENET9"], ["--weights-tag 'IMAGENET9'", "IMAGENET1K_V1"]),
    "missing weights file": (["--weights", "{root}/nope.pth"], ["nope.pth: checkpoint file not found"]),
    "unknown layer": (
        ["--layer", "classifer"],
        ["unknown layer 'classifer'", "valid: features, avgpool, classifier", "did you mean 'classifier'"],
    ),
    "unknown sublayer": (["--layer", "classifier.7"], ["'classifier' (Sequential) has no child '7'", "valid: 0, 1, 2, 3"]),
    "layer not 4-D": (["--layer", "classifier"], ["not a 4-D (N, C, h, w) feature map", "'features.12'"]),
    "layer 1x1": (["--layer", "avgpool"], ["(1, 576, 1, 1)", "no spatial extent", "'features.12'"]),
    "class out of range": (["--class", "1000"], ["--class 1000 is out of range", "0..999"]),
    "negative class": (["--class", "-1"], ["--class -1 is out of range"]),
    "class name, no names": (["--class", "tabby"], ["the model has no class names", "0..999"]),
    "unknown class name": (["--class", "name12x", "--labels", "{root}/labels.txt"], ["not a class name", "did you mean"]),
    "unknown method": (["--methods", "gradcam,gradcamm"], ["unknown method 'gradcamm'", "gradcam, gradcampp, xgradcam"]),
    "unknown smoothing": (["--smooth", "blur"], ["unknown smoothing 'blur'", "eigen, aug"]),
    "unknown colormap": (["--colormap", "nope"], ["unknown colour map 'nope'"]),
    "top-k 0": (["--top-k", "0"], ["--top-k must be at least 1"]),
    "images-per-batch 0": (["--images-per-batch", "0"], ["--images-per-batch must be at least 1"]),
    "batch-size 0": (["--batch-size", "0"], ["batch size must be at least 1"]),
    "max-pixels 0": (["--max-pixels", "0"], ["--max-pixels must be at least 1"]),
    "out under a file": (["--out", "{root}/regular_file/out"], ["regular_file is not a directory"]),
    "out is a file": (["--out", "{root}/regular_file"], ["output path exists and is not a directory"]),
    "missing input": ([], ["missing.png: no such file or directory"]),
}


@pytest.mark.parametrize("case", list(ARG_ERRORS))
def test_argument_errors_exit_2_before_any_work(
    case: str,
    tmp_path: Path,
    one_photo: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from camscope.io import images

    decoded: list[object] = []
    monkeypatch.setattr(images, "load_image", lambda path, **kw: decoded.append(path))
    extra, expected = ARG_ERRORS[case]
    extra = [a.replace("{root}", str(one_photo)) for a in extra]
    out = tmp_path / "out" / "nested"  # does not exist yet: must still not exist afterwards
    photo = one_photo / ("missing.png" if case == "missing input" else "photo.png")
    argv = ["explain", str(photo), "--out", str(out), *CLI_MODEL,
            "--methods", "gradcam", "--quiet", *extra]
    before = sorted(os.listdir(one_photo))
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("camscope: error: "), err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not (tmp_path / "out").exists(), "something was written before the checks passed"
    assert decoded == [], "an image was loaded before the checks passed"
    assert sorted(os.listdir(one_photo)) == before
    assert (one_photo / "regular_file").read_text(encoding="utf-8") == "I am a file"


# --------------------------------------------------------------------------- memory stays flat


def test_memory_does_not_grow_with_the_number_of_images(
    tmp_path: Path, make_tiny_cnn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoded photos, input tensors and maps of finished batches are freed: memory is bounded
    by --images-per-batch, not by the number of images."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(12):
        Image.fromarray(corpus.smooth_noise(40, 40, seed=20 + i)).save(src / f"im{i:02d}.png")
    per_image: list[list[weakref.ref]] = []
    alive_at: dict[int, list[int]] = {}
    real = pipeline.write_image

    def watching(rundir, item, explained, *args: object, **kw: object):
        n = len(per_image)
        if n in (6, 10):  # which earlier images still have their data alive?
            gc.collect()
            alive_at[n] = [i for i, refs in enumerate(per_image) if any(r() is not None for r in refs)]
        per_image.append([weakref.ref(explained.photo), weakref.ref(explained.tensor),
                          *(weakref.ref(m) for m in explained.maps.values())])
        return real(rundir, item, explained, *args, **kw)

    monkeypatch.setattr(pipeline, "write_image", watching)
    res = run_explain([src], tmp_path / "out", _opts(images_per_batch=2), loaded=_loaded(make_tiny_cnn()))
    assert len(res.completed) == 12
    assert alive_at == {6: [], 10: []}  # (image 6 and 10 start a batch of two)
    gc.collect()
    assert all(r() is None for refs in per_image for r in refs)  # nothing kept in the result
