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


def test_seeds_spread(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--seeds N``: one model per training seed, each method's mean and min-max over them."""
    from camscope.cli import main
    from camscope.studies import synthetic as S
    from camscope.studies.benchmark import run_synthetic_seeds

    real = S.train_small_cnn
    trained: list[int] = []

    def quick(**kw):  # a cheap model per seed: this tests the aggregation, not the training
        trained.append(kw["seed"])
        return real(**{**kw, "n_train": 64, "epochs": 1})

    monkeypatch.setattr(S, "train_small_cnn", quick)
    monkeypatch.setenv("CAMSCOPE_SYNTHETIC_CACHE", str(tmp_path / "cache"))
    table = run_synthetic_seeds([1, 2], n_scenes=12, methods=["gradcam", "hirescam"])
    assert trained == [1, 2] and table.seeds == [1, 2]
    for i, row in enumerate(table.rows):
        per_seed = [t.rows[i].pointing for t in table.tables]
        assert row.pointing == pytest.approx((sum(per_seed) / 2, min(per_seed), max(per_seed)))
        ratios = [t.rows[i].ratio for t in table.tables]
        assert row.ratio == pytest.approx((sum(ratios) / 2, min(ratios), max(ratios)))
        assert row.passed == sum(t.rows[i].passed for t in table.tables)
    assert "seed 1" in table.tables[0].model and "seed 2" in table.tables[1].model
    with pytest.raises(UsageError, match="also a training seed"):
        run_synthetic_seeds([0, 2024], n_scenes=4)

    argv = ["bench", "synthetic", "--n-scenes", "12", "--methods", "gradcam", "--seeds", "2", "--quiet",
            "--markdown", "--json", str(tmp_path / "s.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("| method | pointing game: mean (min-max) |")
    assert "trained with seeds 0, 1" in out
    assert "Command: `camscope bench synthetic --n-scenes 12 --methods gradcam --seeds 2" in out
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["seeds"] == [0, 1] and len(data["per_seed"]) == 2
    assert set(data["methods"][0]["pointing"]) == {"mean", "min", "max"}
