"""How a :class:`~camscope.engine.CamMaps` shows itself: photos, overlays, the comparison
figure, and the compact HTML grid a notebook displays (``_repr_html_``).

The figure is the one the CLI writes (:func:`camscope.render.comparison.figure_rows` /
:func:`~camscope.render.comparison.figure_title`, drawn by :func:`camscope.render.draw.comparison_figure`);
the grid inlines small JPEG thumbnails (``THUMB_SIDE`` pixels, at most ``MAX_IMAGES`` images),
so a notebook stays light. Everything that comes from the user (file and class names) is
escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from camscope.core.smoothing import Smoothing
from camscope.engine import CamMaps
from camscope.errors import UsageError
from camscope.methods import get_method
from camscope.names import is_random_weights, parse_variant, variant_title
from camscope.render.comparison import figure_rows, figure_title
from camscope.render.draw import comparison_figure, jpeg_data_uri, overlay

__all__ = ["result_photo", "result_figure", "result_html", "MAX_IMAGES", "THUMB_SIDE"]

MAX_IMAGES = 8
"""Images shown by the notebook grid (the rest are counted, and shown by ``res.figure(i)``)."""
THUMB_SIDE = 128
"""Long side of the grid's thumbnails, in pixels."""


def result_photo(res: CamMaps, i: int) -> Image.Image:
    """Image ``i`` as a PIL photo: the part of the decoded photo the map covers, else the model
    input de-normalised (min-max scaled when its normalisation is unknown)."""
    if res.photos is not None and res.photos[i] is not None:
        pre = getattr(res.model, "preprocess", None)
        return pre.frame(res.photos[i]) if pre is not None else res.photos[i]
    if res.inputs is None:
        raise ValueError("the result holds neither photos nor inputs to draw the maps on")
    x = res.inputs[i].float()
    if res.normalization is not None:
        mean, std = (x.new_tensor(v)[:, None, None] for v in res.normalization)
        x = x * std + mean
    else:
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
    arr = (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(arr)


def _name(res: CamMaps, i: int) -> str:
    return res.names[i] if res.names is not None else f"image {i}"


def _weights(res: CamMaps) -> str | None:
    return getattr(res.model, "weights", None)


def result_figure(
    res: CamMaps, i: int, methods: Sequence[str] | None = None, *, rank: int = 0,
    alpha: float = 0.5, colormap: str = "jet",
) -> Figure:
    """The CLI's comparison figure for image ``i`` and its ``rank``-th explained class, limited
    to ``methods`` (method names; every variant of each)."""

    chosen = [m for m in res.methods if methods is None or m in methods]
    if not chosen:
        raise ValueError(f"none of {list(methods or [])} is in this result ({', '.join(res.maps)})")
    cls = int(res.targets[i, rank])
    label = f"{res.class_name(cls)} {float(res.probabilities[i, cls]):.1%}"
    maps = {n: m[i].numpy() for n, m in res.maps.items()}
    variants = [Smoothing.of(p) for p in res.smoothing]
    rows = figure_rows(maps, rank, chosen, variants, label)
    title = figure_title(_name(res, i), label, None, _weights(res))
    return comparison_figure(result_photo(res, i), rows, suptitle=title, alpha=alpha, colormap=colormap)


def _thumb(image: Image.Image, side: int = THUMB_SIDE) -> str:
    """A data URI of a small JPEG of ``image``."""
    return jpeg_data_uri(image, side, quality=80)


def _label(variant: str) -> str:
    method, parts = parse_variant(variant)
    try:
        title = get_method(method).title
    except UsageError:
        title = method
    return variant_title(title, parts)


def result_html(res: CamMaps, *, max_images: int = MAX_IMAGES, side: int = THUMB_SIDE) -> str:
    """The notebook grid: per image its photo and one overlay per method and variant (first
    explained class), with the class and its probability; a banner for random weights."""
    e = html.escape
    variants = list(res.maps)
    n = len(res)
    head = [f"{n} image{'s' if n != 1 else ''}", f"layer <code>{e(str(res.layer))}</code>"]
    model = getattr(res.model, "name", None)
    if model:
        head.insert(0, f"model <code>{e(model)}</code> ({e(str(_weights(res)))})")
    parts = ['<div class="camscope-result" style="font:12px sans-serif">']
    weights = _weights(res)
    if weights is not None and is_random_weights(weights):
        parts.append(
            '<div style="background:#b3261e;color:#fff;padding:3px 8px;border-radius:4px;'
            'display:inline-block;font-weight:600">RANDOM WEIGHTS: these maps say nothing about '
            "a trained model</div>"
        )
    parts.append(f'<div style="color:#555;margin:2px 0 4px">{" · ".join(head)}</div>')
    parts.append('<table style="border-collapse:collapse"><tr><th></th><th>photo</th>')
    parts += [f'<th style="padding:2px 4px">{e(_label(v))}</th>' for v in variants]
    parts.append("</tr>")
    for i in range(min(n, max_images)):
        photo = result_photo(res, i)
        cls = int(res.targets[i, 0])
        caption = f"{res.class_name(cls)} {float(res.probabilities[i, cls]):.1%}"
        more = res.targets.shape[1] - 1
        if more:
            caption += f" (+{more} more class{'es' if more > 1 else ''})"
        parts.append(
            f'<tr><td style="text-align:right;padding:2px 6px;max-width:160px;word-break:break-all">'
            f"<b>{e(_name(res, i))}</b><br>{e(caption)}</td>"
            f'<td><img src="{_thumb(photo, side)}" alt="{e(_name(res, i))}"></td>'
        )
        for v in variants:
            img = overlay(photo, res.maps[v][i, 0].numpy(), max_side=2 * side)
            parts.append(f'<td><img src="{_thumb(img, side)}" alt="{e(_label(v))} of {e(_name(res, i))}"></td>')
        parts.append("</tr>")
    parts.append("</table>")
    if n > max_images:
        parts.append(f'<div style="color:#555">{n - max_images} more images: res.figure(i) shows any one</div>')
    parts.append("</div>")
    return "".join(parts)
