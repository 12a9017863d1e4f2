"""The public Python API behind ``import camscope``: :func:`explain`, :func:`report`,
:class:`CamEngine`, :func:`compute_cams` and :class:`CamResult` -- the engine's maps
(:class:`~camscope.engine.CamMaps`) with their views: the notebook grid, figures, overlays and
the run folder (``save``). The engine below returns tensors only; drawing lives in
:mod:`camscope.render`, the run folder in :mod:`camscope.run`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from camscope import engine as _engine
from camscope.core.reshape import Reshape
from camscope.core.runtime import SpeedSettings
from camscope.engine import CamMaps, concat_results, speed_with_legacy
from camscope.errors import UsageError
from camscope.io.images import Photo, collect_photos
from camscope.models import LoadedModel, Preprocess, loaded_from_module
from camscope.render.draw import overlay
from camscope.render.notebook import result_figure, result_html, result_photo, target_info
from camscope.reporting import build_report
from camscope.run import save_result
from camscope.scale import RayMeasurement, RayOptions

__all__ = ["explain", "report", "CamEngine", "CamResult", "compute_cams"]


class CamResult(CamMaps):
    """Maps and predictions for a batch of B images and k target classes each
    (:class:`~camscope.engine.CamMaps`: ``maps[name]`` is (B,k,H,W) in [0,1]).

    In a notebook it shows itself as a grid (photo, one overlay per method and variant, the
    explained class); :meth:`figure`, :meth:`overlay` and :meth:`save` give the CLI's comparison
    figure, an overlay, and the CLI's run folder.
    """

    def photo(self, i: int) -> Image.Image:
        """Image ``i`` as a PIL photo: the part of the photo the map covers, or the model input
        itself (de-normalised) when no photo was given."""
        return result_photo(self, i)

    def overlay(self, i: int, method: str, *, rank: int = 0, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
        """The map of ``method`` (a variant name) for image ``i`` over its photo, as a PIL image
        (with the target's box or mask outline, for detections and segments)."""
        _, region = target_info(self, i, rank)
        return overlay(self.photo(i), self.maps[method][i, rank].numpy(), alpha=alpha, colormap=colormap,
                       region=region or None)

    def figure(
        self, i: int | None = None, methods: Sequence[str] | None = None, *, rank: int = 0,
        alpha: float = 0.5, colormap: str = "jet",
    ) -> Any:
        """The comparison figure the CLI writes, for image ``i`` (default: the first), as a
        matplotlib ``Figure``; ``methods`` limits it to some methods."""
        return result_figure(self, 0 if i is None else i, methods, rank=rank, alpha=alpha, colormap=colormap)

    def save(self, out: str | Path, *, alpha: float = 0.5, colormap: str = "jet", figures: bool = True, force: bool = False) -> Path:
        """Write the run folder the CLI writes (overlays, ``.npy`` maps, figures, predictions,
        manifest), so that ``camscope report DIR`` works on it; returns the folder."""
        return save_result(self, out, alpha=alpha, colormap=colormap, figures=figures, force=force)

    def _repr_html_(self) -> str:
        return result_html(self)


class CamEngine(_engine.CamEngine):
    """:class:`camscope.engine.CamEngine` (see there) whose calls return a :class:`CamResult`."""

    def __call__(
        self, images: Tensor, targets: Any = None, top_k: int | None = None, task: Any = None
    ) -> CamResult:
        return CamResult.of(super().__call__(images, targets, top_k, task))


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
) -> CamResult:
    """:func:`camscope.engine.compute_cams` (see there), returning a :class:`CamResult`."""
    return CamResult.of(_engine.compute_cams(
        model, images, layer=layer, methods=methods, targets=targets, top_k=top_k, smoothing=smoothing,
        normalization=normalization, speed=speed, progress=progress, reshape=reshape, task=task,
        allow_trace=allow_trace, **deprecated,
    ))  # fmt: skip


