"""Complexity of a map: Sparseness (Gini index), Complexity (entropy), Effective Complexity.

Maps alone, no model: each is a few tensor reductions over the (M,H,W) stack. Values follow
Quantus 0.6 (``abs=True, normalise=True``: |a| divided by its maximum) so that they agree with it
(tests/metrics/test_quantus_equality.py); a map that is zero everywhere gives NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from camscope.metrics._registered import flat, params_of
from camscope.metrics.inputs import MetricInputs
from camscope.metrics.registry import register_metric

__all__ = ["complexity", "effective_complexity", "sparseness"]


def _normalised(maps: Tensor) -> tuple[Tensor, Tensor]:
    """|a| / max|a| per map (M,N) and the mask of maps that are zero everywhere."""
    a = flat(maps).abs()
    peak = a.amax(dim=1, keepdim=True)
    zero = peak.view(-1) <= 0
    return a / torch.where(peak > 0, peak, torch.ones_like(peak)), zero


@register_metric(
    "sparseness", title="Sparseness (Gini index)", category="complexity", direction="higher",
    paper="Chalasani et al., ICML 2020", url="https://arxiv.org/abs/1810.06583",
    equation="G(a) = sum_i (2i - n - 1) a_(i) / (n sum_i a_(i)),  a_(1) <= ... <= a_(n),  a = |map| / max|map| + 1e-7",
    cost="0 forwards", default=True,
)
def sparseness(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
    """Gini index of the map's values (Chalasani et al. 2020, "Concise explanations of neural
    networks using adversarial training", ICML, eq. of Sec. 5; Hurley & Rickard 2009): 0 when all
    pixels are equally relevant, -> 1 when one pixel holds all relevance. Quantus adds 1e-7 to
    every value before sorting; so does this (one more pixel of constant shift, no other effect)."""
    a, zero = _normalised(maps)
    a = torch.sort(a + 1e-7, dim=1).values
    n = a.shape[1]
    i = torch.arange(1, n + 1, dtype=a.dtype, device=a.device)
    g = ((2 * i - n - 1) * a).sum(dim=1) / (n * a.sum(dim=1))
    return {"sparseness": torch.where(zero, torch.nan, g)}


@register_metric(
    "complexity", title="Complexity (entropy)", category="complexity", direction="lower",
    paper="Bhatt et al., IJCAI 2020", url="https://arxiv.org/abs/2005.00631",
    equation="H(a) = -sum_i p_i ln p_i,  p_i = |a_i| / sum_j |a_j|",
    cost="0 forwards", default=True,
)
def complexity(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
    """Entropy of the fractional contribution of each pixel (Bhatt et al. 2020, "Evaluating and
    aggregating feature-based model explanations", IJCAI, Def. 4): low is a simpler map. Natural
    log; 1e-12 inside the log as Quantus (0 ln 0 = 0). Maximum ``ln(H*W)`` for a flat map."""
    a, zero = _normalised(maps)
    p = a / a.sum(dim=1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    h = -(p * torch.log(p + 1e-12)).sum(dim=1)
    return {"complexity": torch.where(zero, torch.nan, h)}


_EFFECTIVE = {"eps": 1e-5}


@register_metric(
    "effective_complexity", title="Effective Complexity", category="complexity", direction="lower",
    paper="Nguyen & Martinez, arXiv 2020", url="https://arxiv.org/abs/2007.07584",
    equation="EC(a) = #{i : |a_i| / max|a| > eps}",
    cost="0 forwards", default=True, params=_EFFECTIVE,
)
def effective_complexity(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
    """Number of pixels whose max-normalised |relevance| exceeds ``eps`` (Nguyen & Martinez 2020,
    "On quantitative aspects of model interpretability", Sec. 4; the count of features a user
    must look at). Default ``eps=1e-5`` as Quantus. Counts, as float (NaN for a zero map)."""
    p = params_of(inputs, _EFFECTIVE, "effective_complexity")
    a, zero = _normalised(maps)
    count = (a > float(p["eps"])).sum(dim=1).to(torch.float64)
    return {"effective_complexity": torch.where(zero, torch.nan, count)}
