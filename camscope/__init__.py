"""camscope: class activation maps that are correct, fast and measured.

    import camscope, torchvision
    model = torchvision.models.resnet50(weights="IMAGENET1K_V1")
    res = camscope.explain(model, "cat.jpg", methods=["gradcam", "scorecam"])
    res.maps["gradcam"][0, 0]      # (224, 224) map in [0, 1] for the predicted class

Heavy modules (torch, torchvision, matplotlib) load on first use, not on ``import camscope``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from torch import Tensor, nn

    from camscope.core.engine import CamResult
    from camscope.models import Preprocess

__all__ = [
    "explain",
    "CamEngine",
    "CamResult",
    "compute_cams",
    "load_model",
    "Preprocess",
    "run_explain",
    "ExplainOptions",
    "METHODS",
    "method_names",
]

_LAZY = {
    "CamEngine": "camscope.core.engine",
    "CamResult": "camscope.core.engine",
    "compute_cams": "camscope.core.engine",
    "load_model": "camscope.models",
    "Preprocess": "camscope.models",
    "run_explain": "camscope.pipeline",
    "ExplainOptions": "camscope.pipeline",
    "method_names": "camscope.methods.registry",
}


def __getattr__(name: str) -> Any:
    import importlib

    if name == "METHODS":
        from camscope.methods.registry import METHODS, method_names

        method_names()
        return METHODS
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'camscope' has no attribute {name!r}")


def explain(
    model: nn.Module,
    images: Any,
    *,
    layer: str | None = None,
    methods: Sequence[str] = ("gradcam", "ablationcam", "scorecam"),
    preprocess: Preprocess | None = None,
    targets: Sequence[int] | Sequence[Sequence[int]] | None = None,
    top_k: int = 1,
    smoothing: Sequence[str] | str | None = None,
    precision: str = "fp32",
    batch_size: int | None = None,
    progress: bool = False,
    compile: bool = False,
    freeze: bool | None = None,
    reshape: str = "auto",
) -> CamResult:
    """Class activation maps of any ``nn.Module`` classifier for one or more images.

    Args:
        model: the classifier (left unchanged: hooks, flags and ``.grad`` are restored).
        images: a path, a PIL image, a list of those, or a normalised tensor (B,3,H,W).
        layer: dotted path of the target layer (default: per architecture, else the last
            module with a spatial output).
        methods: registered method names (see ``camscope.METHODS``).
        preprocess: how photos become tensors (default: 224x224 resize, ImageNet statistics).
        targets: class per image (or list of classes per image); default: the top-k predicted.
        smoothing: ``"eigen"``, ``"aug"``, ``"eigen,aug"`` or a list of such variants.
        precision, batch_size, compile, freeze: speed settings of Score-/Ablation-CAM (see
            :class:`~camscope.core.engine.CamEngine`).
        reshape: how the layer's output becomes a (B, C, h, w) map: ``"auto"`` (default:
            transformer tokens and channels-last maps are detected), ``"none"``, ``"nhwc"``,
            ``"tokens:HxW[:skip=T]"`` (see :mod:`camscope.core.reshape`).
    Returns:
        a :class:`~camscope.core.engine.CamResult`; ``maps[name]`` is (B,k,H,W) in [0,1].
    """
    import torch

    from camscope.core.engine import compute_cams
    from camscope.models import Preprocess

    pre = preprocess or Preprocess()
    x = _as_batch(images, pre)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return compute_cams(
        model,
        x.to(device),
        layer=layer,
        methods=methods,
        targets=targets,
        top_k=top_k,
        smoothing=smoothing,
        normalization=pre.normalization,
        batch_size=batch_size,
        precision=precision,
        progress=progress,
        compile=compile,
        freeze=freeze,
        reshape=reshape,
    )


def _as_batch(images: Any, pre: Preprocess) -> Tensor:
    import torch

    if isinstance(images, torch.Tensor):
        return images[None] if images.dim() == 3 else images
    if isinstance(images, (str, Path)) or hasattr(images, "convert"):
        images = [images]
    from camscope.io.images import load_image

    tensors = [pre.to_tensor(load_image(im) if isinstance(im, (str, Path)) else im) for im in images]
    return torch.stack(tensors)
