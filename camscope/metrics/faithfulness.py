"""Faithfulness metrics: deletion/insertion (RISE), Average Drop / Increase in Confidence, ROAD.

All functions take ``forward``: a callable mapping a batch of preprocessed images (N, 3, H, W) to
logits (N, C). Perturbed images are built on ``image.device`` (put the image on the model's
device) and evaluated in batches under ``torch.inference_mode``. The score of a class is its
softmax probability (``score="prob"``, default) or its raw logit (``score="logit"``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from camscope.errors import UsageError
from camscope.metrics._common import (
    Forward,
    MapLike,
    ScoreKind,
    as_map,
    ascending_rank,
    check_positive_int,
    check_score,
    count_for_fraction,
    descending_rank,
    gaussian_blur,
    target_scores,
    trapezoid,
)

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

Baseline = str | Tensor
"""``"zero"``, ``"blur"`` or a tensor broadcastable to the image (3, H, W)."""


def _check_image(image: Tensor, name: str = "image") -> Tensor:
    if not isinstance(image, Tensor) or image.ndim != 3 or not image.is_floating_point():
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise UsageError(f"{name}: expected a float tensor of shape (C, H, W), got {shape}")
    return image


def _check_map_matches(sal: np.ndarray, image: Tensor) -> None:
    if sal.shape != tuple(image.shape[-2:]):
        raise UsageError(
            f"saliency: map shape {sal.shape} does not match image size {tuple(image.shape[-2:])}"
        )


def _check_target(target: int) -> int:
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or target < 0:
        raise UsageError(f"target: expected a non-negative class index, got {target!r}")
    return int(target)


# --------------------------------------------------------------------------------------------
# Deletion / insertion (RISE)
# --------------------------------------------------------------------------------------------


class CurveResult(NamedTuple):
    """Deletion and insertion curves over the fraction of perturbed pixels."""

    deletion_auc: float
    insertion_auc: float
    fractions: np.ndarray
    deletion_curve: np.ndarray
    insertion_curve: np.ndarray


def _resolve_baseline(
    spec: Baseline, image: Tensor, kernel_size: int, sigma: float, name: str
) -> Tensor:
    if isinstance(spec, Tensor):
        try:
            return torch.broadcast_to(spec.to(image.device, image.dtype), image.shape).contiguous()
        except RuntimeError:
            raise UsageError(
                f"{name}: tensor of shape {tuple(spec.shape)} cannot broadcast to the image "
                f"{tuple(image.shape)}"
            ) from None
    if spec == "zero":
        return torch.zeros_like(image)
    if spec == "blur":
        return gaussian_blur(image, kernel_size, sigma)
    raise UsageError(f"{name}: expected 'zero', 'blur' or a tensor, got {spec!r}")


def _reveal_curve(
    forward: Forward,
    start: Tensor,
    end: Tensor,
    rank: Tensor,
    counts: np.ndarray,
    target: int,
    batch_size: int,
    score: ScoreKind,
) -> np.ndarray:
    """Scores of images that show ``end`` on the ``k`` top-ranked pixels and ``start`` elsewhere."""
    _, h, w = start.shape
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for b0 in range(0, len(counts), batch_size):
            k = torch.as_tensor(counts[b0 : b0 + batch_size], device=start.device)
            switched = (rank.view(1, -1) < k.view(-1, 1)).view(-1, 1, h, w)
            batch = torch.where(switched, end.unsqueeze(0), start.unsqueeze(0))
            targets = torch.full((batch.shape[0],), target, dtype=torch.long)
            out.append(target_scores(forward, batch, targets, score))
    return np.concatenate(out)


def deletion_insertion(
    forward: Forward,
    image: Tensor,
    saliency: MapLike,
    target: int,
    *,
    steps: int = 100,
    pixels_per_step: int | None = None,
    baseline_delete: Baseline = "zero",
    baseline_insert: Baseline = "blur",
    blur_kernel_size: int = 11,
    blur_sigma: float = 5.0,
    batch_size: int = 64,
    score: ScoreKind = "prob",
) -> CurveResult:
    """Deletion and insertion curves and their AUCs (Petsiuk et al. 2018, "RISE", BMVC;
    "causal metrics" section).

    Pixels are ranked by decreasing saliency (ties: lower row-major index first, stable sort).
    With ``k_i = min(i * p, N)`` pixels switched at step ``i = 0..ceil(N/p)`` (``p`` pixels per
    step, ``N = H*W``), the curves are::

        deletion(k)  = score(image with its top-k pixels replaced by baseline_delete)
        insertion(k) = score(baseline_insert with its top-k pixels taken from image)

    sampled at fractions ``k_i / N`` (0 and 1 included); each AUC is the trapezoid-rule area over
    the fraction axis [0, 1]. Low deletion AUC and high insertion AUC mean a faithful map.

    ``pixels_per_step`` defaults to ``ceil(N / steps)``; RISE used one image row per step
    (``pixels_per_step=224`` for 224x224 inputs). Baselines: ``"zero"`` is zero in the model's
    *normalised* input space, i.e. the dataset mean colour (not black); ``"blur"`` is a Gaussian
    blur of the image (``blur_kernel_size`` 11, ``blur_sigma`` 5 as in RISE; replicate padding);
    or a tensor broadcastable to (3, H, W) in the normalised space. Defaults follow RISE: deletion
    to zero, insertion from the blurred image.
    """
    image = _check_image(image)
    sal = as_map(saliency)
    _check_map_matches(sal, image)
    target = _check_target(target)
    check_score(score)
    batch_size = check_positive_int(batch_size, "batch_size")
    n = sal.size
    if pixels_per_step is None:
        steps = check_positive_int(steps, "steps")
        pixels_per_step = math.ceil(n / steps)
    pixels_per_step = check_positive_int(pixels_per_step, "pixels_per_step")
    n_steps = math.ceil(n / pixels_per_step)
    counts = np.minimum(np.arange(n_steps + 1, dtype=np.int64) * pixels_per_step, n)
    fractions = counts / n

    rank = torch.as_tensor(descending_rank(sal), device=image.device)
    with torch.inference_mode():
        img = image.detach()
        base_del = _resolve_baseline(baseline_delete, img, blur_kernel_size, blur_sigma, "baseline_delete")
        base_ins = _resolve_baseline(baseline_insert, img, blur_kernel_size, blur_sigma, "baseline_insert")
        deletion = _reveal_curve(forward, img, base_del, rank, counts, target, batch_size, score)
        insertion = _reveal_curve(forward, base_ins, img, rank, counts, target, batch_size, score)
    return CurveResult(
        deletion_auc=trapezoid(deletion, fractions),
        insertion_auc=trapezoid(insertion, fractions),
        fractions=fractions,
        deletion_curve=deletion,
        insertion_curve=insertion,
    )


# --------------------------------------------------------------------------------------------
# Average Drop / Increase in Confidence (Grad-CAM++)
# --------------------------------------------------------------------------------------------


class AdicPerImage(NamedTuple):
    """Per-image values behind :func:`average_drop_increase`."""

    base_scores: np.ndarray
    """Y_i: score of the target on the full image."""
    explanation_scores: np.ndarray
    """O_i: score of the target on the explanation map E_i = S_i * image_i."""
    drops: np.ndarray
    """max(0, Y_i - O_i) / Y_i (NaN where Y_i <= 0, possible with ``score="logit"``)."""
    increased: np.ndarray
    """Y_i < O_i (bool)."""


class AdicResult(NamedTuple):
    average_drop: float
    """Average Drop in percent (lower is better)."""
    increase_in_confidence: float
    """Increase in Confidence in percent (higher is better)."""
    per_image: AdicPerImage


def _channel_stats(values: Sequence[float] | Tensor, image: Tensor, name: str) -> Tensor:
    t = torch.as_tensor(values, dtype=image.dtype, device=image.device).flatten()
    if t.numel() not in (1, image.shape[1]):
        raise UsageError(f"{name}: expected 1 or {image.shape[1]} values, got {t.numel()}")
    return t.view(1, -1, 1, 1)


def _as_map_stack(saliencies: object, n: int, hw: tuple[int, int]) -> Tensor:
    items: Sequence[MapLike]
    if isinstance(saliencies, (Tensor, np.ndarray)):
        arr = torch.as_tensor(saliencies).detach().to("cpu", torch.float64)
        if arr.ndim == 4 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 3:
            raise UsageError(f"saliencies: expected shape (N, H, W), got {tuple(arr.shape)}")
        items = list(arr)
    else:
        items = list(saliencies)  # type: ignore[call-overload]
    if len(items) != n:
        raise UsageError(f"saliencies: got {len(items)} maps for {n} images")
    maps = [as_map(m, f"saliencies[{i}]") for i, m in enumerate(items)]
    for i, m in enumerate(maps):
        if m.shape != hw:
            raise UsageError(f"saliencies[{i}]: map shape {m.shape} does not match image size {hw}")
    return torch.as_tensor(np.stack(maps))


def average_drop_increase(
    forward: Forward,
    images: Tensor,
    saliencies: Tensor | np.ndarray | Sequence[MapLike],
    targets: int | Sequence[int] | Tensor,
    *,
    score: ScoreKind = "prob",
    mean: Sequence[float] | Tensor | None = IMAGENET_MEAN,
    std: Sequence[float] | Tensor | None = IMAGENET_STD,
    batch_size: int = 64,
) -> AdicResult:
    """Average Drop and Increase in Confidence (Chattopadhyay et al. 2018,
    "Grad-CAM++", WACV; objective evaluation of faithfulness).

    With Y_i the target score on image i and O_i the score on its explanation map
    ``E_i = S_i (*) I_i``::

        Average Drop %           = 100/N * sum_i max(0, Y_i - O_i) / Y_i
        Increase in Confidence % = 100/N * sum_i 1[Y_i < O_i]

    The paper multiplies the *image* by the map. With ``mean``/``std`` given (default: ImageNet),
    ``images`` are unnormalised to [0, 1] pixels (``x * std + mean``), multiplied by the map, and
    renormalised — so S = 0 means black, as in the paper. With ``mean=None`` and ``std=None`` the
    product is taken directly in the normalised space (S = 0 means the dataset mean colour).
    Average Drop needs Y_i > 0 (true for probabilities); with ``score="logit"`` images with
    Y_i <= 0 get a NaN drop and are left out of the average (a warning is logged).
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise UsageError(f"images: expected a float tensor of shape (N, C, H, W), got {shape}")
    check_score(score)
    batch_size = check_positive_int(batch_size, "batch_size")
    n = images.shape[0]
    if n == 0:
        raise UsageError("images: empty batch")
    if isinstance(targets, Tensor):
        tlist = [int(t) for t in targets.flatten().tolist()]
    elif isinstance(targets, (int, np.integer)):
        tlist = [int(targets)] * n
    else:
        tlist = [int(t) for t in targets]
    if len(tlist) != n:
        raise UsageError(f"targets: got {len(tlist)} targets for {n} images")
    for t in tlist:
        _check_target(t)
    maps = _as_map_stack(saliencies, n, tuple(images.shape[-2:]))
    if (mean is None) != (std is None):
        raise UsageError("mean/std: give both (multiply in pixel space) or neither")

    base_parts: list[np.ndarray] = []
    expl_parts: list[np.ndarray] = []
    with torch.inference_mode():
        x_all = images.detach()
        m_t = s_t = None
        if mean is not None and std is not None:
            m_t = _channel_stats(mean, x_all, "mean")
            s_t = _channel_stats(std, x_all, "std")
        for b0 in range(0, n, batch_size):
            x = x_all[b0 : b0 + batch_size]
            s = maps[b0 : b0 + batch_size].to(x.device, x.dtype).unsqueeze(1)
            t = torch.as_tensor(tlist[b0 : b0 + batch_size], dtype=torch.long)
            if m_t is not None and s_t is not None:
                expl = ((x * s_t + m_t) * s - m_t) / s_t
            else:
                expl = x * s
            base_parts.append(target_scores(forward, x, t, score))
            expl_parts.append(target_scores(forward, expl, t, score))
    y = np.concatenate(base_parts)
    o = np.concatenate(expl_parts)
    valid = y > 0
    drops = np.full(n, np.nan)
    drops[valid] = np.maximum(0.0, y[valid] - o[valid]) / y[valid]
    if not valid.all():
        logger.warning(
            "average drop: %d of %d images have a non-positive base score and are left out",
            int((~valid).sum()),
            n,
        )
    avg_drop = float(100.0 * drops[valid].mean()) if valid.any() else float("nan")
    increased = y < o
    return AdicResult(
        average_drop=avg_drop,
        increase_in_confidence=float(100.0 * increased.mean()),
        per_image=AdicPerImage(base_scores=y, explanation_scores=o, drops=drops, increased=increased),
    )


