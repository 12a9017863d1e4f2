"""Any model from an importable callable: ``--model my_pkg.models:build``.

The callable (a function or an ``nn.Module`` class, looked up with dots after the colon:
``pkg.mod:Factory.build``) is called without arguments and must return an ``nn.Module`` that maps
normalised images (B, 3, H, W) to logits. ``--weights FILE`` loads a state dict into it
(``.safetensors`` through the safetensors library, no pickle; ``.pt``/``.pth`` with
``weights_only=True``); ``--labels``, ``--input-size``, ``--mean`` and ``--std`` say the rest
(defaults: the input size the model declares, else 224x224, and ImageNet statistics).

A model may declare its own preprocessing as a ``camscope_preprocess`` attribute (a
:class:`~camscope.models.common.Preprocess`): its input size, mean, std and interpolation are then
the defaults, and with ``--preprocess weights`` its resize + centre crop is the transform (see
``examples/efficientnet_lite0.py``).
"""

from __future__ import annotations

import importlib
import re

import torch
from torch import nn

from camscope.core.reshape import model_input_size
from camscope.errors import UsageError
from camscope.io.checkpoint import load_checkpoint
from camscope.models.common import (
    PREPROCESS_MODES,
    LoadedModel,
    Preprocess,
    first_line,
    fit_state_dict,
    logger,
)
from camscope.models.registry import ModelSource, ModelSpec, register_model_source

_SPEC = re.compile(r"(?P<module>[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*):(?P<attr>[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)")


def is_import_spec(name: str) -> bool:
    """Whether ``name`` looks like ``package.module:callable``."""
    return _SPEC.fullmatch(name) is not None


def load_imported(model_spec: ModelSpec, device: str | torch.device = "cpu") -> LoadedModel:
    """Import and call ``spec`` (``pkg.mod:callable``), then load ``weights_file`` into it."""
    spec, weights_file = model_spec.name, model_spec.weights_file
    preprocess, trust_checkpoint = model_spec.preprocess, model_spec.trust_checkpoint
    m = _SPEC.fullmatch(spec)
    if m is None:
        raise UsageError(f"--model {spec!r}: expected package.module:callable")
    if preprocess not in PREPROCESS_MODES:
        raise UsageError(f"unknown --preprocess {preprocess!r}; choose from: {', '.join(PREPROCESS_MODES)}")
    try:
        obj: object = importlib.import_module(m.group("module"))
    except ImportError as exc:
        raise UsageError(
            f"--model {spec}: cannot import {m.group('module')!r} ({first_line(exc)}); is it "
            "installed or on PYTHONPATH?"
        ) from None
    for part in m.group("attr").split("."):
        if not hasattr(obj, part):
            raise UsageError(f"--model {spec}: {m.group('module')!r} has no attribute {m.group('attr')!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"--model {spec}: {m.group('attr')!r} is not callable")
    try:
        model = obj()
    except Exception as exc:  # the user's code: say where it failed, in one line
        raise UsageError(f"--model {spec}: calling it failed ({type(exc).__name__}: {first_line(exc)})") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"--model {spec}: returned a {type(model).__name__}, not a torch.nn.Module")
    weights_desc = "as built (no --weights)"
    if weights_file is not None:
        fit_state_dict(model, load_checkpoint(weights_file, trust=trust_checkpoint), weights_file, spec)
        weights_desc = f"file:{weights_file}"
    model = model.to(device).eval()
    return LoadedModel(model, spec, weights_desc, None, declared_preprocess(model, preprocess, spec), info={"source": "import"})


def declared_preprocess(model: nn.Module, mode: str, spec: str) -> Preprocess:
    """The model's ``camscope_preprocess`` in ``mode`` (``classic`` keeps its size, mean, std and
    interpolation and resizes the whole photo), else the classic resize to the size it declares."""
    declared = getattr(model, "camscope_preprocess", None)
    if declared is not None and not isinstance(declared, Preprocess):
        raise UsageError(f"--model {spec}: camscope_preprocess is a {type(declared).__name__}, not a camscope Preprocess")
    if declared is None:
        if mode == "weights":
            logger.warning("--model %s: no weights transform known; using the classic resize", spec)
        return Preprocess("classic", model_input_size(model) or (224, 224))
    if mode == "weights" and declared.mode == "weights":
        return declared
    return Preprocess("classic", declared.size, None, declared.mean, declared.std, declared.interpolation)


def _reload(name: str, weights: str, weights_file: str | None) -> tuple[str, str | None]:
    """The callable is called again; its weights, if any, come from ``weights_file``."""
    return name, None


register_model_source(ModelSource(
    "import", lambda spec, device, progress: load_imported(spec, device), _reload,
    claims=is_import_spec, example="mypkg.models:build",
))
