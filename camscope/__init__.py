"""camscope: class activation maps that are correct, fast and measured.

    import camscope
    model = camscope.load_model("resnet50")        # or any nn.Module
    res = camscope.explain(model, "photos/", methods=["gradcam", "scorecam"])
    res                            # in a notebook: a grid of photos and overlays
    res.maps["gradcam"][0, 0]      # (224, 224) map in [0, 1] for the predicted class
    res.save("runs/x")             # the CLI's run folder; then camscope.report("runs/x")
    camscope.evaluate(res, metrics=["faithfulness", "complexity"])   # registered metrics, in memory

Heavy modules (torch, torchvision, matplotlib) load on first use, not on ``import camscope``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camscope import _moved

__version__ = "0.1.0"

_moved.install()  # old module paths (camscope.pipeline, ...) keep working, with a DeprecationWarning

if TYPE_CHECKING:
    from torch import Tensor, nn

    from camscope.core.runtime import SpeedSettings
    from camscope.engine import CamResult
    from camscope.models import LoadedModel, Preprocess

__all__ = [
    "explain",
    "evaluate",
    "report",
    "CamEngine",
    "CamResult",
    "compute_cams",
    "load_model",
    "LoadedModel",
    "Preprocess",
    "run_explain",
    "ExplainOptions",
    "SpeedSettings",
    "METHODS",
    "method_names",
]

_LAZY = {
    "CamEngine": "camscope.engine",
    "CamResult": "camscope.engine",
    "compute_cams": "camscope.engine",
    "load_model": "camscope.models",
    "LoadedModel": "camscope.models",
    "Preprocess": "camscope.models",
    "run_explain": "camscope.run",
    "ExplainOptions": "camscope.run",
    "SpeedSettings": "camscope.core.runtime",
    "METHODS": "camscope.methods",
    "method_names": "camscope.methods",
}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'camscope' has no attribute {name!r}")


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
    Returns:
        a :class:`~camscope.engine.CamResult`: ``maps[name]`` is (B,k,H,W) in [0,1]; in a
        notebook it displays as a grid; ``figure(i)``, ``overlay(i, method)``, ``save(DIR)``.
    """
    import torch

    from camscope.engine import CamEngine, concat_results
    from camscope.models import LoadedModel, Preprocess, loaded_from_module

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
    from camscope.reporting import build_report

    return build_report(out, model=model, **options)


def evaluate(result: CamResult, metrics: str | Sequence[str] | None = None, **options: Any) -> Any:
    """Measure the maps of a :class:`~camscope.engine.CamResult` (e.g. from :func:`explain`)
    with registered metrics: names, categories (``"faithfulness"``, ``"complexity"``...),
    ``"all"``, or None for the report's default set (see ``camscope.metrics.METRICS``).
    ``options`` as :func:`camscope.reporting.notebook.evaluate_result` (``model=``, ``regions=``,
    ``seed=``, ``params=``). Returns a :class:`~camscope.reporting.notebook.MetricTable`: per
    image, class and variant the values; ``table.means()`` per variant; an HTML table in a
    notebook."""
    from camscope.reporting.notebook import evaluate_result

    return evaluate_result(result, metrics, **options)


def _as_batch(images: Any, pre: Preprocess) -> tuple[Tensor, list[Any] | None]:
    """The model inputs (B,3,H,W) and, unless a tensor was given, the photos they come from."""
    import torch

    if isinstance(images, torch.Tensor):
        return (images[None] if images.dim() == 3 else images), None
    from camscope.io.images import collect_photos

    photos = collect_photos(images)
    if not photos:
        from camscope.errors import UsageError

        raise UsageError("no images to explain")
    return torch.stack([pre.to_tensor(p.image) for p in photos]), photos
