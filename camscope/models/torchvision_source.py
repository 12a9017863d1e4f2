"""torchvision classifiers: the weights API (downloaded with a progress bar on first use into
torch's hub cache), a local state dict, or random weights.

Offline with nothing cached, loading fails with one line naming ``--weights FILE`` and the cache
path.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from camscope.core.reshape import model_input_size
from camscope.errors import UsageError, WeightsError, first_line
from camscope.io.checkpoint import load_checkpoint
from camscope.models.common import (
    PREPROCESS_MODES,
    LoadedModel,
    Preprocess,
    classifier_outputs,
    fit_state_dict,
    imagenet_wnids,
    interpolation_name,
    logger,
    seeded_random,
)
from camscope.models.registry import ModelSource, ModelSpec, register_model_source
from camscope.names import RANDOM_WEIGHTS, is_random_weights


def classification_models() -> list[str]:
    """Names of torchvision's classification models."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _weights_enum(name: str):
    import torchvision.models as tvm

    return tvm.get_model_weights(name)


def _resolve_tag(name: str, tag: str | None):
    if tag is None or tag.lower() == "none":
        return None
    enum = _weights_enum(name)
    if tag == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[tag]
    except KeyError:
        raise UsageError(
            f"unknown --weights-tag {tag!r} for {name}; choose from: {', '.join(e.name for e in enum)}"
        ) from None


def cache_path_for(weights: Any) -> Path:
    """Where torch's hub cache keeps the file of a torchvision weights entry."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _download_state_dict(weights: Any, progress: bool) -> dict[str, Tensor]:
    path = cache_path_for(weights)
    try:
        return weights.get_state_dict(progress=progress, check_hash=True)
    except Exception as exc:  # URLError, OSError, hash mismatch, ...
        reason = first_line(getattr(exc, "reason", exc), 120)
        raise WeightsError(
            f"cannot get {weights} weights: download from {weights.url} failed ({reason}) and no "
            f"cached copy is at {path}; pass --weights FILE with a local state dict, or put the file "
            f"at that path"
        ) from None


def load_torchvision(model_spec: ModelSpec, device: str | torch.device = "cpu", progress: bool = True) -> LoadedModel:
    """Build a torchvision classifier with weights (``model_spec.name``: ``resnet50``...).

    ``weights_tag``: entry of the model's weights enum (``IMAGENET1K_V1``, ``DEFAULT``...), or
    ``None``/``"none"`` for random weights; with ``weights_file`` it still supplies the class
    names and preprocessing. ``preprocess``: ``"classic"`` (resize to 224x224) or ``"weights"``
    (the weights' transform).
    """
    import torchvision.models as tvm

    name, weights_tag, weights_file = model_spec.name, model_spec.weights_tag, model_spec.weights_file
    preprocess, trust_checkpoint = model_spec.preprocess, model_spec.trust_checkpoint

    if preprocess not in PREPROCESS_MODES:
        raise UsageError(f"unknown --preprocess {preprocess!r}; choose from: {', '.join(PREPROCESS_MODES)}")
    names = classification_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5)
        hint = f"did you mean: {', '.join(close)}?" if close else "see `camscope models`"
        raise UsageError(f"unknown model {name!r} (not a torchvision classification model); {hint}")
    weights = _resolve_tag(name, weights_tag)
    categories = list(weights.meta["categories"]) if weights is not None else None

    if weights_file is not None:
        state = load_checkpoint(weights_file, trust=trust_checkpoint)
        num_classes = classifier_outputs(state)
        kwargs: dict[str, Any] = {}
        if num_classes is not None and (categories is None or num_classes != len(categories)):
            kwargs["num_classes"] = num_classes
            categories = None
        model = tvm.get_model(name, weights=None, **kwargs)
        fit_state_dict(model, state, weights_file, name)
        weights_desc = f"file:{weights_file}"
    elif weights is not None:
        model = tvm.get_model(name, weights=None)
        model.load_state_dict(_download_state_dict(weights, progress))
        weights_desc = str(weights)
    else:
        with seeded_random():
            model = tvm.get_model(name, weights=None)
        weights_desc = RANDOM_WEIGHTS
        _warn_zero_head(model, name)

    pre = _preprocess_for(weights, preprocess, model_input_size(model))
    wnids = imagenet_wnids() if categories is not None and len(categories) == 1000 else None
    model = model.to(device).eval()
    return LoadedModel(model, name, weights_desc, categories, pre, wnids)


def _warn_zero_head(model: Any, name: str) -> None:
    """torchvision builds some classifiers (its ViTs) with an all-zero head: with random weights
    every logit is then 0 and every gradient 0, so gradient and ablation maps are blank."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if last and not bool(last[-1].weight.detach().any()):
        logger.warning(
            "%s with random weights: torchvision initialises its classifier head to zero, so every "
            "logit is 0 and gradient and ablation maps are blank; pass --weights FILE", name,
        )


def _preprocess_for(weights: Any, mode: str, declared: tuple[int, int] | None = None) -> Preprocess:
    """``classic``: resize to the size the model declares (ViTs: ``image_size``), else 224x224;
    ``weights``: the weights' own resize, crop, interpolation and statistics."""
    if mode == "classic" or weights is None:
        if mode == "weights":
            logger.warning("no weights transform known; using the classic resize")
        return Preprocess("classic", declared or (224, 224))
    t = weights.transforms()
    crop = int(t.crop_size[0])
    mode_ = getattr(t, "interpolation", "bilinear")
    return Preprocess(
        "weights", (crop, crop), int(t.resize_size[0]), tuple(t.mean), tuple(t.std),
        interpolation_name(getattr(mode_, "value", mode_)),
    )


def _reload(name: str, weights: str, weights_file: str | None) -> tuple[str, str | None]:
    """A recorded ``ResNet50_Weights.IMAGENET1K_V1`` -> its tag; a weights file keeps the
    ImageNet class names and preprocessing (tag ``IMAGENET1K_V1``)."""
    if "." in weights and not is_random_weights(weights):
        return name, weights.rsplit(".", 1)[1]
    return name, "IMAGENET1K_V1" if weights_file else None


def _names(pattern: str | None) -> list[str]:
    return classification_models()


register_model_source(ModelSource(
    "torchvision", load_torchvision, _reload, list_names=_names, fallback=True, example="resnet50",
))
