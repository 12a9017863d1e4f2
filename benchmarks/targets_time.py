"""Time per image of Grad-CAM on each task, camscope beside pytorch-grad-cam on the same model,
the same target and the same inputs, measured in the same run (random weights; the time does
not depend on them).

    python benchmarks/targets_time.py [--size 320] [--repeats 3] [--threads 2]

Tasks: segment (DeepLabV3-ResNet50, the top class's predicted mask; pytorch-grad-cam with
SemanticSegmentationTarget), detect (Faster R-CNN v2, the best detection; FasterRCNNBoxScoreTarget),
classify (ResNet-50, the top class; ClassifierOutputTarget). Prints median seconds per image and
the ratio pytorch-grad-cam / camscope.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
from torch import nn


class _Out(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def _median(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import (
        ClassifierOutputTarget,
        FasterRCNNBoxScoreTarget,
        SemanticSegmentationTarget,
    )

    from camscope.engine import CamEngine
    from camscope.targets import Task

    torch.manual_seed(0)
    s = args.size
    x = torch.rand(1, 3, s, s)
    rows = []

    seg = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21).eval()
    eng = CamEngine(seg, None, methods=["gradcam"])
    res = eng(x, task="segment")
    t = res.explained[0][0]
    ours = _median(lambda: eng(x, task="segment"), args.repeats)
    targets = [SemanticSegmentationTarget(t.label, t.mask.numpy())]
    cam = pgc.GradCAM(model=_Out(seg), target_layers=[seg.backbone.layer4])
    theirs = _median(lambda: cam(input_tensor=x, targets=targets), args.repeats)
    rows.append(("segment", "deeplabv3_resnet50", eng.layer, ours, theirs))

    det = torchvision.models.detection.fasterrcnn_resnet50_fpn_v2(
        weights=None, weights_backbone=None, min_size=s, max_size=s, box_score_thresh=0.0).eval()
    eng = CamEngine(det, None, methods=["gradcam"])
    task = Task("detect", score_threshold=0.0)
    res = eng(x, task=task, top_k=1)
    t = res.explained[0][0]
    ours = _median(lambda: eng(x, task=task, top_k=1), args.repeats)
    targets = [FasterRCNNBoxScoreTarget([t.label], [t.box.numpy()])]
    cam = pgc.GradCAM(model=det, target_layers=[det.backbone.body.layer4])
    theirs = _median(lambda: cam(input_tensor=x, targets=targets), args.repeats)
    rows.append(("detect", "fasterrcnn_resnet50_fpn_v2", eng.layer, ours, theirs))

    cls = torchvision.models.resnet50(weights=None).eval()
    xc = torch.rand(1, 3, 224, 224)
    eng = CamEngine(cls, None, methods=["gradcam"])
    c = int(cls(xc).argmax())
    ours = _median(lambda: eng(xc, [[c]]), args.repeats)
    cam = pgc.GradCAM(model=cls, target_layers=[cls.layer4])
    theirs = _median(lambda: cam(input_tensor=xc, targets=[ClassifierOutputTarget(c)]), args.repeats)
    rows.append(("classify", "resnet50 (224)", eng.layer, ours, theirs))

    print(f"Grad-CAM, 1 image ({s}x{s} for segment/detect), {args.threads} threads, median of {args.repeats}")
    print("| task | model | layer | camscope s/image | pytorch-grad-cam s/image | ratio |")
    print("|---|---|---|---:|---:|---:|")
    for task_name, model, layer, a, b in rows:
        print(f"| {task_name} | {model} | `{layer}` | {a:.3f} | {b:.3f} | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