# --------------------------------------------------------------------------------------------
# ROAD (remove and debias)
# --------------------------------------------------------------------------------------------

# (dy, dx) -> weight; Rong et al. 2022 (ROAD, noisy linear imputation): 1/6 for the
# 4-neighbours, 1/12 for the diagonal neighbours.
_NEIGHBOURS: tuple[tuple[int, int, float], ...] = (
    (-1, 0, 1 / 6),
    (1, 0, 1 / 6),
    (0, -1, 1 / 6),
    (0, 1, 1 / 6),
    (-1, -1, 1 / 12),
    (-1, 1, 1 / 12),
    (1, -1, 1 / 12),
    (1, 1, 1 / 12),
)


class RoadResult(NamedTuple):
    fractions: np.ndarray
    """Fractions of removed pixels (as given)."""
    scores: np.ndarray
    """Target score after removing and imputing each fraction."""
    auc: float
    """Trapezoid area of ``scores`` over ``fractions`` divided by the fraction span (the mean
    curve height; comparable across fraction grids). For MoRF lower is better, for LeRF higher."""
    order: str
    """``"morf"`` or ``"lerf"``."""
    base_score: float
    """Score of the unperturbed image."""


def noisy_linear_imputation(
    image: Tensor,
    removed: Tensor | np.ndarray,
    *,
    noise: float = 0.01,
    seed: int | np.random.SeedSequence | np.random.Generator | None = 0,
) -> Tensor:
    """Noisy linear imputation (Rong et al. 2022, "A Consistent and Efficient
    Evaluation Strategy for Attribution Methods", ICML; ROAD imputation).

    Each removed pixel x_i is the weighted average of its in-image 8-neighbours
    (weights 1/6 for the 4-neighbours, 1/12 for diagonals, renormalised at the image border)::

        (sum_j w_ij) x_i - sum_{j removed} w_ij x_j = sum_{j kept} w_ij v_j

    solved per channel as one sparse system (one LU factorisation, ``scipy.sparse.linalg.splu``;
    equivalent to ``spsolve`` per channel), with kept pixels as the boundary. Then i.i.d.
    Gaussian noise of standard deviation ``noise`` (0.01, the official default; in the units of
    ``image``, i.e. the normalised space for preprocessed inputs) is added to the imputed pixels.
    If every pixel is removed there is no boundary: the pixels are set to 0 (+ noise).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import splu

    image = _check_image(image)
    if noise < 0:
        raise UsageError(f"noise: expected a non-negative number, got {noise}")
    mask = removed.detach().cpu().numpy() if isinstance(removed, Tensor) else np.asarray(removed)
    mask = mask.astype(bool)
    c, h, w = image.shape
    if mask.shape != (h, w):
        raise UsageError(f"removed: mask shape {mask.shape} does not match image size {(h, w)}")
    flat = mask.ravel()
    unknown = np.flatnonzero(flat)
    n_unknown = unknown.size
    if n_unknown == 0:
        return image.detach().clone()
    rng = np.random.default_rng(seed)
    values = image.detach().to("cpu", torch.float64).numpy().reshape(c, -1)

    if n_unknown == flat.size:
        logger.warning("noisy linear imputation: every pixel removed; imputing zeros")
        solution = np.zeros((n_unknown, c))
    else:
        var_of = np.full(flat.size, -1, dtype=np.int64)
        var_of[unknown] = np.arange(n_unknown)
        rows, cols = unknown // w, unknown % w
        diag = np.zeros(n_unknown)
        rhs = np.zeros((n_unknown, c))
        a_rows: list[np.ndarray] = []
        a_cols: list[np.ndarray] = []
        a_vals: list[np.ndarray] = []
        for dy, dx, weight in _NEIGHBOURS:
            r, q = rows + dy, cols + dx
            inside = (r >= 0) & (r < h) & (q >= 0) & (q < w)
            eq = np.flatnonzero(inside)
            nb = r[inside] * w + q[inside]
            diag[eq] += weight
            is_unknown = flat[nb]
            a_rows.append(eq[is_unknown])
            a_cols.append(var_of[nb[is_unknown]])
            a_vals.append(np.full(int(is_unknown.sum()), -weight))
            # Each equation appears at most once per offset, so fancy-index += is exact.
            rhs[eq[~is_unknown]] += weight * values[:, nb[~is_unknown]].T
        a_rows.append(np.arange(n_unknown))
        a_cols.append(np.arange(n_unknown))
        a_vals.append(diag)
        system = coo_matrix(
            (np.concatenate(a_vals), (np.concatenate(a_rows), np.concatenate(a_cols))),
            shape=(n_unknown, n_unknown),
        ).tocsc()
        solution = splu(system).solve(rhs)
    if noise > 0:
        solution = solution + noise * rng.standard_normal(solution.shape)
    out = values.copy()
    out[:, unknown] = solution.T
    return torch.as_tensor(out.reshape(c, h, w), dtype=image.dtype, device=image.device)


def road(
    forward: Forward,
    image: Tensor,
    saliency: MapLike,
    target: int,
    *,
    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    order: str = "morf",
    noise: float = 0.01,
    seed: int = 0,
    batch_size: int = 16,
    score: ScoreKind = "prob",
) -> RoadResult:
    """ROAD: RemOve And Debias (Rong et al. 2022, ICML) with noisy linear imputation.

    For each fraction f, the ``round(f*N)`` most relevant (``order="morf"``) or least relevant
    (``order="lerf"``) pixels are removed (ranking ties: lower row-major index first) and
    imputed by :func:`noisy_linear_imputation`; the curve is the target score of the imputed
    images. A faithful map gives a steep MoRF drop and a flat LeRF curve. Noise for fraction i is
    drawn from ``SeedSequence(seed).spawn(len(fractions))[i]``: deterministic given ``seed``.
    """
    image = _check_image(image)
    sal = as_map(saliency)
    _check_map_matches(sal, image)
    target = _check_target(target)
    check_score(score)
    batch_size = check_positive_int(batch_size, "batch_size")
    if order not in ("morf", "lerf"):
        raise UsageError(f"order: expected 'morf' or 'lerf', got {order!r}")
    fr = np.asarray(list(fractions), dtype=np.float64)
    if fr.ndim != 1 or fr.size == 0 or np.any(~np.isfinite(fr)) or fr.min() < 0 or fr.max() > 1:
        raise UsageError(f"fractions: expected a non-empty sequence in [0, 1], got {list(fractions)}")
    if np.any(np.diff(fr) <= 0):
        raise UsageError("fractions: expected strictly increasing values")

    rank = descending_rank(sal) if order == "morf" else ascending_rank(sal)
    rank = rank.reshape(sal.shape)
    n = sal.size
    seeds = np.random.SeedSequence(seed).spawn(fr.size)
    img = image.detach()
    scores: list[np.ndarray] = []
    pending: list[Tensor] = []

    def flush() -> None:
        if pending:
            batch = torch.stack(pending)
            targets = torch.full((batch.shape[0],), target, dtype=torch.long)
            scores.append(target_scores(forward, batch, targets, score))
            pending.clear()

    for f, ss in zip(fr, seeds, strict=True):
        removed = rank < count_for_fraction(float(f), n)
        pending.append(noisy_linear_imputation(img, removed, noise=noise, seed=ss))
        if len(pending) >= batch_size:
            flush()
    flush()
    base = target_scores(forward, img.unsqueeze(0), torch.tensor([target]), score)[0]
    curve = np.concatenate(scores)
    span = fr[-1] - fr[0]
    auc = trapezoid(curve, fr) / span if span > 0 else float(curve[0])
    return RoadResult(fractions=fr, scores=curve, auc=float(auc), order=order, base_score=float(base))
