"""Rendering: colour-mapped overlays and side-by-side comparison figures."""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from camscope.errors import UsageError

__all__ = [
    "colorize", "overlay", "Panel", "comparison_figure", "new_figure", "figure_png", "png_bytes", "resize_map",
    "jpeg_thumbnail", "jpeg_data_uri", "TargetRegion", "mark_region",
]


PIXEL_PERCENTILE = 99.0
"""Pixel-level maps are drawn scaled by this percentile of their values (see :func:`overlay`)."""


def colorize(saliency: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """(H,W) map in [0,1] -> (H,W,3) uint8 RGB through a matplotlib colour map."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise UsageError(f"unknown colour map {colormap!r} (any matplotlib colour map name)") from None
    rgba = cmap(np.clip(saliency, 0.0, 1.0))
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def resize_map(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to ``size`` = (width, height)."""
    if saliency.shape[::-1] == tuple(size):
        return saliency.astype(np.float32)
    img = Image.fromarray(saliency.astype(np.float32), mode="F")
    return np.asarray(img.resize(size, Image.BILINEAR), dtype=np.float32)


@dataclass(frozen=True)
class TargetRegion:
    """Where a target lies, to be drawn over the photo: a box (x0, y0, x1, y1) and/or a mask
    (H, W), both in the map's frame ``frame`` = (H, W) (the model input's pixels); drawn scaled
    to whatever size the photo is shown at."""

    frame: tuple[int, int]
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None


BOX_COLOR = (255, 255, 255)
EDGE_COLOR = (0, 0, 0)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (or on the image border)."""
    m = np.pad(mask.astype(bool), 1, constant_values=False)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask.astype(bool) & ~inner


def _thicken(edge: np.ndarray, width: int) -> np.ndarray:
    out = edge.copy()
    for _ in range(max(0, width - 1)):
        p = np.pad(out, 1, constant_values=False)
        out = out | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return out


def mark_region(image: Image.Image, region: TargetRegion | None, *, width: int | None = None) -> Image.Image:
    """``image`` with the target's region drawn on it: the mask's outline and/or the box, white
    lines edged in black (visible on any colour map); ``image`` itself when there is nothing."""
    if region is None or (region.box is None and region.mask is None):
        return image
    img = image.convert("RGB")
    w, h = img.size
    fh, fw = region.frame
    lw = width or max(1, round(max(w, h) / 224))
    arr = np.asarray(img).copy()
    if region.mask is not None:
        mask = np.asarray(Image.fromarray((np.asarray(region.mask) > 0).astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
        edge = _outline(mask)
        arr[_thicken(edge, lw + 1)] = EDGE_COLOR
        arr[_thicken(edge, lw)] = BOX_COLOR
    if region.box is not None:
        sx, sy = w / fw, h / fh
        x0, y0, x1, y1 = region.box
        a0, b0 = int(np.clip(round(x0 * sx), 0, w - 1)), int(np.clip(round(y0 * sy), 0, h - 1))
        a1, b1 = int(np.clip(round(x1 * sx) - 1, 0, w - 1)), int(np.clip(round(y1 * sy) - 1, 0, h - 1))
        edge = np.zeros((h, w), dtype=bool)
        edge[b0:b1 + 1, [a0, a1]] = True
        edge[[b0, b1], a0:a1 + 1] = True
        arr[_thicken(edge, lw + 1)] = EDGE_COLOR
        arr[_thicken(edge, lw)] = BOX_COLOR
    return Image.fromarray(arr)


def _limit(photo: Image.Image, max_side: int | None) -> Image.Image:
    if max_side is None or max(photo.size) <= max_side:
        return photo
    s = max_side / max(photo.size)
    return photo.resize((max(1, round(photo.width * s)), max(1, round(photo.height * s))), Image.BILINEAR)


def overlay(
    photo: Image.Image,
    saliency: np.ndarray,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    max_side: int | None = 1024,
    pixel_level: bool = False,
    region: TargetRegion | None = None,
) -> Image.Image:
    """Blend the colour-mapped map over the photo: ``(1 - alpha) * photo + alpha * heat``.

    The map is resized bilinearly to the photo (capped at ``max_side`` pixels on its long side).
    ``pixel_level`` (maps from the input gradient): a map whose mass sits in a few pixels would
    vanish in a uniform colour wash, so it is scaled by its 99th percentile (clipped at 1) and
    blended in proportion to its value: the photo shows where the map is 0 (cf. SmoothGrad's
    and captum's outlier clipping). ``region``: the target's box or mask outline drawn on top
    (:func:`mark_region`).
    """
    photo = _limit(photo.convert("RGB"), max_side)
    sal = resize_map(saliency, photo.size)
    base = np.asarray(photo, dtype=np.float32)
    if pixel_level:
        top = float(np.percentile(sal, PIXEL_PERCENTILE)) if sal.size else 0.0
        sal = np.clip(sal / top, 0.0, 1.0) if top > 0 else sal
        heat = colorize(sal, colormap).astype(np.float32)
        a = (alpha * 2.0 * sal)[..., None].clip(0.0, 1.0)  # full weight from half the scale up
        out = (1.0 - a) * base + a * heat
        return mark_region(Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8)), region)
    heat = colorize(sal, colormap).astype(np.float32)
    out = (1.0 - alpha) * base + alpha * heat
    return mark_region(Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8)), region)


@dataclass(frozen=True)
class Panel:
    """One panel of a comparison figure: a title and a map (None = the photo itself)."""

    title: str
    saliency: np.ndarray | None = None
    pixel_level: bool = False


def comparison_figure(
    photo: Image.Image,
    rows: Sequence[Sequence[Panel]],
    *,
    suptitle: str = "",
    alpha: float = 0.5,
    colormap: str = "jet",
    panel_inches: float = 2.6,
    region: TargetRegion | None = None,
) -> Any:
    """A matplotlib ``Figure``: one row per smoothing variant, the photo first, then one panel
    per method; ``region``: the target's box or mask outline drawn on every panel. (Not
    attached to pyplot: display it in a notebook, or ``figure_png`` it.)"""
    photo = _limit(photo.convert("RGB"), 448)
    n_cols = 1 + max(len(r) for r in rows)
    aspect = min(max(photo.height / photo.width, 0.4), 2.5)
    row_inches = panel_inches * aspect + 0.45  # room for two-line titles
    fig = new_figure(figsize=(panel_inches * n_cols, row_inches * len(rows) + (0.4 if suptitle else 0.0)))
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for r, row in enumerate(rows):
        ax = axes[r][0]
        if r == 0:
            ax.imshow(mark_region(photo, region))
            ax.set_title("photo", fontsize=9)
        ax.axis("off")
        for c in range(1, n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c - 1 < len(row):
                panel = row[c - 1]
                img = mark_region(photo, region) if panel.saliency is None else overlay(
                    photo, panel.saliency, alpha=alpha, colormap=colormap, max_side=None,
                    pixel_level=panel.pixel_level, region=region,
                )
                ax.imshow(img)
                ax.set_title(panel.title, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


@functools.cache
def _figure_class() -> type:
    from matplotlib.figure import Figure

    class ShownFigure(Figure):
        """A matplotlib figure that a notebook shows as PNG, whatever pyplot's backend is."""

        def _repr_png_(self) -> bytes:
            return figure_png(self)

    return ShownFigure


def new_figure(**kwargs: Any) -> Any:
    """A matplotlib ``Figure`` outside pyplot (its backend and state are never touched: safe in
    a notebook and in threads), drawn with Agg when saved, shown as PNG in a notebook."""
    return _figure_class()(**kwargs)


def figure_png(fig: Any, dpi: int = 100) -> bytes:
    """Encode a matplotlib figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    """Encode a PIL image as PNG bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_thumbnail(
    image: Image.Image, side: int, quality: int, resample: Image.Resampling = Image.Resampling.BICUBIC
) -> bytes:
    """``image`` as a JPEG at most ``side`` pixels on its long side (RGB; aspect kept): the one
    thumbnail maker of the notebook grid and the report."""
    im = image.convert("RGB")
    im.thumbnail((side, side), resample)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def jpeg_data_uri(image: Image.Image, side: int, quality: int) -> str:
    """A ``data:image/jpeg;base64,...`` URI of :func:`jpeg_thumbnail`."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_thumbnail(image, side, quality)).decode("ascii")
