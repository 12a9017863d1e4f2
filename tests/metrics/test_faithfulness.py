"""Faithfulness metrics on tiny closed-form models (values computed by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from camscope.errors import UsageError
from camscope.metrics import (
    average_drop_increase,
    deletion_insertion,
    noisy_linear_imputation,
    road,
)

H = W = 20
N = H * W
ROWS, COLS = slice(4, 12), slice(5, 15)  # region R: 8 x 10 = 80 pixels = 0.2 of the image
R_SIZE = 80


def region_forward(x: torch.Tensor) -> torch.Tensor:
    """logit_0 = mean of channel 0 over R, logit_1 = 0."""
    l0 = x[:, 0, ROWS, COLS].mean(dim=(1, 2))
    return torch.stack([l0, torch.zeros_like(l0)], dim=1)


def region_map() -> torch.Tensor:
    s = torch.zeros(H, W)
    s[ROWS, COLS] = 1.0
    return s


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


# ---------------------------------------------------------------- deletion / insertion


def test_deletion_insertion_closed_form_region_first() -> None:
    res = deletion_insertion(
        region_forward,
        torch.ones(3, H, W),
        region_map(),
        0,
        steps=100,  # 4 pixels per step; |R| = 80 is a multiple, so the trapezoid rule is exact
        baseline_delete="zero",
        baseline_insert="zero",
        score="logit",
    )
    assert len(res.fractions) == 101
    assert res.fractions[0] == 0.0 and res.fractions[-1] == 1.0
    k = np.arange(101) * 4
    np.testing.assert_allclose(res.deletion_curve, np.maximum(0.0, 1 - k / R_SIZE), atol=1e-6)
    np.testing.assert_allclose(res.insertion_curve, np.minimum(1.0, k / R_SIZE), atol=1e-6)
    # Deletion: linear drop to 0 over the first |R|/N = 0.2 -> area 0.5 * 0.2.
    assert res.deletion_auc == pytest.approx(0.1, abs=1e-6)
    assert res.insertion_auc == pytest.approx(0.9, abs=1e-6)


def test_deletion_insertion_region_last_and_numpy_map() -> None:
    sal = 1.0 - region_map().numpy()  # R ranked last
    res = deletion_insertion(
        region_forward, torch.ones(3, H, W), sal, 0, steps=100,
        baseline_delete="zero", baseline_insert="zero", score="logit",
    )
    # Flat at 1 until 0.8, then linear to 0: 0.8 + 0.5 * 0.2.
    assert res.deletion_auc == pytest.approx(0.9, abs=1e-6)
    assert res.insertion_auc == pytest.approx(0.1, abs=1e-6)


def test_ties_by_index_and_pixels_per_step() -> None:
    # Constant map: pixels go in row-major order; one row (20 px) per step.
    res = deletion_insertion(
        region_forward, torch.ones(3, H, W), torch.full((H, W), 0.3), 0,
        pixels_per_step=W, baseline_delete="zero", baseline_insert="zero", score="logit",
    )
    rows_done = np.arange(H + 1)
    deleted_in_r = 10 * np.clip(rows_done - 4, 0, 8)
    np.testing.assert_allclose(res.deletion_curve, 1 - deleted_in_r / R_SIZE, atol=1e-6)
    np.testing.assert_allclose(res.fractions, rows_done / H)


def test_tensor_baseline_and_default_blur_insertion() -> None:
    res = deletion_insertion(
        region_forward, torch.ones(3, H, W), region_map(), 0, steps=100,
        baseline_delete=torch.full((3, 1, 1), -1.0), score="logit",
    )
    # Deletion: 1 - 2k/80 until k = 80 (area 0 over [0, 0.2]), then -1 over 0.8.
    assert res.deletion_auc == pytest.approx(-0.8, abs=1e-6)
    # The blur of a constant image is the same constant: the insertion curve is flat at 1.
    np.testing.assert_allclose(res.insertion_curve, 1.0, atol=1e-6)


def test_prob_score_and_batching_invariance() -> None:
    img = torch.ones(3, H, W)
    a = deletion_insertion(region_forward, img, region_map(), 0, steps=50, batch_size=64)
    b = deletion_insertion(region_forward, img, region_map(), 0, steps=50, batch_size=7)
    assert a.deletion_curve[0] == pytest.approx(sigmoid(1.0), abs=1e-6)
    assert a.deletion_curve[-1] == pytest.approx(0.5, abs=1e-6)  # all deleted: logits (0, 0)
    np.testing.assert_allclose(a.deletion_curve, b.deletion_curve, atol=1e-7)
    np.testing.assert_allclose(a.insertion_curve, b.insertion_curve, atol=1e-7)


def test_deletion_insertion_errors() -> None:
    img = torch.ones(3, H, W)
    with pytest.raises(UsageError, match="saliency"):
        deletion_insertion(region_forward, img, torch.zeros(5, 5), 0)
    with pytest.raises(UsageError, match="baseline_delete"):
        deletion_insertion(region_forward, img, region_map(), 0, baseline_delete="black")
    with pytest.raises(UsageError, match="score"):
        deletion_insertion(region_forward, img, region_map(), 0, score="softmax")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="out of range"):
        deletion_insertion(region_forward, img, region_map(), 5)


# ---------------------------------------------------------------- Average Drop / IC


def mean_forward(x: torch.Tensor) -> torch.Tensor:
    """Two classes: logits (mean of the image, 0) -> p(class 0) = sigmoid(mean)."""
    m = x.mean(dim=(1, 2, 3))
    return torch.stack([m, torch.zeros_like(m)], dim=1)


def test_average_drop_increase_normalised_space() -> None:
    images = torch.stack([torch.full((3, 4, 4), 2.0), torch.full((3, 4, 4), -1.0)])
    sal = np.full((2, 4, 4), 0.5)
    res = average_drop_increase(mean_forward, images, sal, 0, mean=None, std=None)
    y = np.array([sigmoid(2.0), sigmoid(-1.0)])
    o = np.array([sigmoid(1.0), sigmoid(-0.5)])  # E = 0.5 * image
    np.testing.assert_allclose(res.per_image.base_scores, y, atol=1e-6)
    np.testing.assert_allclose(res.per_image.explanation_scores, o, atol=1e-6)
    drop0 = (y[0] - o[0]) / y[0]
    assert res.average_drop == pytest.approx(100 * drop0 / 2, abs=1e-4)
    assert res.increase_in_confidence == pytest.approx(50.0)
    assert res.per_image.increased.tolist() == [False, True]
    assert res.per_image.drops[1] == 0.0


def test_average_drop_pixel_space() -> None:
    # x = 2 with mean 0.5, std 0.25 is pixel 1.0; times 0.5 -> pixel 0.5 -> normalised 0.
    images = torch.full((1, 3, 4, 4), 2.0)
    res = average_drop_increase(
        mean_forward, images, [torch.full((4, 4), 0.5)], [0], mean=(0.5,) * 3, std=(0.25,) * 3
    )
    assert res.per_image.explanation_scores[0] == pytest.approx(0.5, abs=1e-6)
    expected = 100 * (sigmoid(2.0) - 0.5) / sigmoid(2.0)
    assert res.average_drop == pytest.approx(expected, abs=1e-4)
    assert res.increase_in_confidence == 0.0


def test_average_drop_errors() -> None:
    images = torch.zeros(2, 3, 4, 4)
    with pytest.raises(UsageError, match="saliencies"):
        average_drop_increase(mean_forward, images, np.zeros((3, 4, 4)), 0)
    with pytest.raises(UsageError, match="targets"):
        average_drop_increase(mean_forward, images, np.zeros((2, 4, 4)), [0, 1, 0])


# ---------------------------------------------------------------- ROAD


def ramp(h: int = 12, w: int = 12) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return torch.stack([0.3 * xx - 0.2 * yy + 1.0, -0.1 * xx + 0.05 * yy, 0.7 * yy - 2.0]).float()


def interior_mask(h: int = 12, w: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) < 0.6
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = False  # the stencil is exact inside
    return mask


def test_linear_imputation_reproduces_a_ramp() -> None:
    img = ramp()
    mask = interior_mask()
    out = noisy_linear_imputation(img, mask, noise=0.0)
    assert mask.sum() > 40
    torch.testing.assert_close(out, img, atol=1e-5, rtol=0)
    # A non-harmonic image is really imputed (not just copied).
    quad = img**2
    assert not torch.allclose(noisy_linear_imputation(quad, mask, noise=0.0), quad, atol=1e-3)


def test_imputation_noise_is_seeded_and_only_on_removed_pixels() -> None:
    img = ramp()
    mask = interior_mask()
    a = noisy_linear_imputation(img, mask, noise=0.01, seed=3)
    b = noisy_linear_imputation(img, mask, noise=0.01, seed=3)
    c = noisy_linear_imputation(img, mask, noise=0.01, seed=4)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a, c)
    keep = torch.as_tensor(~mask)
    assert torch.equal(a[:, keep], img[:, keep])
    resid = (a - img)[:, torch.as_tensor(mask)]
    assert 0.005 < float(resid.std()) < 0.02
    # Everything removed: no boundary -> zeros.
    assert torch.equal(noisy_linear_imputation(img, np.ones((12, 12), bool), noise=0.0), torch.zeros_like(img))


def contrast_image() -> torch.Tensor:
    img = torch.zeros(3, H, W)
    img[0, ROWS, COLS] = 1.0
    return img


def test_road_morf_vs_lerf_on_region_model() -> None:
    img = contrast_image()
    sal = region_map()
    morf = road(region_forward, img, sal, 0, order="morf", noise=0.0, score="logit")
    lerf = road(region_forward, img, sal, 0, order="lerf", noise=0.0, score="logit")
    assert morf.base_score == pytest.approx(1.0)
    # MoRF: from f = 0.2 on, R (plus some zeros) is removed and imputed from zeros only.
    assert 0.0 < morf.scores[0] < 1.0
    np.testing.assert_allclose(morf.scores[1:], 0.0, atol=1e-9)
    # LeRF: up to f = 0.8 only pixels outside R are removed, so R is intact; at f = 0.9 the only
    # kept pixels are 40 pixels of R (value 1), so every imputed pixel is 1 as well.
    np.testing.assert_allclose(lerf.scores, 1.0, atol=1e-6)
    assert morf.auc < lerf.auc
    assert lerf.order == "lerf"
    np.testing.assert_allclose(morf.fractions, np.arange(1, 10) / 10)


def test_road_deterministic_with_seed() -> None:
    img = contrast_image()
    sal = region_map() + 0.01 * torch.rand(H, W, generator=torch.Generator().manual_seed(0))
    kw = dict(fractions=(0.1, 0.3, 0.5), noise=0.05, score="logit", batch_size=2)
    a = road(region_forward, img, sal, 0, seed=7, **kw)
    b = road(region_forward, img, sal, 0, seed=7, **kw)
    c = road(region_forward, img, sal, 0, seed=8, **kw)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert not np.array_equal(a.scores, c.scores)


def test_road_errors() -> None:
    with pytest.raises(UsageError, match="order"):
        road(region_forward, contrast_image(), region_map(), 0, order="random")
    with pytest.raises(UsageError, match="fractions"):
        road(region_forward, contrast_image(), region_map(), 0, fractions=(0.5, 0.2))
