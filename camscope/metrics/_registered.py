"""Helpers shared by the registered metric functions (:mod:`camscope.metrics.registry`).

Parameters merge (registration defaults, then ``inputs.params``), what a metric needs is checked
with one clear line, and model scores of a perturbed batch are computed on the image's device in
``inputs.batch_size`` rows, returned as float64 tensors (never leaving the device).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from camscope.errors import UsageError
from camscope.metrics.inputs import Explainer, Forward, MetricInputs

__all__ = [
    "explainers_of",
    "flat",
    "model_of",
    "params_of",
    "pixel_stats",
    "run_explainer",
    "scores",
]


def params_of(inputs: MetricInputs, defaults: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``defaults`` overridden by ``inputs.params`` (unknown keys refused)."""
    unknown = set(inputs.params) - set(defaults)
    if unknown:
        raise UsageError(f"metric {name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **inputs.params}


def model_of(inputs: MetricInputs, name: str) -> tuple[Tensor, Forward]:
    """The image and the forward of ``inputs`` (a metric that needs the model)."""
    if inputs.image is None or inputs.forward is None:
        raise UsageError(f"metric {name}: needs the model (inputs.image and inputs.forward)")
    return inputs.image.detach(), inputs.forward


def explainers_of(inputs: MetricInputs, m: int, name: str) -> Sequence[Explainer]:
    """One explainer per map (a metric that re-explains)."""
    if inputs.explainers is None or len(inputs.explainers) != m:
        got = "none" if inputs.explainers is None else len(inputs.explainers)
        raise UsageError(f"metric {name}: needs one explainer per map ({m}), got {got}")
    return inputs.explainers


def flat(maps: Tensor) -> Tensor:
    """(M,H,W) -> (M,H*W) float64."""
    return maps.detach().reshape(maps.shape[0], -1).to(torch.float64)


def pixel_stats(inputs: MetricInputs, like: Tensor) -> tuple[Tensor, Tensor]:
    """``mean``/``std`` as (3,1,1) tensors on ``like``'s device and dtype."""
    mean = torch.as_tensor(list(inputs.mean), dtype=like.dtype, device=like.device).view(-1, 1, 1)
    std = torch.as_tensor(list(inputs.std), dtype=like.dtype, device=like.device).view(-1, 1, 1)
    return mean, std


def scores(forward: Forward, batch: Tensor, targets: Tensor | int, kind: str, batch_size: int) -> Tensor:
    """Score of ``targets[i]`` on ``batch[i]`` (``"logit"`` or softmax ``"prob"``), float64, on
    the batch's device, in chunks of ``batch_size`` rows."""
    if kind not in ("logit", "prob"):
        raise UsageError(f"score: expected 'logit' or 'prob', got {kind!r}")
    n = batch.shape[0]
    t = torch.as_tensor(targets, dtype=torch.long, device=batch.device).expand(n) if not isinstance(
        targets, Tensor
    ) or targets.ndim == 0 else targets.to(batch.device, torch.long)
    out = []
    with torch.inference_mode():
        for b0 in range(0, n, max(1, batch_size)):
            logits = forward(batch[b0 : b0 + batch_size]).to(torch.float64)
            if kind == "prob":
                logits = torch.softmax(logits, dim=1)
            out.append(logits.gather(1, t[b0 : b0 + batch_size].view(-1, 1).to(logits.device)).view(-1))
    return torch.cat(out).to(batch.device) if out else torch.zeros(0, dtype=torch.float64, device=batch.device)


def run_explainer(explainer: Explainer, batch: Tensor, targets: Sequence[int], batch_size: int) -> Tensor:
    """``explainer`` over ``batch`` in chunks of ``batch_size`` rows -> (N,H,W) float64."""
    out = []
    for b0 in range(0, batch.shape[0], max(1, batch_size)):
        out.append(explainer(batch[b0 : b0 + batch_size], list(targets[b0 : b0 + batch_size])).detach().to(torch.float64))
    return torch.cat(out)
