"""Map-only properties: concentration, degeneracy, rank agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from camscope.errors import UsageError
from camscope.metrics import concentration, is_degenerate, pairwise_agreement, spearman, top_iou


def test_concentration_uniform_and_delta() -> None:
    uni = concentration(np.full((20, 20), 0.3))
    assert uni["top5_energy"] == pytest.approx(0.05)
    assert uni["top10_energy"] == pytest.approx(0.10)
    assert uni["entropy"] == pytest.approx(1.0)
    delta = np.zeros((20, 20))
    delta[7, 3] = 1.0
    d = concentration(torch.as_tensor(delta))
    assert d["top5_energy"] == 1.0 and d["top10_energy"] == 1.0
    assert d["entropy"] == pytest.approx(0.0, abs=1e-12)
    # Half the pixels at 1: entropy log(N/2)/log(N); top 5% holds 20 of 200 units.
    half = np.zeros((20, 20))
    half[:10] = 1.0
    h = concentration(half)
    assert h["entropy"] == pytest.approx(math.log(200) / math.log(400))
    assert h["top5_energy"] == pytest.approx(0.1)
    z = concentration(np.zeros((4, 4)))
    assert z["top5_energy"] == 0.0 and math.isnan(z["entropy"])


def test_is_degenerate() -> None:
    assert is_degenerate(np.zeros((10, 10))) == "empty"
    assert is_degenerate(np.full((10, 10), 0.7)) == "constant"
    spike = np.zeros((100, 100))
    spike[50, 50] = 1.0  # 1 active pixel < 0.1 % of 10000
    assert is_degenerate(spike) == "near-empty"
    blob = np.zeros((100, 100))
    blob[40:60, 40:60] = 1.0
    assert is_degenerate(blob) is None
    bad = blob.copy()
    bad[0, 0] = np.nan
    assert is_degenerate(bad) == "non-finite"


def test_spearman() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((16, 16))
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, np.exp(3 * a)) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    # 2x2 by hand: ranks (1,2,3,4) vs (1,3,2,4): rho = 1 - 6*2/(4*15) = 0.8
    assert spearman([[1, 2], [3, 4]], [[1, 3], [2, 4]]) == pytest.approx(0.8)
    # Ties: average ranks, same as scipy.
    from scipy.stats import spearmanr

    t = np.round(a * 3) / 3
    assert spearman(t, a) == pytest.approx(spearmanr(t.ravel(), a.ravel())[0])
    assert math.isnan(spearman(np.ones((4, 4)), a[:4, :4]))
    with pytest.raises(UsageError, match="shapes"):
        spearman(a, a[:4])


def test_top_iou() -> None:
    rng = np.random.default_rng(1)
    a = rng.random((20, 20))
    assert top_iou(a, a) == 1.0
    left = np.zeros((20, 20))
    left[:, :3] = 1.0  # top 15% = 60 pixels = exactly the 3 left columns
    right = np.fliplr(left)
    assert top_iou(left, right) == 0.0
    # q = 0.1 of 100 -> 10 pixels: row 0 vs (row 0 cols 0..4 + row 1 cols 0..4) -> 5 / 15.
    x = np.zeros((10, 10))
    x[0] = 1.0
    y = np.zeros((10, 10))
    y[0, :5] = y[1, :5] = 1.0
    assert top_iou(x, y, q=0.1) == pytest.approx(1 / 3)
    # Ties by index: a constant map's region is the first ceil(qN) pixels (here row 0).
    assert top_iou(np.ones((10, 10)), x, q=0.1) == 1.0


def test_pairwise_agreement() -> None:
    rng = np.random.default_rng(2)
    a = rng.random((8, 8))
    rows = pairwise_agreement({"gradcam": a, "scorecam": a**2, "inverse": 1 - a})
    assert [(r.method_a, r.method_b) for r in rows] == [
        ("gradcam", "scorecam"),
        ("gradcam", "inverse"),
        ("scorecam", "inverse"),
    ]
    assert rows[0].spearman == pytest.approx(1.0) and rows[0].top_iou == 1.0
    assert rows[1].spearman == pytest.approx(-1.0) and rows[1].top_iou == 0.0
