"""The CLI end to end: ``camscope explain`` on generated photos with a local state dict.

- resnet50 (weights=None, saved with torch.save) with Grad-CAM and Ablation-CAM (+eigen): the
  whole output tree, maps, CSV and manifest, predictions checked against the model itself, the
  WordNet-named photo's true class;
- the three default methods with ``--smooth eigen,aug`` on a cheap network (Score-CAM needs one
  full forward per channel and augmented view; the resnet18 version of this run is ``slow``);
- ``python -m camscope --help``, ``camscope methods``, and one-line usage errors (exit 2).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from camscope.cli import main
from camscope.methods.registry import METHODS, method_names

pytestmark = pytest.mark.usefixtures("one_thread")



def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _state_dict_file(tmp_path_factory, arch: str) -> Path:
    path = tmp_path_factory.mktemp("weights") / f"{arch}.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(weights=None)
    torch.save(model.state_dict(), path)
    return path


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _variants(methods: list[str], smooth: list[str]) -> list[str]:
    return [m for m in methods] + [f"{m}+{s}" for s in smooth for m in methods]


def _check_tree(out: Path, names: list[str], figures: bool, photos) -> tuple[dict, list[dict]]:
    """Every expected file exists (and nothing unexpected); maps are valid; CSV == manifest."""
    sizes = photos.sizes
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    with open(out / "predictions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert manifest["outputs"] == names
    assert set(manifest["images"]) == set(sizes)
    assert not manifest["failures"] and not (out / "failures.csv").exists()

    expected = {"manifest.json", "predictions.csv"}
    for name in names:
        for photo in sizes:
            expected |= {f"{name}/{_stem(photo)}.png", f"{name}/{_stem(photo)}.npy"}
    if figures:
        expected |= {f"figures/{_stem(photo)}.png" for photo in sizes}
    found = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert found == expected

    for rel, rec in manifest["images"].items():
        stem = _stem(rel)
        assert rec["status"] == "complete"
        assert rec["size"] == list(sizes[rel])
        assert rec["files"] == {n: [f"{n}/{stem}.png", f"{n}/{stem}.npy"] for n in names}
        assert rec["figure"] == (f"figures/{stem}.png" if figures else None)
        for name in names:
            sal = np.load(out / name / f"{stem}.npy")
            assert sal.dtype == np.float32 and sal.shape == (224, 224), (name, rel)
            assert np.isfinite(sal).all() and sal.min() >= 0.0, (name, rel)
            assert sal.max() == 1.0, (name, rel)
            with Image.open(out / name / f"{stem}.png") as png:
                assert png.size == sizes[rel]  # the overlay covers the whole photo
        probs = [t["prob"] for t in rec["top5"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5
        # The explained class is the top-1 (an exact float tie may order them differently).
        assert rec["targets"][0]["prob"] == rec["top5"][0]["prob"]
        if probs[0] > probs[1]:
            assert rec["targets"] == rec["top5"][:1]

    assert [r["file"] for r in rows] == sorted(manifest["images"])
    for row in rows:
        rec = manifest["images"][row["file"]]
        for i, t in enumerate(rec["top5"], start=1):
            assert int(row[f"top{i}_class"]) == t["class"]
            assert row[f"top{i}_name"] == t["name"]
            assert float(row[f"top{i}_prob"]) == pytest.approx(t["prob"], abs=1e-6)
        assert int(row["target_class"]) == rec["targets"][0]["class"]
        assert Path(row["source"]).name == row["file"]
        if row["file"] == photos.kite:
            assert int(row["true_class"]) == photos.kite_class == rec["true_class"] == 21
            assert row["true_name"] == "kite" == rec["true_name"]
            correct = rec["top5"][0]["class"] == 21
            assert rec["correct"] is correct and row["correct"] == ("yes" if correct else "no")
        else:
            assert row["true_class"] == row["true_name"] == row["correct"] == ""
            assert rec["true_class"] is None and rec["correct"] is None
    return manifest, rows


@pytest.fixture(scope="module")
def resnet50_run(tmp_path_factory, photos):
    weights = _state_dict_file(tmp_path_factory, "resnet50")
    out = tmp_path_factory.mktemp("run50") / "out"
    argv = [
        "explain", str(photos.dir), "--out", str(out), "--weights", str(weights),
        "--methods", "gradcam,ablationcam", "--smooth", "eigen", "--quiet",
    ]
    return argv, main(argv), out, weights


def test_resnet50_explain(resnet50_run, photos) -> None:
    argv, rc, out, weights = resnet50_run
    assert rc == 0
    names = _variants(["gradcam", "ablationcam"], ["eigen"])
    manifest, _ = _check_tree(out, names, figures=True, photos=photos)
    settings = manifest["settings"]
    assert settings["model"] == "resnet50" and settings["layer"] == "layer4.2"
    assert settings["methods"] == ["gradcam", "ablationcam"] and settings["smoothing"] == ["eigen"]
    assert settings["weights"] == f"file:{weights}"
    assert set(manifest["methods"]) == {"gradcam", "ablationcam"}


def test_resnet50_predictions_and_maps_match_the_model(resnet50_run, photos) -> None:
    """The CSV/manifest probabilities and a saved map are those of the model on that photo."""
    from camscope.engine import CamEngine
    from camscope.models import Preprocess

    _, _, out, weights = resnet50_run
    model = torchvision.models.resnet50(weights=None)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    pre = Preprocess()
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    names = sorted(photos.sizes)
    x = torch.stack([pre.to_tensor(Image.open(photos.dir / name).convert("RGB")) for name in names])
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)
    for i, name in enumerate(names):
        top = probs[i].topk(5)
        rec = manifest["images"][name]
        assert [t["class"] for t in rec["top5"]] == top.indices.tolist()
        np.testing.assert_allclose([t["prob"] for t in rec["top5"]], top.values.numpy(), atol=2e-6)
    kite = names.index(photos.kite)
    res = CamEngine(model, "layer4.2", methods=["gradcam"])(x[kite : kite + 1])
    saved = np.load(out / "gradcam" / f"{_stem(photos.kite)}.npy")
    np.testing.assert_allclose(saved, res.maps["gradcam"][0, 0].numpy(), atol=1e-5)


def test_rerun_resumes(resnet50_run, capsys) -> None:
    """Re-running the same command finds every image complete and rewrites nothing."""
    argv, _, out, _ = resnet50_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    rc, _, err = _run(argv, capsys)
    assert rc == 0 and "error" not in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")} == before


def _three_method_run(tmp_path_factory, photos, arch: str, extra: list[str]) -> None:
    weights = _state_dict_file(tmp_path_factory, arch)
    out = tmp_path_factory.mktemp(f"run-{arch}") / "out"
    argv = [
        "explain", str(photos.dir), "--out", str(out), "--weights", str(weights), "--model", arch,
        "--methods", "gradcam,ablationcam,scorecam", "--smooth", "eigen,aug", "--quiet", *extra,
    ]
    assert main(argv) == 0
    names = _variants(["gradcam", "ablationcam", "scorecam"], ["eigen+aug"])
    manifest, _ = _check_tree(out, names, figures="--no-figures" not in extra, photos=photos)
    assert manifest["settings"]["smoothing"] == ["eigen+aug"]


def test_three_methods_smoothed(tmp_path_factory, photos) -> None:
    """mobilenet_v3_small at its first block (16 channels): Score-CAM stays cheap."""
    _three_method_run(
        tmp_path_factory, photos, "mobilenet_v3_small", ["--layer", "features.0", "--no-figures"]
    )


@pytest.mark.slow
def test_three_methods_smoothed_resnet18(tmp_path_factory, photos) -> None:
    """The same on resnet18 at its default layer: 512 full forwards per view for Score-CAM."""
    _three_method_run(tmp_path_factory, photos, "resnet18", [])


def test_python_m_help() -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "camscope", "--help"], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: camscope")
    assert "explain" in proc.stdout and "methods" in proc.stdout


def test_methods_lists_the_registry(capsys) -> None:
    rc, out, err = _run(["methods"], capsys)
    assert rc == 0 and not err.strip()
    listed = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert listed == method_names()
    for name in method_names():
        line = next(line for line in out.splitlines() if line.split()[0] == name)
        assert METHODS[name].title in line


@pytest.mark.parametrize(
    "args,words",
    [
        (["--methods", "gradcam,nosuchcam"], ["unknown method", "'nosuchcam'", "gradcam"]),
        (["--model", "resnet5O"], ["unknown model", "'resnet5O'", "resnet50"]),
        (["--model", "resnet18", "--weights-tag", "none", "--layer", "layer9"], ["unknown layer", "'layer9'", "layer4"]),
        (["--model", "resnet18", "--weights-tag", "none", "--layer", "fc"], ["'fc'", "4-D"]),
        (["--smooth", "blur"], ["unknown smoothing", "'blur'"]),
    ],
    ids=["method", "model", "layer", "non-spatial-layer", "smoothing"],
)
def test_usage_errors(tmp_path, photos, capsys, args, words) -> None:
    out = tmp_path / "out"
    rc, stdout, err = _run(["explain", str(photos.dir), "--out", str(out), "--quiet", *args], capsys)
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("camscope: error: ")
    assert "Traceback" not in err + stdout
    for w in words:
        assert w in lines[0], lines[0]
    assert not out.exists()  # a usage error leaves no trace


def test_missing_input_is_a_usage_error(tmp_path, capsys) -> None:
    rc, _, err = _run(["explain", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and err.startswith("camscope: error: ") and len(err.strip().splitlines()) == 1
    assert "nothing-here" in err


@pytest.mark.parametrize("flag,expected", [("auto", None), ("on", True), ("off", False)])
def test_freeze_flag_reaches_the_engine(monkeypatch, tmp_path, photos, capsys, flag, expected) -> None:
    import camscope.engine as engine_mod
    import camscope.run.plan as plan_mod

    seen: list[object] = []

    class Recording(engine_mod.CamEngine):
        def __init__(self, *a, **kw) -> None:
            seen.append(kw["speed"].freeze)
            super().__init__(*a, **kw)

    monkeypatch.setattr(plan_mod, "CamEngine", Recording)
    argv = ["explain", str(photos.dir), "--out", str(tmp_path / "o"), "--quiet", "--no-figures",
            "--model", "resnet18", "--weights-tag", "none", "--methods", "gradcam", "--freeze", flag]
    rc, _, err = _run(argv, capsys)
    assert rc == 0, err
    assert seen == [expected]
