"""Models, weights, class names and preprocessing, from registered model sources.

``load_model(name, ...)`` dispatches on the name through the model-source registry
(:mod:`camscope.models.registry`; importing this package registers the built-in sources):

- ``timm/NAME`` -> timm (:mod:`camscope.models.timm_source`, extra ``camscope[timm]``);
- ``hf/ORG/NAME`` or ``hf/PATH`` -> Hugging Face transformers
  (:mod:`camscope.models.hf_source`, extra ``camscope[hf]``);
- ``open_clip/ARCH`` -> a CLIP model of open_clip (:mod:`camscope.models.open_clip_source`, extra
  ``camscope[clip]``; explained with ``--task embed`` or ``--task zeroshot``);
- ``package.module:callable`` -> your own model (:mod:`camscope.models.import_source`);
- anything else -> torchvision (:mod:`camscope.models.torchvision_source`).

Every source returns a :class:`LoadedModel` whose ``model`` maps normalised images
(B, 3, H, W) to logits. Offline with nothing cached, loading pretrained weights fails with one
line naming ``--weights FILE`` and the cache path. ``--input-size``, ``--mean`` and ``--std``
(``input_size=``, ``mean=``, ``std=``) override any source's preprocessing.
"""

from __future__ import annotations

import torch
from torch import nn

from camscope.errors import UsageError
from camscope.models.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PREPROCESS_MODES,
    LoadedModel,
    Preprocess,
    class_index,
    imagenet_categories,
    imagenet_wnids,
    load_class_names,
    parse_channels,
    parse_input_size,
    preprocess_from_description,
    wnid_from_name,
)
from camscope.models.registry import (
    MODEL_SOURCES,
    ModelSource,
    ModelSpec,
    RecordedModel,
    list_models,
    load_from_settings,
    load_model,
    load_spec,
    model_source,
    register_model_source,
    source_of,
)

# The built-in model sources register themselves; prefixes first, torchvision takes the rest.
from camscope.models import timm_source, hf_source, open_clip_source, import_source, torchvision_tasks  # noqa: E402,F401  isort: skip
from camscope.models.torchvision_source import cache_path_for, classification_models  # noqa: E402  isort: skip
from camscope.names import PYTHON_MODEL  # noqa: E402  isort: skip

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PREPROCESS_MODES",
    "Preprocess",
    "LoadedModel",
    "ModelSpec",
    "ModelSource",
    "MODEL_SOURCES",
    "register_model_source",
    "source_of",
    "RecordedModel",
    "load_model",
    "load_spec",
    "loaded_from_module",
    "pick_device",
    "load_from_settings",
    "model_source",
    "list_models",
    "classification_models",
    "cache_path_for",
    "imagenet_categories",
    "imagenet_wnids",
    "wnid_from_name",
    "load_class_names",
    "class_index",
    "preprocess_from_description",
    "parse_input_size",
    "parse_channels",
]


def pick_device(spec: str | torch.device | None) -> torch.device:
    """``--device``: CUDA when available for ``None``/``"auto"``; a clear error for bad values."""
    if isinstance(spec, torch.device):
        return spec
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"unknown --device {spec!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {spec}: CUDA is not available on this machine")
    return dev


def loaded_from_module(model: nn.Module, preprocess: Preprocess | None = None) -> LoadedModel:
    """Any ``nn.Module`` as a :class:`LoadedModel`: named by its class, no class names, weights
    described as given from Python (a run made with it cannot rebuild it by name)."""
    return LoadedModel(model, type(model).__name__, PYTHON_MODEL, None, preprocess or Preprocess())
