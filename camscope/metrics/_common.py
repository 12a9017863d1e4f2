"""Shared helpers for the metrics: map coercion, target scores, ranking, blur, trapezoid rule."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from camscope.errors import UsageError

logger = logging.getLogger(__name__)

MapLike = np.ndarray | Tensor
"""A saliency map: (H, W) numpy array or torch tensor (a leading singleton axis is accepted)."""

ScoreKind = Literal["prob", "logit"]
Forward = Callable[[Tensor], Tensor]


def as_map(saliency: MapLike, name: str = "saliency") -> np.ndarray:
    """Return ``saliency`` as a finite float64 (H, W) numpy array (a copy is not guaranteed)."""
    if isinstance(saliency, Tensor):
        arr = saliency.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(saliency, dtype=np.float64)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.size == 0:
        raise UsageError(f"{name}: expected a non-empty (H, W) map, got shape {tuple(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise UsageError(f"{name}: map contains NaN or infinite values")
    return arr


def check_score(score: str) -> None:
    if score not in ("prob", "logit"):
        raise UsageError(f"score: expected 'prob' or 'logit', got {score!r}")


def check_positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def target_scores(forward: Forward, batch: Tensor, targets: Tensor, score: ScoreKind) -> np.ndarray:
    """Score of ``targets[i]`` for ``batch[i]``: softmax probability or raw logit, float64 numpy."""
    with torch.inference_mode():
        logits = forward(batch)
        if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != batch.shape[0]:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise UsageError(
                f"forward: expected logits of shape (N, C) with N={batch.shape[0]}, got {shape}"
            )
        n_classes = logits.shape[1]
        t = targets.to(logits.device, torch.long)
        if int(t.min()) < 0 or int(t.max()) >= n_classes:
            raise UsageError(f"target: class index out of range for a model with {n_classes} classes")
        values = logits.float()
        if score == "prob":
            values = torch.softmax(values, dim=1)
        picked = values.gather(1, t.view(-1, 1)).view(-1)
        return picked.to("cpu", torch.float64).numpy()


def descending_rank(saliency: np.ndarray) -> np.ndarray:
    """Rank of each pixel (flattened, row-major) by decreasing saliency; ties by pixel index.

    ``rank[p] == 0`` for the most salient pixel. A stable sort makes tie-breaking deterministic.
    """
    order = np.argsort(-saliency.ravel(), kind="stable")
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size, dtype=np.int64)
    return rank


def ascending_rank(saliency: np.ndarray) -> np.ndarray:
    """Rank of each pixel by increasing saliency; ties by pixel index."""
    order = np.argsort(saliency.ravel(), kind="stable")
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size, dtype=np.int64)
    return rank


def trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid-rule area under ``y(x)`` (x increasing)."""
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if y.size < 2:
        return 0.0
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


def gaussian_blur(image: Tensor, kernel_size: int = 11, sigma: float = 5.0) -> Tensor:
    """Separable Gaussian blur of a (C, H, W) or (N, C, H, W) tensor, replicate padding.

    Defaults (11 px, sigma 5) are those of the RISE reference implementation of the insertion
    metric. Replicate padding keeps a constant image constant and works for any image size.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise UsageError(f"blur kernel size: expected a positive odd integer, got {kernel_size}")
    if not sigma > 0:
        raise UsageError(f"blur sigma: expected a positive number, got {sigma}")
    squeeze = image.ndim == 3
    x = image.unsqueeze(0) if squeeze else image
    c = x.shape[1]
    half = kernel_size // 2
    coords = torch.arange(kernel_size, dtype=torch.float64) - half
    k1 = torch.exp(-(coords**2) / (2.0 * sigma * sigma))
    k1 = (k1 / k1.sum()).to(device=x.device, dtype=x.dtype)
    kx = k1.view(1, 1, 1, kernel_size).expand(c, 1, 1, kernel_size)
    ky = k1.view(1, 1, kernel_size, 1).expand(c, 1, kernel_size, 1)
    x = torch.nn.functional.pad(x, (half, half, half, half), mode="replicate")
    x = torch.nn.functional.conv2d(x, kx, groups=c)
    x = torch.nn.functional.conv2d(x, ky, groups=c)
    return x.squeeze(0) if squeeze else x


def count_for_fraction(fraction: float, n: int) -> int:
    """Number of pixels for a fraction of ``n`` (round half up, deterministic)."""
    return min(n, max(0, int(math.floor(fraction * n + 0.5))))
