"""ARCC: complexity, coherency and ROAD combined (pytorch-grad-cam 1.5's ``metrics.arcc``;
Domeniconi et al., "How to Evaluate and Refine your CAM", arXiv:2605.14641; complexity and
coherency from Poppi et al. 2021, arXiv:2104.10252).

As pytorch-grad-cam defines it, for a map s in [0, 1]:

* complexity = mean |s| (the L1 norm per pixel; 0 = empty map, 1 = all ones);
* coherency = (r + 1) / 2, r = Pearson correlation of s with the map of the *same method* for the
  CAM-masked input ``x * s`` (in the model's normalised input space);
* ROAD = (mean_p LeRF_p - mean_p MoRF_p) / 2 over percentiles p (20, 40, 60, 80): MoRF_p imputes
  the pixels with s >= the p-th percentile of s, LeRF_p those with 1 - s >= the p-th percentile of
  1 - s (noisy linear imputation, Rong et al. 2022), each as the change of the target's score;
  rescaled ``clip(2 ROAD, 0, 1)``;
* ARCC = 3 / (1/coherency + 1/(1 - complexity) + 1/ROAD') (a harmonic mean; each term + 1e-8).

pytorch-grad-cam's docstring calls it a geometric mean; its code computes the harmonic mean, which
camscope follows. The imputation noise is seeded (``inputs.seed``) where pytorch-grad-cam draws it
from torch's global generator.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from camscope.metrics._registered import (
    explainers_of,
    flat,
    model_of,
    params_of,
    run_explainer,
    scores,
)
from camscope.metrics.faithfulness import noisy_linear_imputation
from camscope.metrics.inputs import MetricInputs
from camscope.metrics.registry import register_metric

__all__ = ["arcc"]

_ARCC = {"percentiles": (20, 40, 60, 80), "noise": 0.01, "score": "prob"}


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Pearson correlation as pytorch-grad-cam (n - 1 normalisation, + 1e-8)."""
    ac = a - a.mean(dim=1, keepdim=True)
    bc = b - b.mean(dim=1, keepdim=True)
    n = a.shape[1] - 1
    cov = (ac * bc).sum(dim=1) / n
    return cov / ((ac.pow(2).sum(dim=1) / n).sqrt() * (bc.pow(2).sum(dim=1) / n).sqrt() + 1e-8)


@register_metric(
    "arcc", title="ARCC (complexity, coherency, ROAD)", category="faithfulness", direction="higher",
    paper="Domeniconi et al., arXiv 2026 (pytorch-grad-cam ARCC)", url="https://arxiv.org/abs/2605.14641",
    equation="ARCC = 3 / (1/coherency + 1/(1 - complexity) + 1/clip(2 ROAD, 0, 1))",
    keys=("arcc", "arcc_complexity", "arcc_coherency", "arcc_road"), needs=("model", "explain"),
    cost="1 explanation + 2 len(percentiles) imputations and forwards per map",
    params=_ARCC, default=False,
)
def arcc(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
    """ARCC and its three parts, as pytorch-grad-cam computes them (see the module docstring)."""
    p = params_of(inputs, _ARCC, "arcc")
    image, forward = model_of(inputs, "arcc")
    explainers = explainers_of(inputs, maps.shape[0], "arcc")
    s = flat(maps).to(image.device)
    complexity = s.abs().mean(dim=1)
    masked = image.unsqueeze(0) * maps.to(image.device, image.dtype).unsqueeze(1)  # (M,3,H,W)
    again = torch.stack([run_explainer(e, masked[i : i + 1], [inputs.target], 1)[0].reshape(-1) for i, e in enumerate(explainers)])
    coherency = (_pearson(again.to(s.device), s) + 1) / 2

    base = scores(forward, image.unsqueeze(0), inputs.target, p["score"], 1)[0]
    pct = [float(q) for q in p["percentiles"]]
    seeds = np.random.SeedSequence(inputs.seed).spawn(2 * len(pct) * maps.shape[0])
    imputed = []
    h, w = maps.shape[-2:]
    for i, m in enumerate(s):
        for j, (q, rel) in enumerate((q, rel) for rel in (m, 1 - m) for q in pct):
            removed = rel >= torch.quantile(rel, q / 100.0)
            imputed.append(noisy_linear_imputation(image, removed.view(h, w).cpu(), noise=float(p["noise"]), seed=seeds[i * 2 * len(pct) + j]))
    after = scores(forward, torch.stack(imputed), inputs.target, p["score"], inputs.batch_size) - base
    after = after.view(maps.shape[0], 2, len(pct)).mean(dim=2)  # (M, [morf, lerf])
    road = (after[:, 1] - after[:, 0]) / 2
    road_scaled = (2 * road).clamp(0, 1)
    value = 3 / (1 / (coherency + 1e-8) + 1 / ((1 - complexity) + 1e-8) + 1 / (road_scaled + 1e-8))
    return {"arcc": value, "arcc_complexity": complexity, "arcc_coherency": coherency, "arcc_road": road}
