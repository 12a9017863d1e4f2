"""Detection: the score of the detection that best matches a box and a label."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from camscope.targets.registry import Target, Task, class_name, detections_of, register_target
from camscope.targets.segmentation import box_mask

DEFAULT_THRESHOLD = 0.5
DEFAULT_TOP_K = 10


def set_detections(logits: Tensor, pred_boxes: Tensor, size: tuple[int, int]) -> list[dict[str, Tensor]]:
    """A set-prediction detector's output (DETR, Carion et al. 2020) as torchvision detectors'
    detections: one ``{"boxes", "labels", "scores"}`` dict per image, one detection per query.

    ``logits`` (N, Q, C+1): class logits, the last column "no object"; ``pred_boxes`` (N, Q, 4):
    boxes as centre x, centre y, width, height normalised to [0, 1] (sigmoid outputs);
    ``size``: the input's (H, W). Each query's class probabilities are the softmax over all
    C+1 columns (the paper's Eq. 1 and transformers' ``post_process_object_detection``); its
    label is the most probable real class and its score that probability (the no-object column
    excluded); its box ``(cx - w/2, cy - h/2, cx + w/2, cy + h/2)`` scaled to input pixels.
    Differentiable: the detection target's ``IoU + score`` reaches both heads.
    """
    h, w = size
    probs = torch.softmax(logits, dim=-1)[..., :-1]
    scores, labels = probs.max(dim=-1)
    cx, cy, bw, bh = pred_boxes.unbind(-1)
    scale = pred_boxes.new_tensor([w, h, w, h])
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1) * scale
    return [{"boxes": boxes[i], "labels": labels[i], "scores": scores[i]} for i in range(logits.shape[0])]


@register_target(
    "detection", title="detection (box and label)",
    equation="s = IoU(b, b_j) + p_j for the detection j best overlapping box b, if IoU > 0.5 and "
             "its label is l; else 0", task="detect",
)
class Detection(Target):
    """The detection that best matches box ``b`` and label ``l``: among the model's detections,
    the one with the largest IoU with ``b``; its score is ``IoU + p`` (p: its class score) when
    the IoU exceeds ``iou_threshold`` and its label is ``l``, else 0 -- as pytorch-grad-cam's
    ``FasterRCNNBoxScoreTarget`` (one box). The IoU term makes the box's regression part of
    what is explained. ``label=None`` matches any label."""

    spatial = True

    def __init__(self, box: Sequence[float], label: int | None, iou_threshold: float = 0.5, score: float | None = None) -> None:
        self.box = torch.as_tensor([float(v) for v in box[:4]])
        self.label = -1 if label is None else int(label)
        self.iou_threshold = float(iou_threshold)
        self.detected_score = score
        """The detection's score on the photo when the target was made (None: a given box)."""

    def score(self, output: Any, index: Tensor | None = None) -> Tensor:
        from torchvision.ops import box_iou

        dets = detections_of(output)
        items = range(len(dets)) if index is None else index.tolist()
        out = []
        for i in items:
            d = dets[i]
            boxes = d["boxes"]
            s = boxes.new_zeros(())
            if len(boxes):
                ious = box_iou(self.box.to(boxes.device, boxes.dtype)[None], boxes)[0]
                j = int(ious.argmax())
                if float(ious[j].detach()) > self.iou_threshold and (self.label < 0 or int(d["labels"][j]) == self.label):
                    s = ious[j] + d["scores"][j]
            out.append(s)
        if not out:
            return torch.zeros(0)
        return torch.stack(out)

    def name(self, categories: Sequence[str] | None = None) -> str:
        return "any" if self.label < 0 else class_name(self.label, categories)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "box": [round(float(v), 2) for v in self.box],
                             "class": self.label, "iou_threshold": self.iou_threshold}
        if self.detected_score is not None:
            d["score"] = round(self.detected_score, 6)
        return d

    def __repr__(self) -> str:
        return f"Detection(box={[round(float(v), 1) for v in self.box]}, label={self.label})"

    @classmethod
    def select(cls, output: Any, items: list[int], task: Task, size: tuple[int, int]) -> list[list[Target]]:
        """Given ``task.boxes``: one target per box. Otherwise every detection scoring at least
        ``score_threshold`` (default 0.5), at most ``top_k`` (default 10), best first, each
        explained with its own box and label; an image with none gets no target."""
        dets = detections_of(output)
        if task.boxes:
            return [[cls._given(b, size, task) for b in task.boxes] for _ in items]
        threshold = DEFAULT_THRESHOLD if task.score_threshold is None else task.score_threshold
        k = task.top_k or DEFAULT_TOP_K
        out: list[list[Target]] = []
        for i in items:
            d = dets[i]
            scores = d["scores"].detach()
            order = scores.argsort(descending=True, stable=True).tolist()
            keep = [j for j in order if float(scores[j]) >= threshold][:k]
            out.append([
                cls(d["boxes"][j].detach().cpu().tolist(), int(d["labels"][j]), task.iou_threshold, float(scores[j]))
                for j in keep
            ])
        return out

    @classmethod
    def _given(cls, box: Sequence[Any], size: tuple[int, int], task: Task) -> Target:
        box_mask(box, size)  # checks: not empty, inside the image
        label = box[4] if len(box) > 4 else None
        return cls(box[:4], None if label is None else int(label), task.iou_threshold)
