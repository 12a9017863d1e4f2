"""What figures say and draw of a target: its caption and its region (a detection's box, a
segment's mask), for the run folder's overlays and figures and the notebook grid."""

from __future__ import annotations

from typing import Any

import torch

from camscope.render.draw import TargetRegion

__all__ = ["target_region", "target_caption"]


def target_region(target: Any, frame: tuple[int, int]) -> TargetRegion | None:
    """The box (a detection's) or mask (a segment's) of a target, in the map's frame, to draw
    and to record; None for a target without one."""
    box = getattr(target, "box", None)
    mask = getattr(target, "mask", None)
    if box is None and mask is None:
        return None
    b = None if box is None else tuple(float(v) for v in torch.as_tensor(box).tolist()[:4])
    m = None if mask is None else torch.as_tensor(mask).detach().cpu().numpy() > 0
    return TargetRegion(frame, b, m)  # type: ignore[arg-type]


def target_caption(target: Any, name: str, score: float, probs: Any, prob: float | None = None) -> str:
    """The label of a target in figures: ``dog 87%`` (a detection's confidence), ``person 61%
    (predicted mask)`` (its mean probability over the region, ``prob``), ``"a dog" cos 0.31``,
    ``dog-vs-cat +2.1``, ``tabby 93.1%``."""
    kind = getattr(target, "kind", "custom")
    if kind == "detection":
        found = getattr(target, "detected_score", None)
        return f"{name} {found:.0%}" if found is not None else f"{name} (given box, score {score:.2f})"
    if kind == "segment":
        mean = f" {prob:.0%}" if prob is not None and prob == prob else ""
        return f"{name}{mean} ({getattr(target, 'region', 'given')} mask)"
    if kind == "similarity":
        return f'"{name}" cos {score:.3f}'
    if kind == "multilabel":
        return f"{name} {score:.1%}"
    if kind == "contrast":
        return f"{name} {score:+.2f}"
    label = int(getattr(target, "label", -1))
    if kind in ("logit", "probability") and 0 <= label < probs.numel():
        return f"{name} {float(probs[label]):.1%}"
    return f"{name} {score:.3g}"
