"""Segmentation region: class c's logits summed over a region of the image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from camscope.errors import UsageError
from camscope.targets.registry import (
    Target,
    Task,
    check_class,
    class_name,
    logits_of,
    register_target,
)

DEFAULT_TOP_K = 1


def _pixel_logits(output: Any) -> Tensor:
    logits = logits_of(output)
    if logits.dim() != 4:
        raise UsageError(f"segment targets need per-pixel logits (N, C, H, W); the model gives shape {tuple(logits.shape)}")
    return logits


def box_mask(box: Sequence[float], size: tuple[int, int], what: str = "box") -> Tensor:
    """(H, W) float mask of the pixels inside ``box`` (x0, y0, x1, y1, in pixels of an image of
    ``size`` (H, W)); one line when the box is empty or outside the image."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    h, w = size
    if not (x0 < x1 and y0 < y1):
        raise UsageError(f"{what} {x0:g},{y0:g},{x1:g},{y1:g} is empty: give x0,y0,x1,y1 with x0 < x1 and y0 < y1")
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h or x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise UsageError(f"{what} {x0:g},{y0:g},{x1:g},{y1:g} is outside the {w}x{h} image")
    ys = torch.arange(h, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :] + 0.5
    return ((xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)).float()


def to_output_resolution(mask: Tensor, out_size: tuple[int, int]) -> Tensor:
    """A region (H, W) given at the input's resolution, at the logits' resolution ``out_size``:
    each logit cell weighted by the share of its pixels inside the region (area averaging), so
    that a model whose logits are coarser than its input (SegFormer: H/4) sums its logits over
    the same region; unchanged when the sizes agree (torchvision's segmenters)."""
    import torch.nn.functional as F

    if tuple(mask.shape) == tuple(out_size):
        return mask
    return F.interpolate(mask[None, None].float(), size=out_size, mode="area")[0, 0]


@register_target(
    "segment", title="segmentation region",
    equation="s = sum_(i,j) M_ij y_c[i,j] (M: the region; default the predicted mask of c)", task="segment",
)
class SegmentRegion(Target):
    """Class ``c``'s logits summed over a region ``M`` (pytorch-grad-cam's
    ``SemanticSegmentationTarget``). By default ``M`` is the model's own predicted mask of
    ``c`` on the photo (pixels whose argmax is ``c``), fixed when the target is made; or a
    given mask, or a box (both in input pixels). ``M`` lives at the logits' resolution: a model
    whose logits are coarser than its input (SegFormer: H/4 x W/4) gets a given mask or box
    area-averaged to it (:func:`to_output_resolution`); :meth:`mask_at` gives ``M`` at any
    size for drawing. As Score-CAM's probability: the mean softmax probability of ``c`` over
    ``M``."""

    spatial = True

    def __init__(self, label: int, mask: Tensor, region: str = "predicted") -> None:
        self.label = int(label)
        self.mask = mask.float()
        self.region = region

    def _masked(self, values: Tensor, index: Tensor | None) -> Tensor:
        if index is not None:
            values = values[index.to(values.device)]
        mask = self.mask.to(values.device, values.dtype)
        if mask.shape != values.shape[-2:]:
            raise UsageError(f"the region mask is {tuple(mask.shape)}, the model's output {tuple(values.shape[-2:])}")
        return (values * mask).sum(dim=(-2, -1))

    def score(self, output: Any, index: Tensor | None = None) -> Tensor:
        return self._masked(_pixel_logits(output)[:, self.label], index)

    def probability(self, output: Any, index: Tensor | None = None) -> Tensor:
        probs = torch.softmax(_pixel_logits(output), dim=1)[:, self.label]
        return self._masked(probs, index) / self.mask.sum().clamp_min(1)

    def name(self, categories: Sequence[str] | None = None) -> str:
        return class_name(self.label, categories)

    def mask_at(self, size: tuple[int, int]) -> Tensor:
        """The region resized (nearest) to ``size`` (H, W), e.g. the input's, to draw it."""
        import torch.nn.functional as F

        if tuple(self.mask.shape) == tuple(size):
            return self.mask
        return F.interpolate(self.mask[None, None], size=tuple(size), mode="nearest")[0, 0]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "class": self.label, "region": self.region, "pixels": int(self.mask.sum())}

    def __repr__(self) -> str:
        return f"SegmentRegion({self.label}, region={self.region!r}, pixels={int(self.mask.sum())})"

    @classmethod
    def select(cls, output: Any, items: list[int], task: Task, size: tuple[int, int]) -> list[list[Target]]:
        """The ``top_k`` (default 1) classes covering the most pixels of each image's predicted
        segmentation (``task.background``, class 0 by default, never), each over its mask; an
        image where only the background is predicted gets no target."""
        logits = _pixel_logits(output).detach()
        k = task.top_k or DEFAULT_TOP_K
        out: list[list[Target]] = []
        for i in items:
            pred = logits[i].argmax(dim=0)
            counts = torch.bincount(pred.flatten(), minlength=logits.shape[1])
            if task.background is not None and task.background < len(counts):
                counts[task.background] = 0
            order = [int(c) for c in counts.argsort(descending=True, stable=True).tolist() if counts[c] > 0][:k]
            out.append([cls.for_class(c, output, i, task, size) for c in order])
        return out

    @classmethod
    def for_class(cls, label: int, output: Any, item: int, task: Task, size: tuple[int, int]) -> Target:
        logits = _pixel_logits(output).detach()
        check_class(label, logits.shape[1])
        out_size = (int(logits.shape[-2]), int(logits.shape[-1]))
        if task.mask is not None:
            mask = torch.as_tensor(task.mask).float()
            if tuple(mask.shape) not in (out_size, tuple(size)):
                raise UsageError(f"the mask is {tuple(mask.shape)}; give it at the input's size {tuple(size)}"
                                 + (f" or the model's output size {out_size}" if out_size != tuple(size) else ""))
            return cls(label, to_output_resolution(mask, out_size), "mask")
        if task.boxes:
            if len(task.boxes) != 1:
                raise UsageError("a segment target takes one box")
            return cls(label, to_output_resolution(box_mask(task.boxes[0], size), out_size), "box")
        return cls(label, (logits[item].argmax(dim=0) == label).float().cpu(), "predicted")
