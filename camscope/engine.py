"""The CAM engine: one capture per batch of images, every requested method and smoothing variant.

    engine = CamEngine(model, "layer4.2", methods=["gradcam", "scorecam"])
    result = engine(images)            # images: (B,3,H,W), normalised for the model
    result.maps["gradcam"]             # (B, k, H, W) float32 in [0,1]
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from camscope.core.capture import capture, model_state_guard
from camscope.core.layers import canonical_layer_name, default_layer
from camscope.core.postprocess import finalize, first_component, weighted_activations
from camscope.core.reshape import Reshape, model_input_size
from camscope.core.runtime import Runtime, SpeedSettings
from camscope.core.smoothing import Smoothing, expand_views, fold_views, parse_smoothing
from camscope.core.split import LayerSplit, split_model
from camscope.errors import UsageError
from camscope.methods.registry import METHODS, MethodSpec, get_method
from camscope.models.common import LoadedModel
from camscope.names import variant_name

__all__ = ["CamEngine", "CamMaps", "compute_cams", "concat_results", "speed_with_legacy"]

logger = logging.getLogger(__name__)

_M = TypeVar("_M", bound="CamMaps")


@dataclass
class CamMaps:
    """Maps and predictions for a batch of B images and k target classes each: tensors only.

    What :class:`CamEngine` returns. :class:`camscope.CamResult` (:mod:`camscope.api`) is the
    same record with its views: the notebook grid, figures, overlays and ``save(DIR)``.

    Attributes:
        targets: (B,k) explained classes.
        probabilities: (B,C) softmax of the model output on the original images.
        maps: variant name (``"gradcam"``, ``"gradcam+eigen+aug"``...) -> (B,k,H,W) in [0,1].
        seconds: wall time per method (all its variants), plus ``"capture"``.
        inputs: (B,3,H,W) the model inputs, on the CPU.
        normalization: the inputs' (mean, std), when known.
        layer, methods, smoothing, speed: how the maps were made (``smoothing``: the variants'
            parts, plain ``()`` first).
        photos, names, sources: the decoded photos, their names and files (None for images
            given in memory); set by :func:`camscope.explain`.
        model: a :class:`camscope.models.LoadedModel` (name, weights, class names,
            preprocessing), when known.
    """

    targets: Tensor
    probabilities: Tensor
    maps: dict[str, Tensor]
    seconds: dict[str, float] = field(default_factory=dict)
    inputs: Tensor | None = field(default=None, repr=False)
    normalization: tuple[Sequence[float], Sequence[float]] | None = None
    layer: str | None = None
    methods: list[str] = field(default_factory=list)
    smoothing: list[tuple[str, ...]] = field(default_factory=lambda: [()])
    speed: SpeedSettings | None = None
    photos: list[Any] | None = field(default=None, repr=False)
    names: list[str] | None = None
    sources: list[str | None] | None = None
    model: LoadedModel | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def class_name(self, index: int) -> str:
        """The model's name of a class (``"class 21"`` when it has none)."""
        categories = getattr(self.model, "categories", None)
        return categories[index] if categories is not None and 0 <= index < len(categories) else f"class {index}"

    @classmethod
    def of(cls: type[_M], maps: CamMaps) -> _M:
        """The same record as this class (no tensor is copied)."""
        return maps if type(maps) is cls else cls(**{f.name: getattr(maps, f.name) for f in fields(maps)})


