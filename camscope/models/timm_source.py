"""timm classifiers: ``--model timm/NAME`` (optional extra ``camscope[timm]``).

Pretrained weights come through timm (from the Hugging Face hub, cached under its hub cache);
``--weights FILE`` loads a local state dict (``.safetensors`` or ``.pt``/``.pth``) into the
architecture built with random weights; ``--weights-tag none`` keeps random weights, any other
tag than the default (``IMAGENET1K_V1`` / ``DEFAULT``) picks timm's pretrained tag
(``NAME.TAG``). Preprocessing follows the model's pretrained config: input size,
interpolation, mean/std and crop fraction (``--preprocess weights``), or input size and mean/std
with a plain resize (``classic``). Class names come from timm's ImageNet-1k/-21k tables when the
model's head is one of those.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

import torch

from camscope.errors import UsageError, WeightsError
from camscope.io.checkpoint import load_checkpoint
from camscope.models.common import (
    PREPROCESS_MODES,
    LoadedModel,
    Preprocess,
    classifier_outputs,
    first_line,
    fit_state_dict,
    hub_cache_dir,
    interpolation_name,
    logger,
    require,
    seeded_random,
)
from camscope.models.hub import hub_access
from camscope.models.registry import ModelSource, ModelSpec, register_model_source
from camscope.names import RANDOM_WEIGHTS

PREFIX = "timm/"
_DEFAULT_TAGS = ("IMAGENET1K_V1", "DEFAULT")


def timm_model_names(pattern: str | None = None) -> list[str]:
    """timm's model names (``timm.list_models``), matching the fnmatch ``pattern`` if given."""
    timm = require("timm", "timm", "listing timm models")
    return list(timm.list_models(pattern or ""))


def _check_name(timm: Any, spec: str, name: str) -> None:
    if name and timm.is_model(name):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(name.split(".")[0], names, n=5)
    hint = f"did you mean: {', '.join(PREFIX + c for c in close)}?" if close else "see `camscope models --source timm`"
    raise UsageError(f"--model {spec}: {name!r} is not a timm model; {hint}")


def load_timm(model_spec: ModelSpec, device: str | torch.device = "cpu", progress: bool = True) -> LoadedModel:
    """Build ``timm/NAME`` with pretrained, local (``weights_file``) or random weights."""
    spec, weights_tag, weights_file = model_spec.name, model_spec.weights_tag, model_spec.weights_file
    preprocess, trust_checkpoint = model_spec.preprocess, model_spec.trust_checkpoint
    timm = require("timm", "timm", f"--model {spec}")
    if preprocess not in PREPROCESS_MODES:
        raise UsageError(f"unknown --preprocess {preprocess!r}; choose from: {', '.join(PREPROCESS_MODES)}")
    name = spec[len(PREFIX) :] if spec.startswith(PREFIX) else spec
    random = weights_file is None and (weights_tag is None or weights_tag.lower() == "none")
    if not random and weights_file is None and weights_tag not in _DEFAULT_TAGS and "." not in name:
        name = f"{name}.{weights_tag}"
    _check_name(timm, spec, name)

    if weights_file is not None:
        state = load_checkpoint(weights_file, trust=trust_checkpoint)
        model = timm.create_model(name, pretrained=False)
        outputs = classifier_outputs(state)
        if outputs is not None and outputs != getattr(model, "num_classes", outputs):
            model = timm.create_model(name, pretrained=False, num_classes=outputs)
        fit_state_dict(model, state, weights_file, spec)
        weights_desc = f"file:{weights_file}"
    elif random:
        with seeded_random():
            model = timm.create_model(name, pretrained=False)
        weights_desc = RANDOM_WEIGHTS
    else:
        model = _pretrained(timm, name, progress)
        tag = model.pretrained_cfg.get("tag")
        weights_desc = f"timm:{name}" + (f".{tag}" if tag and "." not in name else "")

    pre = timm_preprocess(timm, model, preprocess)
    categories, wnids = _class_names(timm, model)
    model = model.to(device).eval()
    return LoadedModel(model, spec, weights_desc, categories, pre, wnids, info={"source": "timm"})


def _pretrained(timm: Any, name: str, progress: bool) -> Any:
    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    cache = hub_cache_dir() if hub_id or cfg is None else Path(torch.hub.get_dir()) / "checkpoints"
    try:
        with hub_access():
            return timm.create_model(name, pretrained=True)
    except Exception as exc:  # offline, not cached, hash mismatch, ...
        where = f"huggingface.co/{hub_id}" if hub_id else "timm's URL"
        raise WeightsError(
            f"cannot get timm weights for {name}: download from {where} failed "
            f"({first_line(exc)}) and no cached copy is in {cache}; pass --weights FILE with a "
            "local state dict (.safetensors or .pt), or --weights-tag none for random weights"
        ) from None


def timm_preprocess(timm: Any, model: Any, mode: str) -> Preprocess:
    """Preprocessing from the model's pretrained data config (``resolve_data_config``)."""
    cfg = timm.data.resolve_data_config({}, model=model)
    h, w = (int(v) for v in cfg["input_size"][1:])
    mean, std = tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    interp = interpolation_name(cfg.get("interpolation", "bilinear"))
    if mode == "classic":
        return Preprocess("classic", (h, w), None, mean, std, interp)
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    crop_mode = cfg.get("crop_mode", "center")
    if crop_mode != "center":
        logger.warning("timm crop mode %r is approximated by a centre crop", crop_mode)
    return Preprocess("weights", (h, w), math.floor(min(h, w) / crop_pct), mean, std, interp)


def _class_names(timm: Any, model: Any) -> tuple[list[str] | None, list[str] | None]:
    """ImageNet-1k / -21k names (first synonym) and WordNet ids when the head is one of those."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if not subset:
            return None, None
        info = ImageNetInfo(subset)
        names = [d.split(",")[0].strip() for d in info.label_descriptions()]
        wnids = list(info.label_names())
    except Exception as exc:  # noqa: BLE001 - older timm, missing tables: no names, no error
        logger.debug("no timm class names: %s", exc)
        return None, None
    if len(names) != getattr(model, "num_classes", len(names)):
        return None, None
    return names, wnids if all(w.startswith("n") and w[1:].isdigit() for w in wnids[:5]) else None


def _reload(name: str, weights: str, weights_file: str | None) -> tuple[str, str | None]:
    """A recorded ``timm:NAME[.TAG]`` -> ``timm/NAME[.TAG]`` with its pretrained weights."""
    if weights.startswith("timm:"):
        return PREFIX + weights[len("timm:") :], "DEFAULT"
    return name, None


register_model_source(ModelSource(
    "timm", load_timm, _reload, prefix=PREFIX, list_names=timm_model_names, example="timm/convnext_tiny",
))
