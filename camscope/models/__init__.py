"""Models, weights, class names and preprocessing, from four sources.

``load_model(name, ...)`` dispatches on the name:

- ``timm/NAME`` -> timm (:mod:`camscope.models.timm_source`, extra ``camscope[timm]``);
- ``hf/ORG/NAME`` or ``hf/PATH`` -> Hugging Face transformers
  (:mod:`camscope.models.hf_source`, extra ``camscope[hf]``);
- ``package.module:callable`` -> your own model (:mod:`camscope.models.import_source`);
- anything else -> torchvision (:mod:`camscope.models.torchvision_source`).

Every source returns a :class:`LoadedModel` whose ``model`` maps normalised images
(B, 3, H, W) to logits. Offline with nothing cached, loading pretrained weights fails with one
line naming ``--weights FILE`` and the cache path. ``--input-size``, ``--mean`` and ``--std``
(``input_size=``, ``mean=``, ``std=``) override any source's preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from camscope.errors import UsageError
from camscope.io.rundir import PYTHON_MODEL
from camscope.models.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PREPROCESS_MODES,
    LoadedModel,
    ModelSpec,
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
from camscope.models.torchvision_source import cache_path_for, classification_models

if TYPE_CHECKING:
    from camscope.io.rundir import RunSettings

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PREPROCESS_MODES",
    "Preprocess",
    "LoadedModel",
    "ModelSpec",
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

SOURCES = ("torchvision", "timm", "hf", "import")


def model_source(name: str) -> str:
    """``"timm"``, ``"hf"``, ``"import"`` or ``"torchvision"`` for a ``--model`` value."""
    from camscope.models.import_source import is_import_spec

    if name.startswith("timm/"):
        return "timm"
    if name.startswith("hf/"):
        return "hf"
    if is_import_spec(name):
        return "import"
    return "torchvision"


def load_model(
    name: str = "resnet50",
    *,
    weights_tag: str | None = "IMAGENET1K_V1",
    weights_file: str | Path | None = None,
    preprocess: str = "classic",
    device: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
    progress: bool = True,
    input_size: Sequence[int] | str | None = None,
    mean: Sequence[float] | str | None = None,
    std: Sequence[float] | str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Build a classifier with weights, from torchvision, timm, Hugging Face or an import path.

    Args:
        name: ``resnet50`` (any torchvision classifier), ``timm/NAME``, ``hf/ORG/NAME``,
            ``hf/PATH`` or ``package.module:callable``.
        weights_tag: torchvision: entry of the weights enum (``IMAGENET1K_V1``, ``DEFAULT``...);
            timm / Hugging Face: the default (``IMAGENET1K_V1``/``DEFAULT``) means their pretrained
            weights, another value timm's pretrained tag; ``None``/``"none"``: random weights.
        weights_file: a local state dict (``.safetensors``, or ``.pt``/``.pth`` loaded with
            ``weights_only=True``).
        preprocess: ``"classic"`` (resize the photo to the input size) or ``"weights"`` (the
            weights' own resize and centre crop).
        input_size, mean, std: override the source's input size ((H, W) or ``"HxW"``) and
            normalisation.
        trust_remote_code: Hugging Face models only: allow code from the model's repository.
    """
    spec = ModelSpec(
        name, weights_tag, None if weights_file is None else str(weights_file), preprocess, None,
        trust_checkpoint, input_size, mean, std, trust_remote_code,
    )  # fmt: skip
    return load_spec(spec, device, progress=progress)


