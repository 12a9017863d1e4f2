"""Where a model comes from: :class:`ModelSpec` (the ``--model`` options) and the registry of
model sources that build it.

A *model source* is one file and one registration, like a method::

    # mypkg/my_source.py
    from camscope.models.registry import ModelSource, register_model_source

    def load_mine(spec, device, progress):          # -> LoadedModel (model, name, weights, ...)
        ...
    register_model_source(ModelSource(
        name="mine", prefix="mine/", load=load_mine,
        reload=lambda name, weights, weights_file: (name, None if weights == RANDOM_WEIGHTS else "DEFAULT"),
    ))

``load`` builds the model and records in ``LoadedModel.weights`` how its weights came about
(that string goes into the run's manifest); ``reload`` is its inverse, the weights parsing
that rebuilds a finished run's model from its manifest (``load_from_settings``); ``list_names``
(optional) feeds ``camscope models --source NAME``. The built-in sources register in
:mod:`camscope.models` (``timm/``, ``hf/``, ``package.module:callable``, then torchvision for
every other name).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from camscope.errors import UsageError
from camscope.models.common import (
    LoadedModel,
    imagenet_categories,
    imagenet_wnids,
    load_class_names,
    parse_channels,
    parse_input_size,
    preprocess_from_description,
)
from camscope.names import PYTHON_MODEL

__all__ = [
    "ModelSpec",
    "ModelSource",
    "MODEL_SOURCES",
    "register_model_source",
    "source_of",
    "model_source",
    "load_spec",
    "load_model",
    "load_from_settings",
    "list_models",
    "RecordedModel",
]


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from: the ``--model``, ``--weights-tag``, ``--weights``,
    ``--preprocess``, ``--labels``, ``--trust-checkpoint``, ``--input-size``, ``--mean``,
    ``--std`` and ``--trust-remote-code`` options; picklable, so that the CLI, a run and a
    remote worker build the same model with :meth:`load`."""

    name: str = "resnet50"
    weights_tag: str | None = "IMAGENET1K_V1"
    weights_file: str | None = None
    preprocess: str = "classic"
    labels: str | None = None
    trust_checkpoint: bool = False
    input_size: Any = None
    """``(H, W)`` or ``"HxW"`` / ``"N"``: overrides the source's input size."""
    mean: Any = None
    std: Any = None
    trust_remote_code: bool = False

    def load(self, device: str | torch.device = "cpu", *, progress: bool = True) -> LoadedModel:
        """Build the model (:func:`load_spec`)."""
        return load_spec(self, device, progress=progress)


Loader = Callable[[ModelSpec, "str | torch.device", bool], LoadedModel]
"""``load(spec, device, progress)`` -> the model with its name, weights description, class
names and preprocessing."""
Reloader = Callable[[str, str, "str | None"], "tuple[str, str | None]"]
"""``reload(name, weights, weights_file)`` -> the ``(name, weights_tag)`` that rebuild a run's
model from its recorded ``--model`` name and weights description (``""`` when the weights came
from a file, which is then ``weights_file``)."""


@dataclass(frozen=True)
class ModelSource:
    """One way of building a model from a ``--model`` value (see the module docstring)."""

    name: str
    """Short name: ``camscope models --source NAME``, ``LoadedModel.info['source']``."""
    load: Loader
    reload: Reloader
    prefix: str | None = None
    """The ``--model`` prefix that selects this source (``"timm/"``); None with ``claims``."""
    claims: Callable[[str], bool] | None = None
    """Instead of a prefix: whether a ``--model`` value is this source's (import paths)."""
    list_names: Callable[[str | None], list[str]] | None = None
    """The names ``camscope models`` lists (``pattern`` is an fnmatch pattern), when it can."""
    fallback: bool = False
    """Takes every name no other source claims (torchvision); at most one source."""
    example: str = ""
    """A ``--model`` value, for help and docs."""

    def owns(self, name: str) -> bool:
        if self.fallback:
            return True
        if self.prefix is not None:
            return name.startswith(self.prefix)
        return self.claims is not None and self.claims(name)


MODEL_SOURCES: dict[str, ModelSource] = {}
"""The registered sources, by name, in registration order."""


