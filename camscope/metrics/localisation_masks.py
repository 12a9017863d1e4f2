"""Localisation against a ground-truth region (boxes or mask): Relevance Mass / Rank Accuracy,
Top-K Intersection, Attribution Localisation.

``inputs.region`` is an (H,W) bool mask in the map's frame; every value is NaN where it is empty
(or missing) and for a map without positive mass. Pixels are ranked by decreasing relevance with
ties broken by the lower row-major index (a stable sort; Quantus' ``np.argsort`` breaks ties in an
unspecified order, so maps with ties can differ from it by the tied pixels only).
"""

from __future__ import annotations

import torch
from torch import Tensor

from camscope.errors import UsageError
from camscope.metrics._registered import flat, params_of
from camscope.metrics.inputs import MetricInputs
from camscope.metrics.registry import register_metric

__all__ = ["attribution_localisation", "relevance_mass_accuracy", "relevance_rank_accuracy", "top_k_intersection"]


def _region(inputs: MetricInputs, maps: Tensor, name: str) -> Tensor | None:
    """The region as a flat bool vector on the maps' device, or None when there is none."""
    if inputs.region is None:
        return None
    r = torch.as_tensor(inputs.region).to(maps.device).bool()
    if tuple(r.shape) != tuple(maps.shape[-2:]):
        raise UsageError(f"metric {name}: region shape {tuple(r.shape)} does not match the maps {tuple(maps.shape[-2:])}")
    return r.reshape(-1)


def _nan(maps: Tensor) -> Tensor:
    return torch.full((maps.shape[0],), torch.nan, dtype=torch.float64, device=maps.device)


def _descending(a: Tensor) -> Tensor:
    """Pixel indices by decreasing value, ties by lower index (M,N)."""
    return torch.sort(a, dim=1, descending=True, stable=True).indices


@register_metric(
    "relevance_mass", title="Relevance Mass Accuracy", category="localisation", direction="higher",
    paper="Arras et al., Information Fusion 2022", url="https://arxiv.org/abs/2003.07258",
    equation="RMA = sum_{i in GT} a_i / sum_i a_i", keys=("relevance_mass",), needs=("region",), default=True,
)
def relevance_mass_accuracy(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
    """Share of the map's total relevance inside the ground-truth region (Arras et al. 2022,
    "CLEVR-XAI: A benchmark dataset for the ground truth evaluation of neural network
    explanations", Sec. 4.2, eq. 5). 1 when all relevance lies in the region."""
    r = _region(inputs, maps, "relevance_mass")
    if r is None or not bool(r.any()):
        return {"relevance_mass": _nan(maps)}
    a = flat(maps)
    total = a.sum(dim=1)
    within = (a * r).sum(dim=1)
    return {"relevance_mass": torch.where(total != 0, within / total, torch.nan)}


@register_metric(
    "relevance_rank", title="Relevance Rank Accuracy", category="localisation", direction="higher",
    paper="Arras et al., Information Fusion 2022", url="https://arxiv.org/abs/2003.07258",
    equation="RRA = |top_K(a) ∩ GT| / K,  K = |GT|", needs=("region",), default=True,
)
def relevance_rank_accuracy(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
    """Share of the K most relevant pixels that fall in the region, K = the region's size (Arras
    et al. 2022, Sec. 4.2, eq. 6)."""
    r = _region(inputs, maps, "relevance_rank")
    if r is None or not bool(r.any()):
        return {"relevance_rank": _nan(maps)}
    k = int(r.sum())
    top = _descending(flat(maps))[:, :k]
    return {"relevance_rank": r[top].to(torch.float64).mean(dim=1)}


_TOPK = {"k": 1000, "concept_influence": False}


@register_metric(
    "top_k_intersection", title="Top-K Intersection", category="localisation", direction="higher",
    paper="Theiner et al., WACV 2022", url="https://arxiv.org/abs/2104.01061",
    equation="TKI = |top_k(a) ∩ GT| / k  (concept influence: x n / |GT|)", needs=("region",), default=True,
    params=_TOPK,
)
def top_k_intersection(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
    """Share of the ``k`` most relevant pixels that fall in the region (Theiner et al. 2022,
    "Interpretable semantic photo geolocation", WACV; as in Quantus: k = 1000 of a 224x224 map);
    ``concept_influence=True`` divides by the region's share of the image (1 = chance level)."""
    p = params_of(inputs, _TOPK, "top_k_intersection")
    r = _region(inputs, maps, "top_k_intersection")
    n = maps.shape[-2] * maps.shape[-1]
    k = int(p["k"])
    if not 1 <= k <= n:
        raise UsageError(f"metric top_k_intersection: k={k} must be between 1 and the map's {n} pixels")
    if r is None or not bool(r.any()):
        return {"top_k_intersection": _nan(maps)}
    top = _descending(flat(maps))[:, :k]
    tki = r[top].to(torch.float64).mean(dim=1)
    if p["concept_influence"]:
        tki = tki * n / int(r.sum())
    return {"top_k_intersection": tki}


@register_metric(
    "attribution_localisation", title="Attribution Localisation", category="localisation",
    direction="higher", paper="Kohlbrenner et al., IJCNN 2020", url="https://arxiv.org/abs/1910.09840",
    equation="mu = R_in / R_tot (positive relevance);  mu_w = mu * S_tot / S_in",
    keys=("attribution_localisation", "attribution_localisation_weighted"), needs=("region",), default=True,
)
def attribution_localisation(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
    """Share of the positive relevance inside the region, and the same weighted by the inverse of
    the region's share of the image (Kohlbrenner et al. 2020, "Towards best practice in explaining
    neural network decisions with LRP", IJCNN, Sec. IV-B: mu and mu_w; mu_w = 1 is chance level).

    Quantus 0.6's ``weighted=True`` multiplies by S_in/S_tot (the inverse) and takes S_tot from
    ``x_batch[2:].size`` (the batch minus two images); camscope follows the paper.
    """
    r = _region(inputs, maps, "attribution_localisation")
    if r is None or not bool(r.any()):
        return {"attribution_localisation": _nan(maps), "attribution_localisation_weighted": _nan(maps)}
    a = flat(maps).clamp_min(0)
    total = a.sum(dim=1)
    mu = torch.where(total > 0, (a * r).sum(dim=1) / total, torch.nan)
    return {"attribution_localisation": mu, "attribution_localisation_weighted": mu * r.numel() / int(r.sum())}
