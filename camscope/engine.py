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
        targets: (B,k) explained classes (-1 for a target without a class, and for the empty
            slots of an image with fewer than k targets).
        probabilities: (B,C) softmax of the model output on the original images ((B,0) when
            the output is not a classifier's logits).
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
        explained: the :class:`camscope.targets.Target` objects of each image (as many as the
            image has: a detector may find none; maps of the empty slots are zero).
        scores: (B,k) each target's score on the original image (NaN for empty slots).
        task: the task whose targets were explained (``classify``, ``segment``, ``detect``...).
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
    explained: list[list[Any]] | None = field(default=None, repr=False)
    scores: Tensor | None = field(default=None, repr=False)
    task: str | None = None
    target_probabilities: Tensor | None = field(default=None, repr=False)
    """(B,k) each target's probability on the original image (the softmax of its class, a
    label's sigmoid, a segment's mean softmax over its region; a target without one: its
    score); NaN for empty slots."""

    def target_names(self, i: int) -> list[str]:
        """Readable names of image ``i``'s targets (class names where the model has them)."""
        categories = getattr(self.model, "categories", None)
        if self.explained is None:
            return [self.class_name(int(c)) for c in self.targets[i].tolist()]
        return [t.name(categories) for t in self.explained[i]]

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
        self, images: Tensor, targets: Any = None, top_k: int | None = None, task: Any = None,
    ) -> CamMaps:
        """Explain a batch of images (B,3,H,W).

        Args:
            targets: what to explain (:func:`camscope.targets.resolve_targets`): per image a
                class index, a :class:`~camscope.targets.Target`, a callable
                ``output -> (N,) scores``, or a list of those; or one Target / callable for
                every image; default: the task's targets (the ``top_k`` predicted classes of
                a classifier, every detection above the score threshold...).
            top_k: at most this many default targets per image (default: the task's: 1
                class, 1 segment class, 10 detections, 10 labels).
            task: a task name (``classify``, ``probability``, ``multilabel``, ``contrast``,
                ``segment``, ``detect``, ``embed``, ``zeroshot``) or a
                :class:`~camscope.targets.Task` with its options; default: from the output
                (detections -> detect, per-pixel logits -> segment, else classify).
        """
        with model_state_guard(self.model):
            try:
                return self._run(images, targets, top_k, task)
            finally:
                self.runtime.end_call()

    def _run(self, images: Tensor, targets: Any, top_k: int | None, task: Any) -> CamMaps:
        from camscope.targets import Task, resolve_targets

        b = images.shape[0]
        augs = max((v.augmentations for v in self.variants), key=len)
        n_aug = len(augs)
        views = expand_views(images, augs, self.normalization)
        the_task = Task.parse(task)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        chosen: dict[str, Any] = {}

        def resolve(output: Any) -> list[list[Any]]:
            plain = list(range(0, b * n_aug, n_aug))
            per_image = resolve_targets(targets, the_task, output, plain, size, top_k)
            if n_aug > 1 and (the_task.kind(output).cls.spatial or any(t.spatial for ts in per_image for t in ts)):
                from camscope.errors import UsageError

                raise UsageError("smoothing 'aug' flips and shifts the image, which a box or mask target does not "
                                 "follow; use eigen smoothing or none")
            chosen["task"] = the_task.name or the_task.kind(output).task
            chosen["per_image"] = per_image
            return [per_image[v // n_aug] for v in range(b * n_aug)]

        t0 = time.perf_counter()
        cap = capture(
            self.split,
            views,
            need_gradients=any(m.needs_gradients for m in self.methods),
            resolve=resolve,
        )
        seconds = {"capture": time.perf_counter() - t0}
        per_image = chosen["per_image"]
        k = max((len(ts) for ts in per_image), default=0)
        # row r -> slot (view, rank) of a (B*A*k) grid; images with fewer targets leave zeros
        counts = [len(per_image[v // n_aug]) for v in range(b * n_aug)]
        slot = torch.tensor([v * k + j for v in range(b * n_aug) for j in range(counts[v])], dtype=torch.long)
        plain_views = torch.arange(b, device=views.device) * n_aug
        probabilities = torch.softmax(cap.view_logits[plain_views.to(cap.view_logits.device)], dim=1)
        result_targets = torch.full((b * n_aug * k,), -1, dtype=torch.long)
        result_targets[slot] = cap.targets.cpu()
        result_targets = result_targets.reshape(b, n_aug, k)[:, 0]
        result_scores = torch.full((b * n_aug * k,), float("nan"))
        result_scores[slot] = cap.scores.detach().float().cpu()
        result_scores = result_scores.reshape(b, n_aug, k)[:, 0]
        result_probs = torch.full((b * n_aug * k,), float("nan"))
        if cap.row_targets:  # each target's probability (softmax of its class, mean over a segment...)
            result_probs[slot] = torch.tensor([_probability(t, cap, r) for r, t in enumerate(cap.row_targets)])
        result_probs = result_probs.reshape(b, n_aug, k)[:, 0]

        maps: dict[str, Tensor] = {}
        for spec in self.methods:
            t0 = time.perf_counter()
            out = spec.fn(cap, self.runtime)
            if spec.output == "map":  # raw maps (R,h,w): one "channel" for the shared reduction
                weighted = out[:, None].to(cap.activations.dtype)
            else:
                weighted = weighted_activations(out, cap.activations)
            if weighted.shape[0] != b * n_aug * k:  # ragged rows: put them in their slots
                grid = weighted.new_zeros(b * n_aug * k, *weighted.shape[1:])
                grid[slot.to(grid.device)] = weighted
                weighted = grid
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
            explained=per_image,
            scores=result_scores,
            task=chosen["task"],
            target_probabilities=result_probs,
        )


def _probability(target: Any, cap: Any, row: int) -> float:
    """Row ``row``'s target's probability on its view (NaN when a user's target cannot say)."""
    try:
        with torch.no_grad():
            p = target.probability(cap.view_output, cap.view_index[row : row + 1])
        return float(torch.as_tensor(p).reshape(-1)[0])
    except Exception as exc:  # noqa: BLE001 - a user's target: the maps do not depend on it
        logger.debug("no probability for target %r: %s", target, exc)
        return float("nan")


def concat_results(parts: Sequence[_M]) -> _M:
    """One result for the images of several engine calls of the same engine, in order."""
    first = parts[0]
    if len(parts) == 1:
        return first
    seconds: dict[str, float] = {}
    for p in parts:
        for key, value in p.seconds.items():
            seconds[key] = seconds.get(key, 0.0) + value
    k = max(int(p.targets.shape[1]) for p in parts)  # images of different calls may have different counts

    def pad(t: Tensor, value: float) -> Tensor:
        if t.shape[1] == k:
            return t
        return torch.cat([t, t.new_full((t.shape[0], k - t.shape[1], *t.shape[2:]), value)], dim=1)

    explained = None
    if all(p.explained is not None for p in parts):
        explained = [ts for p in parts for ts in p.explained]
    scores = None
    if all(p.scores is not None for p in parts):
        scores = torch.cat([pad(p.scores, float("nan")) for p in parts])
    target_probs = None
    if all(p.target_probabilities is not None for p in parts):
        target_probs = torch.cat([pad(p.target_probabilities, float("nan")) for p in parts])
    return type(first)(
        torch.cat([pad(p.targets, -1) for p in parts]),
        torch.cat([p.probabilities for p in parts]),
        {name: torch.cat([pad(p.maps[name], 0.0) for p in parts]) for name in first.maps},
        seconds,
        inputs=None if first.inputs is None else torch.cat([p.inputs for p in parts]),
        normalization=first.normalization,
        layer=first.layer,
        methods=first.methods,
        smoothing=first.smoothing,
        speed=first.speed,
        explained=explained,
        scores=scores,
        task=first.task,
        target_probabilities=target_probs,
    )


def _variant_maps(spec: MethodSpec, variant: Smoothing, weighted: Tensor, size: tuple[int, int]) -> Tensor:
    """(B,A,k,K,h,w) weighted activations of every view -> (B,k,H,W) maps of one variant: the
    channel sum (or first principal component for Eigen-CAM and eigen smoothing) of the
    variant's views, finalised, then folded back into one map per image and class."""
    augs = variant.augmentations
    b, _, k, *rest = weighted.shape
    if k == 0:  # no image has a target (a detector found nothing): nothing to draw
        return weighted.new_zeros(b, 0, *size)
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
    targets: Any = None,
    top_k: int | None = None,
    smoothing: Sequence[str] | str | None = None,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    speed: SpeedSettings | None = None,
    progress: bool = False,
    reshape: str | Reshape = "auto",
    task: Any = None,
    allow_trace: bool = True,
    **deprecated: Any,
) -> CamMaps:
    """One-call convenience around :class:`CamEngine` for a batch of images (``targets``,
    ``top_k``, ``task``: see :meth:`CamEngine.__call__`)."""
    engine = CamEngine(
        model, layer, methods=methods, smoothing=smoothing, normalization=normalization,
        speed=speed_with_legacy(speed, deprecated, "compute_cams"), progress=progress, reshape=reshape,
        input_size=tuple(images.shape), allow_trace=allow_trace,
    )
    return engine(images, targets, top_k, task)


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