class CamEngine:
    """Computes CAMs for one model, target layer, method list and smoothing list.

    The model is split once at the target layer (``core.tail.split_model``); each call runs
    the head once, the tail with a backward to the target layer only when a gradient method is
    requested, and then every method from the same capture. The model is put in eval mode only
    for the duration of a call; its flags and ``.grad`` are restored afterwards.

    ``speed`` (:class:`~camscope.core.runtime.SpeedSettings`) sets rows per pass, precision and
    the private copy the many-forward methods run through; it changes the time, not the maps
    beyond rounding.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | None = None,
        *,
        methods: Sequence[str] = ("gradcam", "ablationcam", "scorecam"),
        smoothing: Sequence[str] | str | None = None,
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
        speed: SpeedSettings | None = None,
        progress: bool = False,
        allow_trace: bool = True,
        reshape: str | Reshape = "auto",
        input_size: Sequence[int] | None = None,
        **deprecated: Any,
    ) -> None:
        speed = speed_with_legacy(speed, deprecated, "CamEngine")
        self.model = model
        rs = Reshape.parse(reshape)
        if input_size is None:
            input_size = model_input_size(model) or (224, 224)
        if len(input_size) == 2:
            input_size = (1, 3, *input_size)
        with model_state_guard(model), torch.no_grad():
            if layer:
                self.layer = canonical_layer_name(model, layer)
            else:
                self.layer = default_layer(model, input_size=tuple(input_size))
            self.split: LayerSplit = split_model(model, self.layer, allow_trace=allow_trace, reshape=rs)
        self.methods: list[MethodSpec] = [get_method(m) for m in methods]
        if not self.methods:
            raise UsageError("no method given")
        for spec in self.methods:
            why = spec.refusal(model)
            if why:
                fits = [s.name for s in METHODS.values() if s.refusal(model) is None]
                raise UsageError(f"method {spec.name!r} cannot explain this model: {why}; "
                                 f"methods that can: {', '.join(fits)}")
        self.variants: list[Smoothing] = parse_smoothing(smoothing)
        self.normalization = normalization
        self.runtime = Runtime(model, self.split, speed, progress=progress)

    @property
    def reshape(self) -> Reshape:
        """How the target layer's output becomes a map: the concrete choice for the latest
        input size (after a call or :meth:`resolve_reshape`), else what was asked for."""
        return self.split.reshape_used or self.split.reshape

    def resolve_reshape(self, input_size: Sequence[int]) -> Reshape:
        """The concrete reshape for inputs of ``input_size`` ((B,3,H,W) or (H,W)); decided by one
        head run on zeros the first time (the model's flags are restored)."""
        with model_state_guard(self.model):
            return self.split.resolve_reshape(input_size)

    @property
    def names(self) -> list[str]:
        """Output names: every method under every variant, plain first."""
        return [variant_name(m.name, v.parts) for v in self.variants for m in self.methods]

    def __call__(
        self, images: Tensor, targets: Sequence[Sequence[int]] | Sequence[int] | None = None, top_k: int = 1
    ) -> CamMaps:
        """Explain a batch of images (B,3,H,W).

        Args:
            targets: classes to explain, per image (a list of ints, or of lists for several);
                default: the ``top_k`` predicted classes.
        """
        with model_state_guard(self.model):
            try:
                return self._run(images, targets, top_k)
            finally:
                self.runtime.end_call()

    def _run(self, images: Tensor, targets, top_k: int) -> CamMaps:
        b = images.shape[0]
        augs = max((v.augmentations for v in self.variants), key=len)
        n_aug = len(augs)
        views = expand_views(images, augs, self.normalization)
        plain_view_of = [(v // n_aug) * n_aug for v in range(b * n_aug)]
        per_view = None
        if targets is not None:
            per_image = [list(t) if isinstance(t, (list, tuple)) else [int(t)] for t in targets]
            if len(per_image) != b:
                raise ValueError(f"{len(per_image)} target lists for {b} images")
            per_view = [per_image[v // n_aug] for v in range(b * n_aug)]

        t0 = time.perf_counter()
        cap = capture(
            self.split,
            views,
            targets_of_view=per_view,
            top_k=top_k,
            plain_view_of=plain_view_of,
            need_gradients=any(m.needs_gradients for m in self.methods),
        )
        seconds = {"capture": time.perf_counter() - t0}
        k = cap.targets.shape[0] // (b * n_aug)
        plain_views = torch.arange(b, device=views.device) * n_aug
        probabilities = torch.softmax(cap.view_logits[plain_views], dim=1)
        result_targets = cap.targets.reshape(b, n_aug, k)[:, 0]

        maps: dict[str, Tensor] = {}
        for spec in self.methods:
            t0 = time.perf_counter()
            out = spec.fn(cap, self.runtime)
            if spec.output == "map":  # raw maps (R,h,w): one "channel" for the shared reduction
                weighted = out[:, None].to(cap.activations.dtype)
            else:
                weighted = weighted_activations(out, cap.activations)
            weighted = weighted.reshape(b, n_aug, k, *weighted.shape[1:])
            for variant in self.variants:
                name = variant_name(spec.name, variant.parts)
                maps[name] = _variant_maps(spec, variant, weighted, tuple(images.shape[-2:])).cpu()
            seconds[spec.name] = time.perf_counter() - t0
        return CamMaps(
            result_targets.cpu(),
            probabilities.cpu(),
            maps,
            seconds,
            inputs=images.detach().cpu(),
            normalization=self.normalization,
            layer=self.layer,
            methods=[m.name for m in self.methods],
            smoothing=[v.parts for v in self.variants],
            speed=self.runtime.speed,
        )


def concat_results(parts: Sequence[_M]) -> _M:
    """One result for the images of several engine calls of the same engine, in order."""
    first = parts[0]
    if len(parts) == 1:
        return first
    seconds: dict[str, float] = {}
    for p in parts:
        for key, value in p.seconds.items():
            seconds[key] = seconds.get(key, 0.0) + value
    return type(first)(
        torch.cat([p.targets for p in parts]),
        torch.cat([p.probabilities for p in parts]),
        {name: torch.cat([p.maps[name] for p in parts]) for name in first.maps},
        seconds,
        inputs=None if first.inputs is None else torch.cat([p.inputs for p in parts]),
        normalization=first.normalization,
        layer=first.layer,
        methods=first.methods,
        smoothing=first.smoothing,
        speed=first.speed,
    )


def _variant_maps(spec: MethodSpec, variant: Smoothing, weighted: Tensor, size: tuple[int, int]) -> Tensor:
    """(B,A,k,K,h,w) weighted activations of every view -> (B,k,H,W) maps of one variant: the
    channel sum (or first principal component for Eigen-CAM and eigen smoothing) of the
    variant's views, finalised, then folded back into one map per image and class."""
    augs = variant.augmentations
    b, _, k, *rest = weighted.shape
    wa = weighted[:, : len(augs)].reshape(-1, *rest)
    plain = wa.sum(dim=1)
    sal = first_component(wa, reference=plain) if spec.reduce == "pca" or variant.eigen else plain
    return fold_views(finalize(sal, size).reshape(b, len(augs), k, *size), augs)


def compute_cams(
    model: nn.Module,
    images: Tensor,
    *,
    layer: str | None = None,
    methods: Sequence[str] = ("gradcam", "ablationcam", "scorecam"),
    targets: Sequence[Sequence[int]] | Sequence[int] | None = None,
    top_k: int = 1,
    smoothing: Sequence[str] | str | None = None,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    speed: SpeedSettings | None = None,
    progress: bool = False,
    reshape: str | Reshape = "auto",
    **deprecated: Any,
) -> CamMaps:
    """One-call convenience around :class:`CamEngine` for a batch of images."""
    engine = CamEngine(
        model, layer, methods=methods, smoothing=smoothing, normalization=normalization,
        speed=speed_with_legacy(speed, deprecated, "compute_cams"), progress=progress, reshape=reshape,
        input_size=tuple(images.shape),
    )
    return engine(images, targets, top_k)


LEGACY_SPEED_ARGUMENTS = ("batch_size", "precision", "compile", "freeze", "channels_last")
"""Keyword arguments of ``CamEngine``, ``compute_cams`` and ``explain`` before ``speed=``."""


def speed_with_legacy(speed: SpeedSettings | None, deprecated: dict[str, Any], where: str) -> SpeedSettings | None:
    """``speed``, or the :class:`SpeedSettings` that the removed keyword arguments
    (``precision="bf16"``, ``batch_size=64``, ...) spell, with a ``DeprecationWarning`` naming the
    new spelling. Any other keyword is the ``TypeError`` Python would raise."""
    unknown = [k for k in deprecated if k not in LEGACY_SPEED_ARGUMENTS]
    if unknown:
        raise TypeError(f"{where}() got an unexpected keyword argument {unknown[0]!r}")
    if not deprecated:
        return speed
    if speed is not None:
        raise TypeError(f"{where}(): pass speed=SpeedSettings(...) or {', '.join(deprecated)}=, not both")
    spelled = ", ".join(f"{k}={v!r}" for k, v in deprecated.items())
    warnings.warn(
        f"{where}({', '.join(f'{k}=' for k in deprecated)}) is deprecated and will be removed; "
        f"pass speed=SpeedSettings({spelled}) instead",
        DeprecationWarning,
        stacklevel=3,
    )
    return SpeedSettings(**deprecated)
