"""``camscope bench synthetic``: pointing game / energy-in-mask on generated scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from camscope.errors import UsageError
from camscope.studies.benchmark import (
    POINTING_TARGET,
    RATIO_TARGET,
    run_synthetic_benchmark,
    score_maps,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_score_maps_known_values() -> None:
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[:, 2:4, 2:4] = True  # 4 of 64 pixels
    maps = np.zeros((2, 8, 8))
    maps[0, 3, 3] = 1.0  # all energy inside, max inside
    maps[1, 0, 0] = 1.0
    maps[1, 2, 2] = 0.5  # max outside; a third of the energy inside
    hits, energy, area = score_maps(maps, torch.from_numpy(masks))
    assert hits.tolist() == [True, False]
    np.testing.assert_allclose(energy, [1.0, 1 / 3])
    np.testing.assert_allclose(area, [4 / 64, 4 / 64])


def test_constant_map_misses() -> None:
    masks = np.zeros((1, 8, 8), dtype=bool)
    masks[0, :4] = True
    hits, energy, _ = score_maps(np.full((1, 8, 8), 0.5), masks)
    assert not hits[0] and energy[0] == pytest.approx(0.5)


def test_gradcam_localises() -> None:
    table = run_synthetic_benchmark(n_scenes=60, methods=["gradcam"])
    (row,) = table.rows
    assert row.method == "gradcam" and row.n == 60
    assert row.pointing >= 0.9
    assert row.ratio >= RATIO_TARGET
    assert row.passed == (row.pointing >= POINTING_TARGET and row.ratio >= RATIO_TARGET)
    assert table.accuracy >= 0.9
    md = table.to_markdown()
    assert md.startswith("| method | pointing game |") and "| gradcam |" in md
    data = table.to_dict()
    assert data["pointing_tolerance_px"] == 0 and data["methods"][0]["method"] == "gradcam"


def test_training_seed_refused() -> None:
    with pytest.raises(UsageError, match="training seed"):
        run_synthetic_benchmark(n_scenes=4, seed=0)


def test_cli_bench_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from camscope.cli import main

    argv = ["bench", "synthetic", "--n-scenes", "40", "--methods", "gradcam", "--quiet",
            "--json", str(tmp_path / "b.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["method", "pointing", "game"]
    assert lines[2].startswith("gradcam ")
    assert "40 held-out scenes" in out
    assert json.loads((tmp_path / "b.json").read_text())["n_scenes"] == 40


def test_cli_sanity_needs_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from camscope.cli import main

    assert main(["sanity", "--out", str(tmp_path)]) == 2
    assert "give IMAGES" in capsys.readouterr().err