def explain(
    model: nn.Module | LoadedModel,
    images: Any,
    *,
    layer: str | None = None,
    methods: Sequence[str] = ("gradcam", "ablationcam", "scorecam"),
    preprocess: Preprocess | None = None,
    targets: Any = None,
    top_k: int | None = None,
    smoothing: Sequence[str] | str | None = None,
    speed: SpeedSettings | None = None,
    images_per_call: int = 8,
    progress: bool = False,
    reshape: str = "auto",
    task: Any = None,
    **deprecated: Any,
) -> CamResult:
    """Class activation maps of any classifier for one or more images.

    Args:
        model: an ``nn.Module`` (left unchanged: hooks, flags and ``.grad`` are restored), or a
            :class:`~camscope.models.LoadedModel` from :func:`load_model` (which brings its
            class names, weights description and preprocessing).
        images: a path or folder, a PIL image, an (H,W,3) uint8 array, a list of those, or a
            normalised tensor (B,3,H,W).
        layer: dotted path of the target layer (default: per architecture, else the last
            module with a spatial output).
        methods: registered method names (see ``camscope.METHODS``).
        preprocess: how photos become tensors (default: the loaded model's, else a 224x224
            resize with ImageNet statistics).
        targets: class per image (or list of classes per image), :class:`camscope.targets.Target`
            objects, or a callable ``output -> (N,) scores``; default: the task's targets (the
            top-k predicted classes of a classifier).
        top_k: at most this many default targets per image (default: the task's).
        task: ``classify``, ``probability``, ``multilabel``, ``contrast``, ``segment``,
            ``detect``, ``embed``, ``zeroshot`` or a :class:`camscope.targets.Task` with options
            (default: the loaded model's, else from the output).
        smoothing: ``"eigen"``, ``"aug"``, ``"eigen,aug"`` or a list of such variants.
        speed: rows per pass, precision and model copy of Score-/Ablation-CAM
            (:class:`~camscope.core.runtime.SpeedSettings`).
        images_per_call: images explained together (memory grows with it).
        reshape: how the layer's output becomes a (B, C, h, w) map: ``"auto"`` (default:
            transformer tokens and channels-last maps are detected), ``"none"``, ``"nhwc"``,
            ``"tokens:HxW[:skip=T]"`` (see :mod:`camscope.core.reshape`).
        deprecated: ``precision=``, ``batch_size=``, ``compile=``, ``freeze=``,
            ``channels_last=`` still work for a release, with a ``DeprecationWarning``: pass
            ``speed=SpeedSettings(...)``.
    Returns:
        a :class:`CamResult`: ``maps[name]`` is (B,k,H,W) in [0,1]; in a
        notebook it displays as a grid; ``figure(i)``, ``overlay(i, method)``, ``save(DIR)``.
    """
    speed = speed_with_legacy(speed, deprecated, "explain")
    if isinstance(model, LoadedModel):
        loaded = model
        pre = preprocess or loaded.preprocess
    else:
        pre = preprocess or Preprocess()
        loaded = loaded_from_module(model, pre)
    x, photos = _as_batch(images, pre)
    device = next((p.device for p in loaded.model.parameters()), torch.device("cpu"))
    engine = CamEngine(
        loaded.model, layer, methods=methods, smoothing=smoothing, normalization=pre.normalization,
        speed=speed, progress=progress, reshape=reshape, input_size=(1, *x.shape[1:]),
    )
    if task is None and isinstance(getattr(loaded, "info", None), dict):
        task = loaded.info.get("task")  # torchvision segmenters and detectors name theirs
    per_image = None
    if targets is not None and not callable(targets) and isinstance(targets, (list, tuple)):
        per_image = [t if isinstance(t, (list, tuple)) else [t] for t in targets]
    parts = []
    for start in range(0, x.shape[0], max(1, images_per_call)):
        chunk = slice(start, start + max(1, images_per_call))
        given = targets if per_image is None else per_image[chunk]
        parts.append(engine(x[chunk].to(device), given, top_k, task))
    res = concat_results(parts)
    res.model = loaded
    if photos is not None:
        res.photos = [p.image for p in photos]
        res.names = [p.name for p in photos]
        res.sources = [None if p.source is None else str(p.source) for p in photos]
    return res


def report(out: str | Path, *, model: Any = None, **options: Any) -> Any:
    """Measure the maps of a run folder (``camscope explain --out DIR`` or ``res.save(DIR)``)
    and write ``DIR/report.html``; ``model`` (an ``nn.Module`` or a ``LoadedModel``) is the
    one that made the maps, needed for the faithfulness metrics when the run's model cannot be
    rebuilt by name. ``options`` as :func:`camscope.reporting.build_report`. Returns its
    ``(EvaluationResult, ReportFiles)``."""
    if isinstance(options.get("ray"), RayOptions):  # measured on Ray: the report itself knows nothing of Ray
        options["ray"] = RayMeasurement(options["ray"])
    return build_report(out, model=model, **options)


def evaluate(result: CamResult, metrics: str | Sequence[str] | None = None, **options: Any) -> Any:
    """Measure the maps of a :class:`CamResult` (e.g. from :func:`explain`) with registered
    metrics: names, categories (``"faithfulness"``, ``"complexity"``...), ``"all"``, or None for
    the report's default set (see ``camscope.metrics.METRICS``). ``options`` as
    :func:`camscope.reporting.notebook.evaluate_result` (``model=``, ``regions=``, ``seed=``,
    ``params=``). Returns a :class:`~camscope.reporting.notebook.MetricTable`: per image, class
    and variant the values; ``table.means()`` per variant; an HTML table in a notebook."""
    from camscope.reporting.notebook import evaluate_result  # the notebook table, when asked for

    return evaluate_result(result, metrics, **options)


def _as_batch(images: Any, pre: Preprocess) -> tuple[Tensor, list[Photo] | None]:
    """The model inputs (B,3,H,W) and, unless a tensor was given, the photos they come from."""
    if isinstance(images, torch.Tensor):
        return (images[None] if images.dim() == 3 else images), None
    photos = collect_photos(images)
    if not photos:
        raise UsageError("no images to explain")
    return torch.stack([pre.to_tensor(p.image) for p in photos]), photos
