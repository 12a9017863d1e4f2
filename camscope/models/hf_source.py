"""Hugging Face transformers image models: ``--model hf/ORG/NAME`` or ``hf/PATH`` (optional
extra ``camscope[hf]``): classifiers, semantic segmenters (SegFormer) and object detectors (DETR).

The task comes from the model (:func:`hf_task`: its config's ``architectures``, e.g.
``SegformerForSemanticSegmentation`` -> ``segment``, ``DetrForObjectDetection`` -> ``detect``,
else ``classify``), so ``--task`` defaults right. A thin adapter makes the transformers model
a plain ``nn.Module`` from normalised images (B, 3, H, W) to what the task's targets read:

* :class:`HuggingFaceClassifier`: logits (B, C) (``output.logits``), and what the reshape
  needs (patch size, prefix tokens, input size);
* :class:`HuggingFaceSegmenter`: per-pixel logits (B, C, h, w) at the model's own resolution
  (SegFormer: h = H/4; not upsampled: a segment target's region is made at that resolution,
  see :class:`camscope.targets.SegmentRegion`);
* :class:`HuggingFaceDetector`: one ``{"boxes", "labels", "scores"}`` dict per image, every
  query of a set-prediction detector (:func:`camscope.targets.detection.set_detections`:
  boxes in input pixels, scores the softmax without the no-object class), as torchvision
  detectors return, so the detection target (and pytorch-grad-cam's
  ``FasterRCNNBoxScoreTarget``) read it unchanged. Weights come from the hub
(cached in its hub cache) or from a local folder written by ``save_pretrained`` (works offline);
``.safetensors`` files are preferred to pickled ones. Code from the hub (``auto_map`` in the
config) never runs unless ``trust_remote_code=True`` (``--trust-remote-code``); without it such
a model is refused in one line. Labels come from ``config.id2label``, preprocessing from the
image processor's config (``preprocessor_config.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from camscope.errors import UsageError, WeightsError
from camscope.io.checkpoint import load_checkpoint
from camscope.models.common import (
    DETECTION_INPUT_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PREPROCESS_MODES,
    LoadedModel,
    Preprocess,
    first_line,
    fit_state_dict,
    hub_cache_dir,
    imagenet_wnids_if,
    interpolation_name,
    logger,
    require,
    seeded_random,
)
from camscope.models.hub import hub_access
from camscope.models.registry import ModelSource, ModelSpec, register_model_source
from camscope.names import RANDOM_WEIGHTS
from camscope.targets.detection import set_detections

PREFIX = "hf/"

#: Prefix tokens (class, distillation, register) before the patch tokens, by ``model_type``.
PREFIX_TOKENS = {
    "vit": 1, "vit_msn": 1, "vit_mae": 1, "deit": 2, "beit": 1, "data2vec-vision": 1,
    "dinov2": 1, "dinov2_with_registers": 1, "ijepa": 0, "swin": 0, "swinv2": 0,
}  # fmt: skip


class HuggingFaceClassifier(nn.Module):
    """``hf(pixel_values=x).logits`` as a plain module: (B, 3, H, W) -> (B, num_labels).

    ``hf`` is the transformers model (its parameters are this module's). ``patch_size``,
    ``num_prefix_tokens`` and ``image_size`` are read from its config, for the token reshape
    and the default input size.
    """

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf
        cfg = hf.config
        self.model_type = str(getattr(cfg, "model_type", ""))
        patch = getattr(cfg, "patch_size", None)
        self.patch_size = patch if isinstance(patch, (int, tuple, list)) else None
        size = getattr(cfg, "image_size", None)
        self.image_size = size if isinstance(size, (int, tuple, list)) else None
        prefix = PREFIX_TOKENS.get(self.model_type)
        if prefix is not None and self.model_type == "dinov2_with_registers":
            prefix += int(getattr(cfg, "num_register_tokens", 0) or 0)
        self.num_prefix_tokens = prefix

    def forward(self, x: Tensor) -> Tensor:
        return self.hf(pixel_values=x).logits


SEGFORMER_LAYER_REASON = (
    "SegFormer: the encoder's last stage (hf.segformer.stages[-1], stride 32, the widest "
    "channels), the counterpart of the backbone's last stage of torchvision's segmenters; the "
    "decode head's fused map (decode_head.activation, stride 4) feeds a 1x1 classifier, so "
    "Grad-CAM there is the class's own logit map and says nothing the prediction does not"
)
DETR_LAYER_REASON = (
    "DETR: the input projection (hf.model.input_projection, d_model channels, stride 32): the "
    "backbone's last stage projected by a 1x1 convolution, the last spatial map and the whole "
    "input of the transformer, on which every query's detection depends; Ablation-CAM ablates "
    "d_model (256) channels there instead of C5's 2048"
)


class HuggingFaceSegmenter(nn.Module):
    """``hf(pixel_values=x).logits`` as a plain module: (B, 3, H, W) -> per-pixel logits
    (B, C, h, w) at the model's resolution (SegFormer: H/4 x W/4; Xie et al. 2021, Sec. 3.2).

    ``default_layers``: candidate CAM layers, first existing wins (:data:`SEGFORMER_LAYER_REASON`).
    """

    default_layers = ("hf.segformer.stages[-1]",)

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf
        self.model_type = str(getattr(hf.config, "model_type", ""))

    def forward(self, x: Tensor) -> Tensor:
        return self.hf(pixel_values=x).logits


class HuggingFaceDetector(nn.Module):
    """A set-prediction detector (DETR; Carion et al. 2020) as a plain module: (B, 3, H, W) ->
    one ``{"boxes", "labels", "scores"}`` dict per image with every query
    (:func:`~camscope.targets.detection.set_detections` of ``logits`` (B, Q, C+1) and
    ``pred_boxes`` (B, Q, 4), normalised cx, cy, w, h).

    ``default_layers``: candidate CAM layers, first existing wins (:data:`DETR_LAYER_REASON`).
    """

    default_layers = ("hf.model.input_projection",)

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf
        self.model_type = str(getattr(hf.config, "model_type", ""))

    def forward(self, x: Tensor) -> list[dict[str, Tensor]]:
        out = self.hf(pixel_values=x)
        return set_detections(out.logits, out.pred_boxes, (int(x.shape[-2]), int(x.shape[-1])))


HF_TASKS = {
    "classify": ("AutoModelForImageClassification", HuggingFaceClassifier),
    "segment": ("AutoModelForSemanticSegmentation", HuggingFaceSegmenter),
    "detect": ("AutoModelForObjectDetection", HuggingFaceDetector),
}
"""task -> (the transformers auto class, camscope's adapter)."""


def hf_task(config: Any) -> str:
    """``segment`` / ``detect`` / ``classify`` for a transformers config: from its
    ``architectures`` (``...ForSemanticSegmentation``, ``...ForObjectDetection``), else from
    its ``model_type`` when only the segmentation or detection auto class knows it; else
    ``classify``."""
    for arch in getattr(config, "architectures", None) or []:
        if str(arch).endswith("ForSemanticSegmentation"):
            return "segment"
        if str(arch).endswith("ForObjectDetection"):
            return "detect"
    try:
        from transformers.models.auto import modeling_auto as auto
    except ImportError:  # pragma: no cover - checked by require() before
        return "classify"
    model_type = str(getattr(config, "model_type", ""))
    if model_type in auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        return "classify"
    if model_type in auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES:
        return "segment"
    if model_type in auto.MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES:
        return "detect"
    return "classify"


def _is_local(target: str) -> bool:
    return Path(target).expanduser().is_dir() or target.startswith((".", "/", "~"))


def load_hf(model_spec: ModelSpec, device: str | torch.device = "cpu", progress: bool = True) -> LoadedModel:
    """Build ``hf/ORG/NAME`` (hub) or ``hf/PATH`` (a ``save_pretrained`` folder).

    ``weights_tag`` ``none``: the architecture from the config with random weights;
    ``weights_file``: a local state dict (keys as ``save_pretrained`` writes them) into it.
    """
    spec, weights_tag, weights_file = model_spec.name, model_spec.weights_tag, model_spec.weights_file
    preprocess, trust_checkpoint = model_spec.preprocess, model_spec.trust_checkpoint
    trust_remote_code = model_spec.trust_remote_code
    require("transformers", "hf", f"--model {spec}")
    if preprocess not in PREPROCESS_MODES:
        raise UsageError(f"unknown --preprocess {preprocess!r}; choose from: {', '.join(PREPROCESS_MODES)}")
    target = spec[len(PREFIX) :] if spec.startswith(PREFIX) else spec
    if not target:
        raise UsageError("--model hf/: give a hub name (hf/ORG/NAME) or a folder (hf/PATH)")
    local = _is_local(target)
    if local:
        folder = Path(target).expanduser()
        if not (folder / "config.json").is_file():
            raise UsageError(
                f"--model {spec}: {folder} is not a folder written by save_pretrained (no config.json)"
            )
        target = str(folder)
        _refuse_remote_code(spec, json.loads((folder / "config.json").read_text(encoding="utf-8")), trust_remote_code)
    random = weights_file is None and (weights_tag is None or weights_tag.lower() == "none")
    config = _hub_call(spec, target, local, trust_remote_code, lambda t: _auto("AutoConfig").from_pretrained(t, trust_remote_code=trust_remote_code))
    _refuse_remote_code(spec, config.to_dict(), trust_remote_code)
    task = hf_task(config)
    auto_name, adapter = HF_TASKS[task]
    auto_model = _auto(auto_name)
    if random or weights_file is not None:
        with seeded_random():
            hf = auto_model.from_config(config, trust_remote_code=trust_remote_code)
        weights_desc = RANDOM_WEIGHTS
        if weights_file is not None:
            fit_state_dict(hf, load_checkpoint(weights_file, trust=trust_checkpoint), weights_file, spec)
            weights_desc = f"file:{weights_file}"
    else:
        hf = _hub_call(spec, target, local, trust_remote_code, lambda t: _from_pretrained(auto_model, t, trust_remote_code))
        weights_desc = f"hf:{target}"
    model = adapter(hf).to(device).eval()
    pre = _preprocess(spec, target, local, config, preprocess, trust_remote_code, task)
    categories = _labels(config)
    return LoadedModel(
        model, spec, weights_desc, categories, pre, imagenet_wnids_if(categories),
        info={"source": "hf", "model_type": model.model_type, "task": task},
    )


def _auto(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


def _refuse_remote_code(spec: str, config: dict[str, Any], trust: bool) -> None:
    if config.get("auto_map") and not trust:
        raise UsageError(
            f"--model {spec}: the model needs its own Python code from the repository (auto_map in "
            "its config), which camscope runs only with --trust-remote-code; refused"
        )


def _from_pretrained(auto_model: Any, target: str, trust_remote_code: bool) -> nn.Module:
    """``from_pretrained`` from ``.safetensors``; pickled weights only when there are none."""
    try:
        return auto_model.from_pretrained(target, use_safetensors=True, trust_remote_code=trust_remote_code)
    except OSError as exc:
        if "safetensors" not in str(exc):
            raise
        logger.warning("%s: no .safetensors weights; loading the pickled ones (weights only)", target)
        return auto_model.from_pretrained(target, use_safetensors=False, trust_remote_code=trust_remote_code)


def _hub_call(spec: str, target: str, local: bool, trust: bool, fn: Any) -> Any:
    """Run ``fn(target)``; remote-code refusals and download failures become one line."""
    try:
        if local:
            return fn(target)
        with hub_access():
            return fn(target)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            _refuse_remote_code(spec, {"auto_map": True}, trust)
        raise UsageError(f"--model {spec}: {first_line(exc)}") from None
    except OSError as exc:
        if local:
            raise WeightsError(f"--model {spec}: cannot load {target} ({first_line(exc)})") from None
        raise WeightsError(
            f"cannot get {target} from the Hugging Face hub ({first_line(exc)}) and no cached copy "
            f"is in {hub_cache_dir()}; use a local folder written by save_pretrained (--model "
            "hf/PATH), or pass --weights FILE"
        ) from None


def _labels(config: Any) -> list[str] | None:
    """``config.id2label`` in index order; None for the generic ``LABEL_i`` names."""
    id2label = getattr(config, "id2label", None) or {}
    n = int(getattr(config, "num_labels", len(id2label)) or 0)
    names = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(n)]
    if not names or all(name == f"LABEL_{i}" for i, name in enumerate(names)):
        return None
    return [name.split(",")[0].strip() for name in names]


def _preprocess(spec: str, target: str, local: bool, config: Any, mode: str, trust: bool,
                task: str = "classify") -> Preprocess:
    """Preprocessing from the image processor's config; the config's ``image_size`` (ImageNet
    statistics) when there is no processor. A detector's processor resizes the shorter side
    keeping the aspect ratio (DETR: 800, at most 1333); camscope resizes the whole photo to
    :data:`DETECTION_INPUT_SIZE` as for torchvision detectors (the map covers the photo), with
    the processor's mean and std."""
    try:
        proc = _hub_call(
            spec, target, local, trust,
            lambda t: _auto("AutoImageProcessor").from_pretrained(t, trust_remote_code=trust),
        ).to_dict()
    except (UsageError, WeightsError, OSError, ValueError) as exc:
        size = DETECTION_INPUT_SIZE if task == "detect" else getattr(config, "image_size", 224)
        size = (size, size) if isinstance(size, int) else tuple(size)
        logger.warning(
            "%s: no image processor config (%s); resizing to %dx%d with ImageNet mean/std "
            "(--input-size, --mean, --std to change)", spec, first_line(exc), size[0], size[1],
        )
        return Preprocess("classic", size, None, IMAGENET_MEAN, IMAGENET_STD)
    pre = preprocess_from_processor(proc, mode)
    if task == "detect":
        return Preprocess("classic", DETECTION_INPUT_SIZE, None, pre.mean, pre.std, pre.interpolation)
    return pre


def preprocess_from_processor(proc: dict[str, Any], mode: str) -> Preprocess:
    """A :class:`Preprocess` from an image processor's settings (``to_dict()``).

    ``size`` ``{height, width}``: a plain resize (the whole photo, as ``classic``);
    ``{shortest_edge}`` with a centre crop: resize the shorter side, crop ``crop_size``
    (ConvNeXt's processor: shorter side ``shortest_edge / crop_pct``, crop ``shortest_edge``).
    ``classic`` always resizes the whole photo to the model's input size.
    """
    mean = tuple(float(v) for v in proc.get("image_mean") or IMAGENET_MEAN)
    std = tuple(float(v) for v in proc.get("image_std") or IMAGENET_STD)
    interp = interpolation_name(proc.get("resample", 2))
    size = proc.get("size") or {"height": 224, "width": 224}
    if isinstance(size, int):
        size = {"shortest_edge": size}
    crop = proc.get("crop_size") if proc.get("do_center_crop") else None
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if "height" in size and "width" in size:
        final = (int(size["height"]), int(size["width"]))
        resize = None
        if crop:
            final, resize = (int(crop["height"]), int(crop["width"])), min(final)
    else:
        edge = int(size.get("shortest_edge", 224))
        crop_pct = proc.get("crop_pct")
        if crop_pct and edge < 384:  # ConvNeXt's processor
            final, resize = (edge, edge), int(edge / float(crop_pct))
        elif crop:
            final, resize = (int(crop["height"]), int(crop["width"])), edge
        else:
            final, resize = (edge, edge), edge
    if mode == "classic" or resize is None:
        return Preprocess("classic", final, None, mean, std, interp)
    return Preprocess("weights", final, resize, mean, std, interp)


def _reload(name: str, weights: str, weights_file: str | None) -> tuple[str, str | None]:
    """A recorded ``hf:TARGET`` -> the pretrained weights of the hub repository (or folder)."""
    return name, "DEFAULT" if weights.startswith("hf:") else None


register_model_source(ModelSource("hf", load_hf, _reload, prefix=PREFIX, example="hf/google/vit-base-patch16-224"))
