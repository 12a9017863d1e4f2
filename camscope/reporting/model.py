"""The model behind the measurements, built on first need (a fully cached report never builds
it), and the explainers that metrics needing ``"explain"`` re-explain perturbed inputs with."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from camscope.errors import CamscopeError
from camscope.io.rundir import RunSettings, parse_variant, smoothing_label
from camscope.metrics.inputs import Explainer, Forward
from camscope.models import LoadedModel, pick_device

if TYPE_CHECKING:
    from camscope.engine import CamEngine

__all__ = ["ModelProvider", "engine_explainer"]

logger = logging.getLogger(__name__)


def engine_explainer(engine: CamEngine, variant: str) -> Explainer:
    """An :data:`~camscope.metrics.inputs.Explainer` from a :class:`CamEngine` built for one
    method and smoothing: (N,3,H,W) images and N classes -> (N,H,W) maps of ``variant``."""

    def explain(images: Tensor, targets: Sequence[int]) -> Tensor:
        res = engine(images, [[int(t)] for t in targets])
        return res.maps[variant][:, 0].to(images.device)

    return explain


class ModelProvider:
    """The model of a run, loaded from the manifest's settings on first use (or the one given),
    and one :class:`~camscope.engine.CamEngine` per variant, built on first use and reused
    across photos."""

    def __init__(
        self,
        loaded: LoadedModel | None,
        settings: RunSettings,
        weights_file: str | Path | None = None,
        device: str | torch.device | None = None,
        trust: bool = False,
        progress: bool = False,
    ) -> None:
        self._loaded = loaded
        self._settings = settings
        self._weights_file = weights_file
        self._device = device
        self._trust = trust
        self._progress = progress
        self._engines: dict[str, Explainer] = {}

    def get(self) -> LoadedModel:
        if self._loaded is None:
            from camscope.models import load_from_settings

            logger.info("loading %s to measure the maps", self._settings.model)
            try:
                self._loaded = load_from_settings(
                    self._settings,
                    weights_file=self._weights_file,
                    device=pick_device(self._device),
                    trust_checkpoint=self._trust,
                    progress=self._progress,
                )
            except CamscopeError as exc:
                raise type(exc)(f"{exc} (or pass --no-faithfulness for map-only metrics)") from None
        return self._loaded

    @property
    def device(self) -> torch.device:
        model = self.get().model
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
        return torch.device("cpu")

    def forward(self) -> Forward:
        model = self.get().model
        return lambda x: model(x)

    def explainer(self, variant: str, input_size: tuple[int, int], normalization: Any = None) -> Explainer:
        """Re-explains with the variant's method, the run's layer and the variant's smoothing."""
        if variant not in self._engines:
            from camscope.engine import CamEngine

            loaded = self.get()
            method, parts = parse_variant(variant)
            s = self._settings
            engine = CamEngine(
                loaded.model, s.layer or None, methods=[method],
                smoothing=[smoothing_label(parts)] if parts else None,
                normalization=normalization,
                reshape=s.reshape or "auto", input_size=(1, 3, *input_size),
            )
            self._engines[variant] = engine_explainer(engine, variant)
        return self._engines[variant]

    def explainers(self, variants: Sequence[str], input_size: tuple[int, int], normalization: Any = None) -> list[Explainer]:
        return [self.explainer(v, input_size, normalization) for v in variants]


def as_loaded(model: Any, settings: RunSettings, preprocess: Any) -> LoadedModel | None:
    """A given model as a :class:`LoadedModel` (any ``nn.Module`` is wrapped); None stays None."""
    if model is None or isinstance(model, LoadedModel):
        return model
    return LoadedModel(model, settings.model, settings.weights, None, preprocess)
