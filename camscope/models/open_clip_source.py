"""CLIP models from open_clip: ``--model open_clip/ViT-B-32`` (extra ``camscope[clip]``).

The architecture names are open_clip's (``camscope models --source open_clip``). Weights:
``--weights-tag none`` random (built offline from the bundled config), ``--weights FILE`` a local
state dict, otherwise open_clip's pretrained tag (the default tag means ``openai`` where open_clip
has it, else its first tag for the architecture), downloaded by open_clip. Preprocessing: the
model's own input size, mean and std (bicubic). A CLIP model is explained through its task:
``--task embed --concept TEXT|IMAGE`` (its image tower) or ``--task zeroshot --labels PROMPTS``
(:mod:`camscope.models.clip`, :mod:`camscope.run.tasks`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from camscope.errors import UsageError, WeightsError
from camscope.io.checkpoint import load_checkpoint
from camscope.models.common import (
    PREPROCESS_MODES,
    LoadedModel,
    Preprocess,
    first_line,
    fit_state_dict,
    require,
    seeded_random,
)
from camscope.models.hub import hub_access
from camscope.models.registry import ModelSource, ModelSpec, register_model_source
from camscope.names import RANDOM_WEIGHTS

__all__ = ["PREFIX", "load_open_clip", "open_clip_names"]

PREFIX = "open_clip/"
_DEFAULT_TAGS = ("IMAGENET1K_V1", "DEFAULT")


def open_clip_names(pattern: str | None = None) -> list[str]:
    """open_clip's architecture names."""
    return list(require("open_clip", "clip", "listing open_clip models").list_models())


def load_open_clip(spec: ModelSpec, device: str | torch.device = "cpu", progress: bool = True) -> LoadedModel:
    """Build ``open_clip/ARCH`` with random, local or pretrained weights (see the module)."""
    open_clip = require("open_clip", "clip", f"--model {spec.name}")
    if spec.preprocess not in PREPROCESS_MODES:
        raise UsageError(f"unknown --preprocess {spec.preprocess!r}; choose from: {', '.join(PREPROCESS_MODES)}")
    arch = spec.name[len(PREFIX) :]
    if arch not in open_clip.list_models():
        raise UsageError(f"--model {spec.name}: open_clip has no architecture {arch!r} (camscope models --source open_clip)")
    tag = spec.weights_tag
    if spec.weights_file is not None:
        with seeded_random(), _quiet():
            model = open_clip.create_model(arch, pretrained=None)
        fit_state_dict(model, load_checkpoint(spec.weights_file, trust=spec.trust_checkpoint), spec.weights_file, spec.name)
        desc = f"file:{spec.weights_file}"
    elif tag is None or tag.lower() == "none":
        with seeded_random(), _quiet():  # open_clip warns on the root logger that no weights were loaded
            model = open_clip.create_model(arch, pretrained=None)
        desc = RANDOM_WEIGHTS
    else:
        tags = [t for a, t in open_clip.list_pretrained() if a == arch]
        if tag in _DEFAULT_TAGS:
            if not tags:
                raise UsageError(f"open_clip has no pretrained weights for {arch}; --weights-tag none for random weights")
            tag = "openai" if "openai" in tags else tags[0]
        elif tag not in tags:
            raise UsageError(f"unknown --weights-tag {tag!r} for open_clip/{arch}; choose from: {', '.join(tags) or 'none'}")
        try:
            with hub_access():
                model = open_clip.create_model(arch, pretrained=tag)
        except Exception as exc:  # offline, not cached, ...
            raise WeightsError(
                f"cannot get open_clip weights {arch}:{tag} ({first_line(exc)}); pass --weights FILE with a local "
                "state dict, or --weights-tag none for random weights"
            ) from None
        desc = f"open_clip:{arch}:{tag}"
    pre = _preprocess(model)
    return LoadedModel(model.to(device).eval(), spec.name, desc, None, pre, info={"source": "open_clip"})


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _preprocess(model: Any) -> Preprocess:
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    size = cfg.get("size") or model.visual.image_size
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    mean = tuple(float(v) for v in cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
    std = tuple(float(v) for v in cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
    return Preprocess("classic", (h, w), None, mean, std, "bicubic")


def _reload(name: str, weights: str, weights_file: str | None) -> tuple[str, str | None]:
    """A recorded ``open_clip:ARCH:TAG`` -> its pretrained tag; random stays random."""
    if weights.startswith("open_clip:"):
        return PREFIX + weights.split(":")[1], weights.split(":")[2]
    return name, None


register_model_source(ModelSource(
    "open_clip", load_open_clip, _reload, prefix=PREFIX, list_names=open_clip_names, example="open_clip/ViT-B-32",
))
