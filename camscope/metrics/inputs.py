"""What a registered metric is given: one photo, one explained target, M maps to measure.

The contract shared by every metric function (the registry and the report build on it)::

    fn(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]

``maps`` is (M,H,W) float (the saved maps of M variants for this photo and target, in the model
input's frame, not necessarily normalised); the function returns one (M,) tensor per value it
computes (the keys its registration declares), NaN where a value is undefined for a map. What a
function may read depends on what it declares it ``needs``:

* ``"model"``: ``image``, ``forward``, ``mean``/``std``;
* ``"explain"``: ``explainers`` (one per map: re-explain perturbed inputs with that map's method,
  layer and smoothing — robustness, randomisation, ARCC);
* ``"region"``: ``region`` (ground-truth or model-given box/mask in the input frame);
* nothing: the maps alone (complexity, map properties).

Every random draw comes from ``generator()`` (seeded by ``seed``) so that a metric is
reproducible; work is batched by ``batch_size`` rows per forward on ``image.device``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["Explainer", "Forward", "MetricInputs"]

Forward = Callable[[Tensor], Tensor]
"""(N,3,H,W) normalised images -> (N,C) logits (no grad needed)."""

Explainer = Callable[[Tensor, Sequence[int]], Tensor]
"""(N,3,H,W) normalised images and N target classes -> (N,H,W) maps of one method/variant."""


@dataclass
class MetricInputs:
    """One photo and one explained target, as every metric function receives them.

    Attributes:
        target: the explained class.
        image: (3,H,W) the model input (normalised), on the model's device; None without a model.
        forward: the model as a function of a batch; None without a model.
        mean, std: the input normalisation (per channel), to build pixel-space baselines.
        explainers: one per map (same order): re-explains new inputs with that map's method.
        region: (H,W) bool ground-truth region (boxes or mask) in the input frame, or None.
        seed: seed of every random draw of the metric.
        batch_size: images per forward.
        params: the metric's effective hyperparameters: the registration's ``params`` with the
            user's overrides applied (``MetricSpec.resolved``); part of the cache key.
    """

    target: int
    image: Tensor | None = None
    forward: Forward | None = None
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)
    explainers: Sequence[Explainer] | None = None
    region: Tensor | None = None
    seed: int = 0
    batch_size: int = 64
    params: Mapping[str, Any] = field(default_factory=dict)

    def generator(self, offset: int = 0) -> torch.Generator:
        """A fresh generator on the image's device (CPU without an image), seeded ``seed + offset``."""
        device = self.image.device if self.image is not None else torch.device("cpu")
        g = torch.Generator(device=device)
        g.manual_seed(self.seed + offset)
        return g
