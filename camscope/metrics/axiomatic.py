"""Axiomatic properties that mean something for class activation maps: Non-Sensitivity.

What applies to CAMs (Quantus' axiomatic category):

* **Non-Sensitivity** (Nguyen & Martinez 2020): the pixels a map calls irrelevant (zero after the
  ReLU) should be the ones the model ignores. CAMs zero large regions, so this is a real test.
  Registered here.
* **Completeness** (Sundararajan et al. 2017: sum_i a_i = f(x) - f(baseline)) does not apply: a CAM
  is min-max normalised (its scale is arbitrary), so the sum never matches a score difference.
* **Input Invariance** (Kindermans et al. 2019: a model shifted by a constant input offset, with the
  first layer's bias compensating, must get the same explanation) holds *by construction* for
  every CAM method: activations and gradients at the target layer (after the first layer) are
  identical for the two models, so the maps are too. Nothing to measure.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from camscope.errors import UsageError
from camscope.metrics._registered import model_of, params_of, scores
from camscope.metrics.faithfulness_extra import baseline_image
from camscope.metrics.inputs import MetricInputs
from camscope.metrics.registry import register_metric

__all__ = ["non_sensitivity"]

_NS = {"patch": 16, "eps": 1e-5, "map_eps": 1e-5, "baseline": "black", "score": "prob"}


@register_metric(
    "non_sensitivity", title="Non-Sensitivity", category="axiomatic", direction="lower",
    paper="Nguyen & Martinez, arXiv 2020", url="https://arxiv.org/abs/2007.07584",
    equation="|{P : max_P |a| / max|a| < map_eps} Δ {P : |f(x) - f(x_[P = baseline])| < eps}| / #patches",
    needs=("model",), cost="ceil(H/patch) * ceil(W/patch) forwards per photo (shared by all maps)",
    params=_NS, default=False,
)
def non_sensitivity(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
    """Share of patches where the map and the model disagree about irrelevance (Nguyen & Martinez
    2020, "On quantitative aspects of model interpretability", Sec. 4 "non_sensitivity"): a patch
    the map gives (almost) no relevance but whose removal changes the target's probability, or a
    patch with relevance whose removal changes nothing. 0 is best.

    A feature is a ``patch`` x ``patch`` square (Quantus 0.6 perturbs single channel values — 3·H·W
    forwards — and its step option does not run); removal sets it to ``baseline`` (see
    :mod:`camscope.metrics.faithfulness_extra`). The removals do not depend on the map: one forward
    per patch serves all maps.
    """
    p = params_of(inputs, _NS, "non_sensitivity")
    image, forward = model_of(inputs, "non_sensitivity")
    h, w = image.shape[-2:]
    ps = int(p["patch"])
    if ps < 1:
        raise UsageError("metric non_sensitivity: patch must be >= 1")
    gh, gw = math.ceil(h / ps), math.ceil(w / ps)
    rows = torch.arange(h, device=image.device) // ps
    cols = torch.arange(w, device=image.device) // ps
    patch_of = (rows.view(-1, 1) * gw + cols.view(1, -1)).reshape(-1)  # (H*W,)
    n_patches = gh * gw
    base = baseline_image(inputs, image, p["baseline"])
    y = scores(forward, image.unsqueeze(0), inputs.target, p["score"], 1)[0]
    effect = []
    for p0 in range(0, n_patches, max(1, inputs.batch_size)):
        ids = torch.arange(p0, min(n_patches, p0 + inputs.batch_size), device=image.device)
        removed = (patch_of.view(1, -1) == ids.view(-1, 1)).view(-1, 1, h, w)
        effect.append((scores(forward, torch.where(removed, base, image), inputs.target, p["score"], inputs.batch_size) - y).abs())
    no_effect = torch.cat(effect) < float(p["eps"])  # (P,)
    a = maps.detach().to(image.device, torch.float64).abs()
    peak = a.amax(dim=(1, 2), keepdim=True)
    a = a / torch.where(peak > 0, peak, torch.ones_like(peak))
    pad = (0, gw * ps - w, 0, gh * ps - h)
    patch_max = F.max_pool2d(F.pad(a.unsqueeze(1), pad), ps).reshape(a.shape[0], -1)  # (M,P)
    irrelevant = patch_max < float(p["map_eps"])
    return {"non_sensitivity": (irrelevant ^ no_effect.view(1, -1)).to(torch.float64).mean(dim=1)}
