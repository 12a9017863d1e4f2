"""torchvision segmenters and detectors: building them, their task, preprocessing and class names.

* Segmentation (``torchvision.models.segmentation``: FCN, DeepLabV3, LRASPP): input normalised
  with ImageNet statistics, output ``{"out": (N, C, H, W)}`` logits at the input's size (task
  ``segment``); class names: the 21 Pascal VOC categories of their weights.
* Detection (``torchvision.models.detection``: Faster R-CNN v1/v2, RetinaNet, FCOS, SSD,
  SSDlite, Mask R-CNN, Keypoint R-CNN): the model takes *unnormalised* images in [0, 1] of any
  size (its own transform resizes and normalises them) and returns one dict of ``boxes``
  (in input pixels), ``labels`` and ``scores`` per image (task ``detect``; Mask R-CNN's boxes are
  explained, its masks not); class names: the 91 COCO categories.

Default layers (:func:`camscope.core.layers.default_layer`): the backbone's last stage. For the
FPN detectors that is ``backbone.body.layer4`` (C5, stride 32), not an FPN level: every FPN level
P2..P7 is computed from C5 through the top-down path, but a box is pooled from one level only
(chosen by its size, Lin et al. 2017, Eq. 1) and an anchor belongs to one level, so one level's
output explains only the detections of its scale and leaves the others blank; C5 is the last
single tensor every detection depends on. For small objects a finer level can be given
(``layer="backbone.fpn.layer_blocks[1]"``: P3, stride 8). SSD: ``backbone.features`` (VGG's
conv4_3, stride 8, the input of the first head and of every extra layer); SSDlite:
``backbone.features[0]`` (stride 16, the same role).

Detectors cannot be traced by ``torch.fx`` (their transform and post-processing loop over
images and depend on data), so they are split with hooks: every tail call is a full forward,
and Ablation-CAM costs one full forward per live channel (2048 for C5 of a ResNet-50) instead of
the tail's small share of one.
"""

from __future__ import annotations

from typing import Any

import torch

from camscope.errors import UsageError
from camscope.models.common import (
    DETECTION_INPUT_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LoadedModel,
    Preprocess,
    seeded_random,
)
from camscope.models.registry import ModelSource, ModelSpec, register_model_source
from camscope.models.torchvision_source import _download_state_dict, _reload
from camscope.names import RANDOM_WEIGHTS

__all__ = ["task_models", "model_task", "load_task_model", "DETECTION_INPUT_SIZE"]



def task_models() -> dict[str, str]:
    """torchvision's segmentation and detection model names -> their task."""
    import torchvision.models as tvm

    out = {n: "segment" for n in tvm.list_models(module=tvm.segmentation)}
    out.update({n: "detect" for n in tvm.list_models(module=tvm.detection)})
    return out


def model_task(name: str) -> str | None:
    """``"segment"`` / ``"detect"`` for a torchvision segmentation / detection model name."""
    return task_models().get(name)


def load_task_model(spec: ModelSpec, device: str | torch.device = "cpu", progress: bool = True, **kwargs: Any) -> LoadedModel:
    """Build a torchvision segmenter or detector (random weights with ``weights_tag`` None or
    ``"none"``; the classifiers' default tag ``IMAGENET1K_V1`` means the model's DEFAULT
    weights). ``kwargs`` go to the builder (``num_classes``, ``min_size``,
    ``box_score_thresh``...)."""
    import torchvision.models as tvm

    name = spec.name
    task = model_task(name)
    if task is None:
        raise UsageError(f"{name!r} is not a torchvision segmentation or detection model")
    tag = spec.weights_tag
    weights = None
    if tag is not None and tag.lower() != "none":
        enum = tvm.get_model_weights(name)
        try:
            weights = enum.DEFAULT if tag in ("DEFAULT", "IMAGENET1K_V1") else enum[tag]
        except KeyError:
            raise UsageError(f"unknown --weights-tag {tag!r} for {name}; choose from: "
                             f"{', '.join(e.name for e in enum)}") from None
    categories = list(weights.meta["categories"]) if weights is not None else None
    if spec.weights_file is not None:
        from camscope.io.checkpoint import load_checkpoint
        from camscope.models.common import fit_state_dict

        state = load_checkpoint(spec.weights_file, trust=spec.trust_checkpoint)
        model = tvm.get_model(name, weights=None, weights_backbone=None, **kwargs)
        fit_state_dict(model, state, spec.weights_file, name)
        desc = f"file:{spec.weights_file}"
    elif weights is not None:
        model = tvm.get_model(name, weights=None, weights_backbone=None,
                              num_classes=len(weights.meta["categories"]), **kwargs)
        model.load_state_dict(_download_state_dict(weights, progress))
        desc = str(weights)
    else:
        with seeded_random():
            model = tvm.get_model(name, weights=None, weights_backbone=None, **kwargs)
        desc = RANDOM_WEIGHTS
    if categories is None:
        meta = tvm.get_model_weights(name).DEFAULT.meta
        n = _num_classes(model)
        if n is not None and n == len(meta["categories"]):
            categories = list(meta["categories"])
    if task == "segment":
        pre = Preprocess("classic", (520, 520), None, IMAGENET_MEAN, IMAGENET_STD)
    else:
        pre = Preprocess("classic", DETECTION_INPUT_SIZE, None, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    loaded = LoadedModel(model.to(device).eval(), name, desc, categories, pre)
    loaded.info["task"] = task
    return loaded


def _num_classes(model: torch.nn.Module) -> int | None:
    """Number of classes of a torchvision segmenter / detector (its last classifier's outputs)."""
    for path in ("roi_heads.box_predictor.cls_score", "classifier.4", "classifier.high_classifier"):
        try:
            m = model.get_submodule(path)
        except AttributeError:
            continue
        return int(getattr(m, "out_features", getattr(m, "out_channels", 0))) or None
    head = getattr(getattr(model, "head", None), "classification_head", None)
    return getattr(head, "num_classes", None)


def _names(pattern: str | None) -> list[str]:
    return sorted(task_models())


# torchvision's segmenters and detectors: claimed before the torchvision classifiers (the fallback).
register_model_source(ModelSource(
    "torchvision-tasks", load_task_model, _reload, claims=lambda name: model_task(name) is not None,
    list_names=_names, example="deeplabv3_resnet50",
))
