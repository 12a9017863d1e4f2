"""Ground-truth boxes in the model input's frame (where the maps live)."""

from __future__ import annotations

from typing import Any

__all__ = ["boxes_for", "boxes_to_input_frame"]


def boxes_to_input_frame(
    boxes: list, photo_size: tuple[int, int], preprocess: Any
) -> list[tuple[float, float, float, float]]:
    """Map boxes from the photo's frame to the model-input (= map) frame.

    ``photo_size`` is (width, height) of the loaded photo; a box whose ``size`` differs is first
    rescaled to it. ``classic`` preprocessing is a plain resize; ``weights`` preprocessing
    resizes the shorter side to ``resize`` and centre-crops ``size``, so the crop offset is
    subtracted (as :meth:`camscope.models.Preprocess.to_tensor` computes it). Boxes are clipped to
    the input; boxes entirely outside the crop are dropped.
    """
    w, h = photo_size
    H, W = preprocess.size
    if preprocess.mode == "classic":
        nw, nh, left, top = W, H, 0, 0
    else:
        r = preprocess.resize or min(preprocess.size)
        scale = r / min(h, w)
        nh, nw = max(round(h * scale), H), max(round(w * scale), W)
        top, left = (nh - H) // 2, (nw - W) // 2
    sx, sy = nw / w, nh / h
    out = []
    for b in boxes:
        fw, fh = b.size if getattr(b, "size", None) else (w, h)
        kx, ky = w / fw * sx, h / fh * sy
        x0, y0 = b[0] * kx - left, b[1] * ky - top
        x1, y1 = b[2] * kx - left, b[3] * ky - top
        x0, x1 = max(0.0, x0), min(float(W), x1)
        y0, y1 = max(0.0, y0), min(float(H), y1)
        if x1 > x0 and y1 > y0:
            out.append((round(x0, 4), round(y0, 4), round(x1, 4), round(y1, 4)))
    return out


def boxes_for(table: dict, rel: str, source: str) -> list | None:
    """The boxes of a photo, by its relative name or else its source path."""
    from camscope.metrics import find_boxes

    found = find_boxes(table, rel)
    if found is None:
        found = find_boxes(table, source)
    return found
