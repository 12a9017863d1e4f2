"""Time per image of Grad-CAM on each task, camscope beside pytorch-grad-cam on the same model,
the same layer, the same target and the same inputs, measured in the same run (random weights;
the time does not depend on them). Prints a markdown table.

    python benchmarks/targets_time.py [--size 320] [--repeats 3] [--threads 2] [--only TASK,...]

Rows (pytorch-grad-cam's target in brackets):

* classify: ResNet-50 at 224, the top class (``ClassifierOutputTarget``);
* segment: DeepLabV3-ResNet50 and FCN-ResNet50 (21 classes), the top class's predicted mask
  (``SemanticSegmentationTarget`` on the ``out`` tensor, the tutorial's wrapper);
* detect: Faster R-CNN v2 and RetinaNet (ResNet-50 FPN, 91 classes), the best detection with
  its box (``FasterRCNNBoxScoreTarget``);
* segment, Hugging Face SegFormer-B0 (transformers' default config = mit-b0, 150 classes as
  ADE20k) loaded through camscope's ``hf/`` adapter (per-pixel logits at H/4);
* detect, Hugging Face DETR-ResNet-50 (transformers' default config: d_model 256, 6+6 layers,
  100 queries, 91 classes, on transformers' ResNet-50) through the ``hf/`` adapter (every query
  as a detection; ``FasterRCNNBoxScoreTarget`` reads the same output);
* embed: CLIP ViT-B/32 (open_clip's config, random weights) image tower, cosine similarity to a
  concept embedding (pytorch-grad-cam has no such target in the library, only in its tutorial:
  the tutorial's ``SimilarityToConceptTarget`` is written out here, with its ViT reshape).

Segmenters and detectors run at ``--size`` x ``--size`` (classify and embed at 224); one image,
``--threads`` intra-op threads, median of ``--repeats`` after a warm-up. The ratio is
pytorch-grad-cam's time over camscope's (above 1: camscope is faster).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

ALL = ("classify", "segment", "detect", "hf-segment", "hf-detect", "embed")


class _Out(nn.Module):
    """pytorch-grad-cam's tutorial wrapper: a torchvision segmenter's ``out`` tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def _median(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return build().eval()


def _segment_row(name: str, model: nn.Module, x: torch.Tensor, layer: nn.Module, wrap: nn.Module, repeats: int) -> tuple:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    from camscope.engine import CamEngine

    eng = CamEngine(model, None, methods=["gradcam"])
    t = eng(x, task="segment").explained[0][0]
    ours = _median(lambda: eng(x, task="segment"), repeats)
    targets = [SemanticSegmentationTarget(t.label, t.mask.numpy())]
    with GradCAM(model=wrap, target_layers=[layer]) as cam:
        theirs = _median(lambda: cam(input_tensor=x, targets=targets), repeats)
    return name, eng.layer, ours, theirs


def _detect_row(name: str, model: nn.Module, x: torch.Tensor, layer: nn.Module, repeats: int) -> tuple:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    from camscope.engine import CamEngine
    from camscope.targets import Task

    eng = CamEngine(model, None, methods=["gradcam"])
    task = Task("detect", score_threshold=0.0)
    t = eng(x, task=task, top_k=1).explained[0][0]
    ours = _median(lambda: eng(x, task=task, top_k=1), repeats)
    targets = [FasterRCNNBoxScoreTarget([t.label], [t.box.numpy()])]
    with GradCAM(model=model, target_layers=[layer]) as cam:
        theirs = _median(lambda: cam(input_tensor=x, targets=targets), repeats)
    return name, eng.layer, ours, theirs


def classify(s: int, repeats: int) -> list[tuple]:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from camscope.engine import CamEngine

    cls = _seeded(lambda: torchvision.models.resnet50(weights=None))
    x = torch.rand(1, 3, 224, 224)
    eng = CamEngine(cls, None, methods=["gradcam"])
    with torch.no_grad():
        c = int(cls(x).argmax())
    ours = _median(lambda: eng(x, [[c]]), repeats)
    with GradCAM(model=cls, target_layers=[cls.layer4]) as cam:
        theirs = _median(lambda: cam(input_tensor=x, targets=[ClassifierOutputTarget(c)]), repeats)
    return [("classify", "resnet50 (224)", eng.layer, ours, theirs)]


def segment(s: int, repeats: int) -> list[tuple]:
    seg = torchvision.models.segmentation
    rows = []
    x = torch.rand(1, 3, s, s)
    for name, build in (("deeplabv3_resnet50", seg.deeplabv3_resnet50), ("fcn_resnet50", seg.fcn_resnet50)):
        model = _seeded(lambda build=build: build(weights=None, weights_backbone=None, num_classes=21))
        rows.append(("segment", *_segment_row(name, model, x, model.backbone.layer4, _Out(model), repeats)))
    return rows


def detect(s: int, repeats: int) -> list[tuple]:
    det = torchvision.models.detection
    rows = []
    x = torch.rand(1, 3, s, s)
    for name, build in (("fasterrcnn_resnet50_fpn_v2", det.fasterrcnn_resnet50_fpn_v2),
                        ("retinanet_resnet50_fpn_v2", det.retinanet_resnet50_fpn_v2)):
        kw: dict[str, Any] = dict(weights=None, weights_backbone=None, min_size=s, max_size=s)
        kw["box_score_thresh" if "rcnn" in name else "score_thresh"] = 0.0
        model = _seeded(lambda build=build, kw=kw: build(**kw))
        rows.append(("detect", *_detect_row(name, model, x, model.backbone.body.layer4, repeats)))
    return rows


def hf_segment(s: int, repeats: int) -> list[tuple]:
    import transformers

    from camscope.models.hf_source import HuggingFaceSegmenter

    hf = _seeded(lambda: transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(num_labels=150)))
    model = HuggingFaceSegmenter(hf).eval()
    x = torch.rand(1, 3, s, s)
    layer = model.get_submodule("hf.segformer.stages.3")
    return [("segment", *_segment_row("hf SegFormer-B0 (150 classes)", model, x, layer, model, repeats))]


