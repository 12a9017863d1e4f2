"""``camscope explain --task ...`` end to end (issue 21), offline, random weights, small inputs:

- segment (torchvision LRASPP, ``--class``), detect (a tiny Faster R-CNN by import path:
  ``--score-threshold``/``--top-k``, ``--box``, no detection at all), embed (a tiny open_clip CLIP:
  text and image concepts), zeroshot (``--labels`` prompts), multilabel and contrast;
- file names, manifest (targets, region masks), predictions per target, resume;
- each saved map equals ``camscope.explain``'s for the same target;
- ``camscope report``: localisation against the target's own box / mask, and ``--masks``;
- bad inputs: one line, exit 2, nothing written.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import camscope
from camscope.cli import main
from camscope.models import ModelSpec
from camscope.targets import Contrast, Task

pytestmark = pytest.mark.usefixtures("one_thread")

RCNN = "tests.cli.task_models:tiny_rcnn"
CLIP = "tests.cli.task_models:tiny_clip"
MULTI = "tests.cli.task_models:tiny_multilabel"
DETECT = ["--model", RCNN, "--task", "detect", "--layer", "backbone.5", "--input-size", "64",
          "--mean", "0,0,0", "--std", "1,1,1"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two 128x96 photos of noise with a bright square (different places)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i, (y, x) in enumerate([(20, 30), (40, 70)]):
        arr = (rng.random((96, 128, 3)) * 120).astype(np.uint8)
        arr[y : y + 30, x : x + 40] = 230
        Image.fromarray(arr).save(root / f"p{i}.png")
    return root


def _run(argv: list[str], capsys) -> tuple[int, str]:
    rc = main([*argv, "--quiet"])
    return rc, capsys.readouterr().err


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def _rows(out: Path) -> list[dict]:
    with open(out / "predictions.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("camscope: error:")]
    assert len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------- segment


def _predicted_class(loaded, files: list[Path]) -> int:
    """A class (not the background) the random segmenter predicts in every one of ``files``."""
    with torch.no_grad():
        x = torch.stack([loaded.preprocess.to_tensor(Image.open(f).convert("RGB")) for f in files])
        pred = loaded.model(x)["out"].argmax(dim=1)
    counts = torch.stack([torch.bincount(p.flatten(), minlength=21) for p in pred]).min(dim=0).values
    counts[0] = 0
    assert int(counts.max()) > 0
    return int(counts.argmax())


def test_segment_class_files_manifest_and_map(photos: Path, tmp_path: Path, capsys) -> None:
    files = [photos / "p0.png", photos / "p1.png"]
    loaded = ModelSpec("lraspp_mobilenet_v3_large", weights_tag="none", input_size=64).load()
    c = _predicted_class(loaded, files)
    name = loaded.categories[c]
    slug = name.lower().replace(" ", "-")
    out = tmp_path / "seg"
    argv = ["explain", str(photos), "--model", "lraspp_mobilenet_v3_large", "--weights-tag", "none",
            "--input-size", "64", "--task", "segment", "--class", name, "--methods", "gradcam", "--out", str(out)]
    rc, err = _run(argv, capsys)
    assert rc == 0, err
    # one map per target, named after it; the region mask written beside
    assert sorted(p.name for p in (out / "gradcam").iterdir()) == [
        f"p0__{slug}_01.npy", f"p0__{slug}_01.png", f"p1__{slug}_01.npy", f"p1__{slug}_01.png"]
    assert (out / "figures" / f"p0__{slug}_01.png").is_file()
    m = _manifest(out)
    assert m["settings"]["task"] == "segment" and m["settings"]["target_class"] == name
    t = m["images"]["p0.png"]["explained"][0]
    assert (t["kind"], t["name"], t["class"], t["region"], t["mask"]) == (
        "segment", name, c, "predicted", f"regions/p0__{slug}_01.png")
    # the recorded mask is the model's own predicted mask of the class, and each map is explain's
    res = camscope.explain(loaded, [str(f) for f in files], methods=["gradcam"], task=Task("segment", classes=[c]),
                           images_per_call=1)
    for i in (0, 1):  # each photo of the run's batch of two has its own map (not the second one blank)
        saved = np.load(out / "gradcam" / f"p{i}__{slug}_01.npy")
        np.testing.assert_allclose(saved, res.maps["gradcam"][i, 0].numpy(), atol=1e-5)
        assert saved.max() == pytest.approx(1.0) and saved.min() == pytest.approx(0.0)
    mask = np.asarray(Image.open(out / t["mask"])) > 0
    np.testing.assert_array_equal(mask, res.explained[0][0].mask.numpy() > 0)
    assert t["pixels"] == int(mask.sum()) > 0
    with torch.no_grad():  # prob: the class's mean softmax probability over the region
        x = loaded.preprocess.to_tensor(Image.open(files[0]).convert("RGB"))[None]
        p = torch.softmax(loaded.model(x)["out"], dim=1)[0, c].numpy()
    rows = _rows(out)
    assert float(rows[0]["prob"]) == pytest.approx(float(p[mask].mean()), abs=1e-5)
    assert [(r["file"], r["rank"], r["kind"], r["class"], r["name"], r["mask"]) for r in rows] == [
        ("p0.png", "1", "segment", str(c), name, f"regions/p0__{slug}_01.png"),
        ("p1.png", "1", "segment", str(c), name, f"regions/p1__{slug}_01.png")]
    # the same command resumes: nothing recomputed
    rc, err = _run(argv, capsys)
    assert rc == 0 and "0 images explained, 2 already complete" in err


# --------------------------------------------------------------------------- detect


def test_detect_threshold_top_k_names_boxes_and_maps(photos: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "det"
    rc, err = _run(["explain", str(photos), *DETECT, "--score-threshold", "0.3", "--top-k", "3",
                    "--methods", "gradcam,ablationcam", "--out", str(out)], capsys)
    assert rc == 0, err
    m = _manifest(out)
    assert m["settings"]["task"] == "detect" and m["settings"]["task_options"] == {"score_threshold": 0.3}
    assert m["settings"]["top_k"] == 3
    rec = m["images"]["p0.png"]
    assert [t["stem"] for t in rec["explained"]] == ["p0__class-2_01", "p0__class-2_02", "p0__class-2_03"]
    assert rec["files"]["gradcam"] == [f"gradcam/p0__class-2_0{i}.{s}" for i in (1, 2, 3) for s in ("png", "npy")]
    confidences = [t["confidence"] for t in rec["explained"]]
    assert confidences == sorted(confidences, reverse=True) and min(confidences) >= 0.3
    # the Python API explains the same detections with the same maps
    loaded = ModelSpec(RCNN, input_size=64, mean="0,0,0", std="1,1,1").load()
    res = camscope.explain(loaded, [str(photos / "p0.png"), str(photos / "p1.png")], layer="backbone.5",
                           methods=["gradcam", "ablationcam"], task=Task("detect", score_threshold=0.3, top_k=3))
    for j, t in enumerate(rec["explained"]):
        assert t["box"] == [round(float(v), 2) for v in res.explained[0][j].box]
        for method in ("gradcam", "ablationcam"):
            saved = np.load(out / method / f"{t['stem']}.npy")
            np.testing.assert_array_equal(saved, res.maps[method][0, j].numpy())
            assert saved.max() == pytest.approx(1.0)  # a real map, not a blank one
    # boxes in photo pixels (128x96 photo, 64x64 input): the map-frame box scaled back
    t = rec["explained"][0]
    assert t["box_photo"] == pytest.approx([t["box"][0] * 2, t["box"][1] * 1.5, t["box"][2] * 2, t["box"][3] * 1.5], abs=0.02)
    rows = [r for r in _rows(out) if r["file"] == "p0.png"]
    assert [(r["rank"], r["name"], float(r["prob"])) for r in rows] == [
        (str(j + 1), "class 2", pytest.approx(c, abs=1e-6)) for j, c in enumerate(confidences)]
    assert float(rows[0]["box_x0"]) == pytest.approx(t["box_photo"][0])

    # report: localisation against each detection's own box, said so
    rc, err = _run(["report", str(out)], capsys)
    assert rc == 0, err
    record = json.loads((out / "metrics" / "p0.png.json").read_text())
    entry = record["targets"][0]
    assert entry["region"]["source"] == "the model's own detection box"
    sal = np.load(out / "gradcam" / "p0__class-2_01.npy").astype(np.float64)
    x0, y0, x1, y1 = t["box"]
    ys, xs = np.mgrid[0:64, 0:64] + 0.5
    inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    assert entry["variants"]["gradcam"]["energy_pg"] == pytest.approx(sal[inside].sum() / sal.sum(), abs=1e-6)
    assert entry["variants"]["gradcam"]["pointing_game"] == bool(inside[np.unravel_index(sal.argmax(), sal.shape)])
    assert "deletion_auc" not in entry["variants"]["gradcam"]  # no class logits to measure faithfulness with
    assert "the model&#39;s own output as the region, not ground truth" in (out / "report.html").read_text(encoding="utf-8")


def test_detect_given_boxes(photos: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "boxes"
    rc, err = _run(["explain", str(photos / "p0.png"), *DETECT, "--box", "30,20,70,50:2", "--box", "0,0,128,96",
                    "--methods", "gradcam", "--out", str(out)], capsys)
    assert rc == 0, err
    rec = _manifest(out)["images"]["p0.png"]
    assert [(t["stem"], t["class"]) for t in rec["explained"]] == [("p0__class-2_01", 2), ("p0__any_02", -1)]
    assert rec["explained"][0]["box"] == [15.0, 13.33, 35.0, 33.33]  # 30,20,70,50 in the 64x64 input
    assert rec["explained"][0]["box_photo"] == pytest.approx([30, 20, 70, 50], abs=0.01)
    assert _manifest(out)["settings"]["task_options"] == {"boxes": ["30,20,70,50:2", "0,0,128,96"]}


def test_detector_finding_nothing_records_the_photo_explained(photos: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "none"
    argv = ["explain", str(photos), *DETECT, "--score-threshold", "0.99", "--methods", "gradcam", "--out", str(out)]
    rc, err = _run(argv, capsys)
    assert rc == 0, err
    m = _manifest(out)
    assert m["failures"] == {} and not (out / "failures.csv").exists()
    assert [m["images"][p]["explained"] for p in ("p0.png", "p1.png")] == [[], []]
    assert [(r["file"], r["rank"], r["name"]) for r in _rows(out)] == [("p0.png", "", "(no target)"), ("p1.png", "", "(no target)")]
    rc, err = _run(argv, capsys)
    assert rc == 0 and "2 already complete" in err
    rc, err = _run(["report", str(out)], capsys)
    assert rc == 0, err


# --------------------------------------------------------------------------- CLIP: embed and zero-shot


def test_embed_text_and_image_concepts(photos: Path, tmp_path: Path, capsys) -> None:
    from camscope.models.clip import ClipImageEncoder, concept_embedding

    base = ["explain", str(photos), "--model", CLIP, "--input-size", "32", "--methods", "gradcam"]
    out = tmp_path / "text"
    rc, err = _run([*base, "--task", "embed", "--concept", "a dog", "--out", str(out)], capsys)
    assert rc == 0, err
    rec = _manifest(out)["images"]["p1.png"]
    assert rec["explained"][0]["concept"] == "a dog" and rec["explained"][0]["stem"] == "p1__a-dog_01"
    loaded = ModelSpec(CLIP, input_size=32).load()
    enc = ClipImageEncoder(loaded.model)
    loaded.model = enc
    task = Task("embed", concept=concept_embedding("a dog", enc), concept_name="a dog")
    res = camscope.explain(loaded, [str(photos / "p0.png"), str(photos / "p1.png")], methods=["gradcam"], task=task)
    saved = np.load(out / "gradcam" / "p1__a-dog_01.npy")
    np.testing.assert_array_equal(saved, res.maps["gradcam"][1, 0].numpy())
    assert saved.max() == pytest.approx(1.0)
    with torch.no_grad():
        x = torch.stack([loaded.preprocess.to_tensor(Image.open(photos / f"p{i}.png").convert("RGB")) for i in (0, 1)])
        cos = torch.nn.functional.cosine_similarity(enc(x), task.concept[None], dim=1)
    assert [float(r["score"]) for r in _rows(out)] == pytest.approx(cos.tolist(), abs=1e-5)

    out = tmp_path / "image"  # a reference photo as the concept: its own embedding, cosine 1 with itself
    rc, err = _run([*base, "--concept", str(photos / "p1.png"), "--out", str(out)], capsys)
    assert rc == 0, err
    rows = _rows(out)
    assert [r["stem"] for r in rows] == ["p0__p1_01", "p1__p1_01"] and float(rows[1]["score"]) == pytest.approx(1.0, abs=1e-5)


def test_zeroshot_prompts_from_labels(photos: Path, tmp_path: Path, capsys) -> None:
    from camscope.models.clip import ClipZeroShot

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog\na cat\na red car\n", encoding="utf-8")
    out = tmp_path / "zs"
    rc, err = _run(["explain", str(photos / "p0.png"), "--model", CLIP, "--input-size", "32", "--task", "zeroshot",
                    "--labels", str(prompts), "--top-k", "2", "--methods", "gradcam", "--out", str(out)], capsys)
    assert rc == 0, err
    loaded = ModelSpec(CLIP, input_size=32).load()
    zs = ClipZeroShot(loaded.model, ["a dog", "a cat", "a red car"])
    with torch.no_grad():
        logits = zs(loaded.preprocess.to_tensor(Image.open(photos / "p0.png").convert("RGB"))[None])[0]
    order = logits.argsort(descending=True)[:2].tolist()
    names = ["a dog", "a cat", "a red car"]
    rec = _manifest(out)["images"]["p0.png"]
    assert [t["name"] for t in rec["explained"]] == [names[c] for c in order]
    assert [t["stem"] for t in rec["explained"]] == [f"p0__{names[c].replace(' ', '-')}_0{j + 1}" for j, c in enumerate(order)]
    assert rec["top5"][0]["name"] == names[order[0]]
    assert _manifest(out)["settings"]["task_options"] == {"prompts": names}


# --------------------------------------------------------------------------- multi-label and contrast


def test_multilabel_scores_are_sigmoids(photos: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ml"
    rc, err = _run(["explain", str(photos / "p0.png"), "--model", MULTI, "--input-size", "32", "--task", "multilabel",
                    "--score-threshold", "0", "--top-k", "3", "--methods", "gradcam", "--out", str(out)], capsys)
    assert rc == 0, err
    loaded = ModelSpec(MULTI, input_size=32).load()
    with torch.no_grad():
        p = torch.sigmoid(loaded.model(loaded.preprocess.to_tensor(Image.open(photos / "p0.png").convert("RGB"))[None]))[0]
    top = p.topk(3)
    rows = _rows(out)
    assert [int(r["class"]) for r in rows] == top.indices.tolist()
    assert [float(r["score"]) for r in rows] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert [r["stem"] for r in rows] == [f"p0__class-{c}_0{j + 1}" for j, c in enumerate(top.indices.tolist())]


def test_contrast_map_equals_the_api(photos: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "contrast"
    rc, err = _run(["explain", str(photos / "p0.png"), "--model", MULTI, "--input-size", "32", "--class", "0",
                    "--contrast", "3", "--methods", "gradcam", "--out", str(out)], capsys)
    assert rc == 0, err
    m = _manifest(out)
    assert m["settings"]["task"] == "contrast" and m["settings"]["task_options"] == {"contrast": 3}
    t = m["images"]["p0.png"]["explained"][0]
    assert (t["kind"], t["name"], t["class"], t["contrast"], t["stem"]) == ("contrast", "class 0-vs-class 3", 0, 3, "p0__class-0-vs-class-3_01")
    loaded = ModelSpec(MULTI, input_size=32).load()
    res = camscope.explain(loaded, str(photos / "p0.png"), methods=["gradcam"], targets=[[Contrast(0, 3)]])
    np.testing.assert_array_equal(np.load(out / "gradcam" / f"{t['stem']}.npy"), res.maps["gradcam"][0, 0].numpy())


# --------------------------------------------------------------------------- report against ground-truth masks


def test_report_masks_ground_truth_and_own_region(photos: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "seg"
    rc, err = _run(["explain", str(photos), "--model", "lraspp_mobilenet_v3_large", "--weights-tag", "none",
                    "--input-size", "64", "--methods", "gradcam", "--out", str(out)], capsys)
    assert rc == 0, err
    masks = tmp_path / "masks"
    masks.mkdir()
    gt = np.zeros((96, 128), np.uint8)
    gt[20:50, 30:70] = 255
    Image.fromarray(gt).save(masks / "p0.png")
    rc, err = _run(["report", str(out), "--masks", str(masks)], capsys)
    assert rc == 1 and "p1.png: no ground-truth mask for it in --masks" in err  # p1 has none: said, measured without
    entry = json.loads((out / "metrics" / "p0.png.json").read_text())["targets"][0]
    assert entry["region"]["source"] == "the ground-truth mask"
    # the mask in the 64x64 map frame: rows 20..50 of 96 -> 13.3..33.3, columns 30..70 of 128 -> 15..35
    region = np.zeros((64, 64), bool)
    ys, xs = np.mgrid[0:64, 0:64]
    region[((ys + 0.5) * 1.5 >= 20) & ((ys + 0.5) * 1.5 < 50) & ((xs + 0.5) * 2 >= 30) & ((xs + 0.5) * 2 < 70)] = True
    assert entry["region"]["fraction"] == pytest.approx(region.mean(), abs=2 / 64)
    sal = np.load(out / "gradcam" / f"{_manifest(out)['images']['p0.png']['explained'][0]['stem']}.npy").astype(np.float64)
    assert entry["variants"]["gradcam"]["energy_pg"] == pytest.approx(sal[region].sum() / sal.sum(), abs=0.03)
    own = entry["own_region"]
    assert own["source"] == "the model's own predicted mask"
    pred = np.asarray(Image.open(out / _manifest(out)["images"]["p0.png"]["explained"][0]["mask"])) > 0
    assert own["variants"]["gradcam"]["energy_pg"] == pytest.approx(sal[pred].sum() / sal.sum(), abs=1e-6)

    Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks / "p1.png")
    rc, err = _run(["report", str(out), "--masks", str(masks)], capsys)
    assert rc == 1 and f"p1.png: mask {masks / 'p1.png'} is 10x10, the photo 128x96" in err
    rc, err = _run(["report", str(out), "--masks", str(tmp_path / "nowhere")], capsys)
    assert rc == 2 and _error_line(err).startswith(f"camscope: error: --masks {tmp_path / 'nowhere'}: not a folder")


# --------------------------------------------------------------------------- bad input: one line, nothing written


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--model", RCNN, "--task", "detect", "--input-size", "64", "--layer", "backbone.5", "--box", "0,0,200,50"],
         "--box 0,0,200,50: outside photo p0.png (128x96 pixels)"),
        (["--model", RCNN, "--task", "detect", "--input-size", "64", "--layer", "backbone.5", "--box", "5,5,2,9"],
         "--box '5,5,2,9' is empty: give x0,y0,x1,y1 with x0 < x1 and y0 < y1"),
        (["--model", "lraspp_mobilenet_v3_large", "--weights-tag", "none", "--input-size", "64", "--class", "unicorn"],
         "--class 'unicorn' is not a class name of this model"),
        (["--model", "lraspp_mobilenet_v3_large", "--weights-tag", "none", "--input-size", "64", "--class", "21"],
         "--class 21 is out of range: the model has 21 classes (0..20)"),
        (["--model", "lraspp_mobilenet_v3_large", "--weights-tag", "none", "--input-size", "64", "--box", "0,0,9,9"],
         "--box applies to --task detect only; this run's task is segment"),
        (["--model", MULTI, "--input-size", "32", "--task", "embed", "--concept", "a dog"],
         "--concept 'a dog' is text: embedding it needs a CLIP model (open_clip or transformers CLIPModel), and "
         f"{MULTI} is not one; give a reference image instead"),
        (["--model", MULTI, "--input-size", "32", "--task", "zeroshot"],
         f"--task zeroshot needs a CLIP model (open_clip or transformers CLIPModel); {MULTI} is not one"),
        (["--model", MULTI, "--input-size", "32", "--task", "segment"],
         f"--task segment needs per-pixel logits (N, C, H, W); {MULTI}'s output is a tensor of shape (1, 5)"),
        (["--model", "lraspp_mobilenet_v3_large", "--weights-tag", "none", "--input-size", "64", "--task", "classify"],
         "--task classify does not fit a segmenter (lraspp_mobilenet_v3_large's output is a OrderedDict with keys out); "
         "use --task segment"),
        (["--model", MULTI, "--input-size", "32", "--score-threshold", "0.5"],
         "--score-threshold applies to --task detect and --task multilabel only; this run's task is classify"),
        (["--model", RCNN, "--task", "detect", "--input-size", "64", "--layer", "backbone.5", "--concept", "a dog"],
         "--concept applies to --task embed only; this run's task is detect"),
        (["--model", RCNN, "--task", "detect", "--input-size", "64", "--layer", "backbone.5", "--class", "1"],
         "--class applies to class and segment tasks; for --task detect give --box x0,y0,x1,y1:label"),
        (["--model", CLIP, "--input-size", "32"],
         f"{CLIP} is a CLIP model: explain --task embed --concept TEXT|IMAGE, or --task zeroshot --labels PROMPTS.txt "
         "(one prompt per line)"),
        (["--model", CLIP, "--input-size", "32", "--concept", "missing.jpg"], "--concept missing.jpg: no such image file"),
    ],
    ids=["box-outside", "box-empty", "class-name", "class-index", "box-not-detect", "text-concept-no-clip",
         "zeroshot-no-clip", "segment-classifier", "classify-segmenter", "threshold-classify", "concept-detect",
         "class-detect", "clip-no-task", "concept-missing-file"],
)
def test_bad_task_input_is_one_line(photos: Path, tmp_path: Path, capsys, extra: list[str], expected: str) -> None:
    out = tmp_path / "out"
    rc, err = _run(["explain", str(photos / "p0.png"), *extra, "--methods", "gradcam", "--out", str(out)], capsys)
    assert rc == 2
    assert _error_line(err) == f"camscope: error: {expected}"
    assert not out.exists()


# --------------------------------------------------------------------------- Python: save, figures, notebook


def test_result_save_writes_the_cli_folder_and_draws_boxes(photos: Path, tmp_path: Path, capsys) -> None:
    files = [str(photos / "p0.png"), str(photos / "p1.png")]
    cli = tmp_path / "cli"
    rc, err = _run(["explain", *files, *DETECT, "--score-threshold", "0.3", "--top-k", "2", "--methods", "gradcam",
                    "--out", str(cli), "--outputs", "maps"], capsys)
    assert rc == 0, err
    loaded = ModelSpec(RCNN, input_size=64, mean="0,0,0", std="1,1,1").load()
    res = camscope.explain(loaded, files, layer="backbone.5", methods=["gradcam"],
                           task=Task("detect", score_threshold=0.3, top_k=2))
    saved = res.save(tmp_path / "api")
    listing = sorted(p.name for p in (cli / "gradcam").iterdir())
    assert listing == sorted(p.name for p in (saved / "gradcam").iterdir() if p.suffix == ".npy")
    for name in listing:
        assert (cli / "gradcam" / name).read_bytes() == (saved / "gradcam" / name).read_bytes()
    a, b = _manifest(cli)["images"]["p0.png"], _manifest(saved)["images"]["p0.png"]
    assert a["explained"] == b["explained"]

    # the overlay draws the detection's box: white pixels along its edges in the 128x96 photo
    img = np.asarray(res.overlay(0, "gradcam", rank=0))
    x0, y0, x1, y1 = (round(v) for v in a["explained"][0]["box_photo"])
    assert (img[y0 + 2 : y1 - 2, x0] == 255).all() and (img[y0, x0 + 2 : x1 - 2] == 255).all()
    html = res._repr_html_()
    assert "class 2 " in html and "(+1 more target)" in html
    assert res.figure(1) is not None

    none = camscope.explain(loaded, files, layer="backbone.5", methods=["gradcam"], task=Task("detect", score_threshold=0.99))
    assert "no target" in none._repr_html_()


def test_open_clip_source_names_its_problems_in_one_line() -> None:
    from camscope.errors import UsageError

    pytest.importorskip("open_clip")
    with pytest.raises(UsageError, match=r"^--model open_clip/NoSuchNet: open_clip has no architecture 'NoSuchNet'"):
        ModelSpec("open_clip/NoSuchNet", weights_tag="none").load()
    with pytest.raises(UsageError, match=r"^unknown --weights-tag 'nope' for open_clip/ViT-B-32; choose from: openai, "):
        ModelSpec("open_clip/ViT-B-32", weights_tag="nope").load()


def test_explain_report_with_masks(photos: Path, tmp_path: Path, capsys) -> None:
    """``explain --report --masks DIR``: the masks are checked before the run and measured after."""
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in (0, 1):
        gt = np.zeros((96, 128), np.uint8)
        gt[:48] = 255  # the top half
        Image.fromarray(gt).save(masks / f"p{i}.png")
    out = tmp_path / "run"
    rc, err = _run(["explain", str(photos), *DETECT, "--score-threshold", "0.3", "--top-k", "1", "--methods", "gradcam",
                    "--report", "--masks", str(masks), "--out", str(out)], capsys)
    assert rc == 0, err
    entry = json.loads((out / "metrics" / "p1.png.json").read_text())["targets"][0]
    assert entry["region"] == {"source": "the ground-truth mask", "fraction": 0.5}
    assert entry["own_region"]["source"] == "the model's own detection box"
    sal = np.load(out / "gradcam" / f"{_manifest(out)['images']['p1.png']['explained'][0]['stem']}.npy").astype(np.float64)
    assert entry["variants"]["gradcam"]["energy_pg"] == pytest.approx(sal[:32].sum() / sal.sum(), abs=1e-6)
    rc, err = _run(["explain", str(photos), *DETECT, "--methods", "gradcam", "--report", "--masks", str(tmp_path / "no"),
                    "--out", str(tmp_path / "never")], capsys)
    assert rc == 2 and "--masks" in _error_line(err) and not (tmp_path / "never").exists()
