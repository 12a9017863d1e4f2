"""Map-only properties (no model): concentration, degeneracy, agreement between maps."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from camscope.errors import UsageError
from camscope.metrics._common import MapLike, as_map

logger = logging.getLogger(__name__)


def _top_count(q: float, n: int) -> int:
    if not 0 < q <= 1:
        raise UsageError(f"q: expected a fraction in (0, 1], got {q}")
    # Tolerance against float noise such as 0.15 * 400 = 60.00000000000001.
    return max(1, min(n, math.ceil(q * n - 1e-9)))


def _top_energy(flat: np.ndarray, q: float, total: float) -> float:
    k = _top_count(q, flat.size)
    top = np.partition(flat, flat.size - k)[flat.size - k :]
    return float(top.sum() / total)


def concentration(saliency: MapLike) -> dict[str, float]:
    """How concentrated a non-negative map's energy is.

    * ``top5_energy`` / ``top10_energy``: share of the total ``sum(S)`` held by the
      ``ceil(0.05 N)`` / ``ceil(0.10 N)`` highest pixels (uniform map: 0.05 / 0.10; one spike: 1).
    * ``entropy``: normalised Shannon entropy of ``p = S / sum(S)``:
      ``H = -sum_i p_i log p_i / log N`` (uniform: 1.0; single spike: 0.0).

    An all-zero map has no distribution: energies 0.0, entropy NaN.
    """
    sal = as_map(saliency)
    if sal.min() < 0:
        raise UsageError("saliency: concentration needs a non-negative map")
    flat = sal.ravel()
    total = float(flat.sum())
    if total <= 0:
        return {"top5_energy": 0.0, "top10_energy": 0.0, "entropy": float("nan")}
    p = flat / total
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum() / math.log(flat.size)) if flat.size > 1 else 0.0
    return {
        "top5_energy": _top_energy(flat, 0.05, total),
        "top10_energy": _top_energy(flat, 0.10, total),
        "entropy": min(1.0, max(0.0, entropy)),
    }


def is_degenerate(
    saliency: MapLike,
    *,
    eps: float = 1e-6,
    min_active_fraction: float = 0.001,
    active_level: float = 0.5,
) -> str | None:
    """Classify maps that carry no usable spatial information; None if the map looks fine.

    Rules, checked in order:

    * ``"non-finite"``: any NaN/inf value;
    * ``"empty"``: ``max(|S|) <= eps`` (all zero, e.g. everything removed by the ReLU);
    * ``"constant"``: ``max(S) - min(S) < eps``;
    * ``"near-empty"``: fewer than ``min_active_fraction`` (0.1 %) of the pixels reach
      ``min + active_level * (max - min)`` (0.5 on a min-max normalised map), i.e. the map is a
      few isolated hot pixels.
    """
    if isinstance(saliency, Tensor):
        arr = saliency.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(saliency, dtype=np.float64)
    if arr.size == 0:
        raise UsageError("saliency: empty map")
    if not np.all(np.isfinite(arr)):
        return "non-finite"
    hi, lo = float(arr.max()), float(arr.min())
    if float(np.abs(arr).max()) <= eps:
        return "empty"
    if hi - lo < eps:
        return "constant"
    active = np.count_nonzero(arr >= lo + active_level * (hi - lo))
    if active < min_active_fraction * arr.size:
        return "near-empty"
    return None


def spearman(a: MapLike, b: MapLike) -> float:
    """Spearman rank correlation over pixels (ties get their average rank); NaN if a map is
    constant (the correlation is undefined)."""
    from scipy.stats import rankdata

    x, y = as_map(a, "a"), as_map(b, "b")
    if x.shape != y.shape:
        raise UsageError(f"maps have different shapes {x.shape} and {y.shape}")
    rx = rankdata(x.ravel())
    ry = rankdata(y.ravel())
    rx -= rx.mean()
    ry -= ry.mean()
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    if denom == 0:
        return float("nan")
    return float(np.clip(float(rx @ ry) / denom, -1.0, 1.0))


def _top_set(sal: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-sal.ravel(), kind="stable")
    mask = np.zeros(sal.size, dtype=bool)
    mask[order[:k]] = True
    return mask


def top_iou(a: MapLike, b: MapLike, q: float = 0.15) -> float:
    """IoU of the top-q regions of two maps: each region is exactly ``ceil(q N)`` pixels, the
    highest ones, ties broken by lower row-major index (stable sort)."""
    x, y = as_map(a, "a"), as_map(b, "b")
    if x.shape != y.shape:
        raise UsageError(f"maps have different shapes {x.shape} and {y.shape}")
    k = _top_count(q, x.size)
    ma, mb = _top_set(x, k), _top_set(y, k)
    union = np.count_nonzero(ma | mb)
    return float(np.count_nonzero(ma & mb) / union)


class Agreement(NamedTuple):
    method_a: str
    method_b: str
    spearman: float
    top_iou: float


def pairwise_agreement(maps: Mapping[str, MapLike], *, q: float = 0.15) -> list[Agreement]:
    """Spearman correlation and top-q IoU for every pair of methods (in the mapping's order)."""
    prepared = {name: as_map(m, name) for name, m in maps.items()}
    return [
        Agreement(na, nb, spearman(ma, mb), top_iou(ma, mb, q))
        for (na, ma), (nb, mb) in itertools.combinations(prepared.items(), 2)
    ]