def hf_detect(s: int, repeats: int) -> list[tuple]:
    import transformers

    from camscope.models.hf_source import HuggingFaceDetector

    cfg = transformers.DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False,
                                  backbone_config=transformers.ResNetConfig(out_features=["stage4"]))
    model = HuggingFaceDetector(_seeded(lambda: transformers.DetrForObjectDetection(cfg))).eval()
    x = torch.rand(1, 3, s, s)
    layer = model.get_submodule("hf.model.input_projection")
    return [("detect", *_detect_row("hf DETR-ResNet-50", model, x, layer, repeats))]


def embed(s: int, repeats: int) -> list[tuple]:
    import open_clip
    from pytorch_grad_cam import GradCAM

    from camscope.engine import CamEngine
    from camscope.models.clip import ClipImageEncoder
    from camscope.targets import Task

    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    model = ClipImageEncoder(clip).eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        concept = model(torch.rand(1, 3, 224, 224))[0]
    task = Task("embed", concept=concept, concept_name="a reference image")
    eng = CamEngine(model, None, methods=["gradcam"])
    ours = _median(lambda: eng(x, task=task), repeats)

    class SimilarityToConceptTarget:  # pytorch-grad-cam's tutorial target
        def __init__(self, features: torch.Tensor) -> None:
            self.features = features

        def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
            return F.cosine_similarity(model_output, self.features, dim=0)

    def reshape(t: torch.Tensor) -> torch.Tensor:  # the tutorial's ViT reshape: drop the class token
        t = t[:, 1:, :]
        h = int(t.shape[1] ** 0.5)
        return t.reshape(t.shape[0], h, h, t.shape[2]).permute(0, 3, 1, 2)

    layer = model.get_submodule(eng.layer)
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        theirs = _median(lambda: cam(input_tensor=x, targets=[SimilarityToConceptTarget(concept)]), repeats)
    return [("embed", "CLIP ViT-B/32 (open_clip, 224)", eng.layer, ours, theirs)]


TASKS = {"classify": classify, "segment": segment, "detect": detect, "hf-segment": hf_segment,
         "hf-detect": hf_detect, "embed": embed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {', '.join(ALL)}")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("camscope").setLevel(logging.ERROR)  # the hook-path notices of detectors
    rows = []
    for name in args.only.split(","):
        rows += TASKS[name.strip()](args.size, args.repeats)
    print(f"Grad-CAM, 1 image ({args.size}x{args.size} for segment/detect, 224 for classify/embed), "
          f"{args.threads} thread(s), median of {args.repeats} after a warm-up; torch {torch.__version__}")
    print("| task | model | layer | camscope s/image | pytorch-grad-cam s/image | ratio |")
    print("|---|---|---|---:|---:|---:|")
    for task_name, model, layer, a, b in rows:
        print(f"| {task_name} | {model} | `{layer}` | {a:.3f} | {b:.3f} | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