def register_model_source(source: ModelSource) -> ModelSource:
    """Add a model source (replacing one of the same name)."""
    if source.prefix is None and source.claims is None and not source.fallback:
        raise ValueError(f"model source {source.name!r} needs a prefix, claims= or fallback=True")
    if source.fallback and any(s.fallback and s.name != source.name for s in MODEL_SOURCES.values()):
        raise ValueError("only one model source can be the fallback")
    MODEL_SOURCES[source.name] = source
    return source


def source_of(name: str) -> ModelSource:
    """The source a ``--model`` value belongs to: the first registered that claims it, else the
    fallback."""
    for source in sorted(MODEL_SOURCES.values(), key=lambda s: s.fallback):
        if source.owns(name):
            return source
    raise UsageError(f"--model {name!r}: no model source takes it (sources: {', '.join(MODEL_SOURCES)})")


def model_source(name: str) -> str:
    """The name of the source of a ``--model`` value (``"timm"``, ``"torchvision"``, ...)."""
    return source_of(name).name


def load_spec(spec: ModelSpec, device: str | torch.device = "cpu", *, progress: bool = True) -> LoadedModel:
    """Build the model a :class:`ModelSpec` names, from its source, with the spec's
    preprocessing overrides and class names."""
    source = source_of(spec.name)
    if spec.trust_remote_code and source.name != "hf":
        raise UsageError("--trust-remote-code applies to Hugging Face models (--model hf/...) only")
    loaded = source.load(spec, device, progress)
    size = parse_input_size(spec.input_size)
    m = parse_channels(spec.mean, "--mean") if spec.mean is not None else None
    s = parse_channels(spec.std, "--std") if spec.std is not None else None
    if size is not None or m is not None or s is not None:
        loaded.preprocess = loaded.preprocess.with_overrides(size, m, s)
    if spec.labels and spec.labels.strip().lower() == "imagenet":  # the bundled ImageNet-1k names and WordNet ids
        loaded.categories, loaded.wnids = imagenet_categories(), imagenet_wnids()
    elif spec.labels:
        loaded.categories = load_class_names(spec.labels)
    return loaded


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
            ``hf/PATH`` or ``package.module:callable`` (or a registered source's prefix).
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


def list_models(source: str = "all", pattern: str | None = None) -> list[str]:
    """Model names for ``camscope models``: every listing source's (``all``) or one source's;
    ``pattern`` is an fnmatch pattern on the name without the prefix. A source whose package is
    missing is skipped under ``all`` and explained when asked for by name."""
    listing = [s for s in MODEL_SOURCES.values() if s.list_names is not None]
    if source != "all" and source not in {s.name for s in listing}:
        raise UsageError(f"unknown --source {source!r}; choose from: all, {', '.join(s.name for s in listing)}")
    out: list[str] = []
    for s in sorted(listing, key=lambda s: not s.fallback):  # the fallback's (torchvision) first
        if source not in ("all", s.name):
            continue
        assert s.list_names is not None
        try:
            names = s.list_names(pattern)
        except UsageError:
            if source == s.name:
                raise
            continue
        out += [f"{s.prefix or ''}{n}" for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]
    return out


def listing_sources() -> list[str]:
    """Names of the sources ``camscope models --source`` can list."""
    return [s.name for s in MODEL_SOURCES.values() if s.list_names is not None]


class RecordedModel(Protocol):
    """What a run records about its model (``RunSettings`` of :mod:`camscope.io.rundir` is one):
    the ``--model`` name, the weights description and the preprocessing description."""

    model: str
    weights: str
    preprocess: dict


def load_from_settings(
    settings: RecordedModel,
    *,
    weights_file: str | Path | None = None,
    device: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Rebuild the model of a finished run from its manifest ``settings``.

    A run made with ``--weights FILE`` is reloaded from that file unless ``weights_file`` says
    otherwise; otherwise the source's ``reload`` turns the recorded weights description back
    into a weights tag (torchvision's weights API, timm's or the hub's pretrained weights, an
    import-path callable called again). The preprocessing is the manifest's.
    """
    name = settings.model
    weights = settings.weights
    if weights == PYTHON_MODEL and weights_file is None:
        raise UsageError(
            f"the run's model {name!r} was {PYTHON_MODEL} and cannot be rebuilt by name; "
            "measure with camscope.report(DIR, model=model) from Python"
        )
    if weights_file is None and weights.startswith("file:"):
        weights_file, weights = weights[len("file:") :], ""
    name, tag = source_of(name).reload(name, weights, None if weights_file is None else str(weights_file))
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