def load_spec(spec: ModelSpec, device: str | torch.device = "cpu", *, progress: bool = True) -> LoadedModel:
    """Build the model a :class:`ModelSpec` names, from its source (module docstring), with the
    spec's preprocessing overrides and class names."""
    source = model_source(spec.name)
    if spec.trust_remote_code and source != "hf":
        raise UsageError("--trust-remote-code applies to Hugging Face models (--model hf/...) only")
    if source == "timm":
        from camscope.models.timm_source import load_timm

        loaded = load_timm(spec, device, progress)
    elif source == "hf":
        from camscope.models.hf_source import load_hf

        loaded = load_hf(spec, device, progress)
    elif source == "import":
        from camscope.models.import_source import load_imported

        loaded = load_imported(spec, device)
    else:
        from camscope.models.torchvision_tasks import load_task_model, model_task

        if model_task(spec.name) is not None:  # segmenters and detectors
            loaded = load_task_model(spec, device, progress)
        else:
            from camscope.models.torchvision_source import load_torchvision

            loaded = load_torchvision(spec, device, progress)
    input_size, mean, std = spec.input_size, spec.mean, spec.std
    size = parse_input_size(input_size)
    m = parse_channels(mean, "--mean") if mean is not None else None
    s = parse_channels(std, "--std") if std is not None else None
    if size is not None or m is not None or s is not None:
        loaded.preprocess = loaded.preprocess.with_overrides(size, m, s)
    if spec.labels and spec.labels.strip().lower() == "imagenet":  # the bundled ImageNet-1k names and WordNet ids
        loaded.categories, loaded.wnids = imagenet_categories(), imagenet_wnids()
    elif spec.labels:
        loaded.categories = load_class_names(spec.labels)
    return loaded


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


def list_models(source: str = "all", pattern: str | None = None) -> list[str]:
    """Model names for ``camscope models``: torchvision's, then timm's as ``timm/NAME`` (when
    timm is installed); ``pattern`` is an fnmatch pattern on the name without the prefix."""
    import fnmatch

    if source not in ("all", "torchvision", "timm"):
        raise UsageError(f"unknown --source {source!r}; choose from: all, torchvision, timm")
    out: list[str] = []
    if source in ("all", "torchvision"):
        out += [n for n in classification_models() if pattern is None or fnmatch.fnmatch(n, pattern)]
    if source in ("all", "timm"):
        try:
            import timm  # noqa: F401
        except ImportError:
            if source == "timm":
                raise UsageError('listing timm models needs timm: pip install "camscope[timm]"') from None
            return out
        from camscope.models.timm_source import timm_model_names

        out += [f"timm/{n}" for n in timm_model_names(pattern)]
    return out


def load_from_settings(
    settings: RunSettings,
    *,
    weights_file: str | Path | None = None,
    device: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Rebuild the model of a finished run from its manifest ``settings``.

    A run made with ``--weights FILE`` is reloaded from that file unless ``weights_file`` says
    otherwise; a torchvision run made with a weights tag is reloaded through the weights API, a
    timm or Hugging Face run with pretrained weights through timm / the hub (or its cache), an
    import-path run by calling the callable again. The preprocessing is the manifest's.
    """
    name = settings.model
    weights = settings.weights
    if weights == PYTHON_MODEL and weights_file is None:
        raise UsageError(
            f"the run's model {name!r} was {PYTHON_MODEL} and cannot be rebuilt by name; "
            "measure with camscope.report(DIR, model=model) from Python"
        )
    source = model_source(name)
    tag: str | None = None
    if weights_file is None and weights.startswith("file:"):
        weights_file = weights[len("file:") :]
    elif source == "timm" and weights.startswith("timm:"):
        name, tag = "timm/" + weights[len("timm:") :], "DEFAULT"
    elif source == "hf" and weights.startswith("hf:"):
        tag = "DEFAULT"
    elif source == "torchvision" and "." in weights and not settings.random_weights:
        tag = weights.rsplit(".", 1)[1]
    if tag is None and source == "torchvision" and weights_file:
        tag = "IMAGENET1K_V1"
    mode = settings.preprocess.get("mode", "classic")
    loaded = load_model(
        name,
        weights_tag=tag,
        weights_file=weights_file,
        preprocess=mode,
        device=device,
        trust_checkpoint=trust_checkpoint,
        progress=progress,
        trust_remote_code=trust_remote_code,
    )
    if settings.preprocess:
        loaded.preprocess = preprocess_from_description(settings.preprocess)
    return loaded

