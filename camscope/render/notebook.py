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
from camscope.render.draw import TargetRegion, comparison_figure, jpeg_data_uri, overlay
from camscope.render.targets import target_caption, target_region

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
    label, region = target_info(res, i, rank)
    if region is False:
        raise ValueError(f"image {i} has no target {rank} (it has {len(res.explained[i]) if res.explained else 0})")
    maps = {n: m[i].numpy() for n, m in res.maps.items()}
    variants = [Smoothing.of(p) for p in res.smoothing]
    rows = figure_rows(maps, rank, chosen, variants, label)
    title = figure_title(_name(res, i), label, None, _weights(res))
    return comparison_figure(result_photo(res, i), rows, suptitle=title, alpha=alpha, colormap=colormap,
                             region=region or None)


def is_task_result(res: CamMaps) -> bool:
    """Whether ``res`` explains targets of another task than ``classify`` (named and drawn as
    such: detections with their box, segments with their mask outline...)."""
    return res.explained is not None and res.task not in (None, "classify")


def target_info(res: CamMaps, i: int, rank: int) -> tuple[str, TargetRegion | None | bool]:
    """Caption and region of image ``i``'s ``rank``-th target (region False: no such target)."""
    if not is_task_result(res):
        cls = int(res.targets[i, rank])
        return f"{res.class_name(cls)} {float(res.probabilities[i, cls]):.1%}", None
    assert res.explained is not None
    if rank >= len(res.explained[i]):
        return "no target", False
    t = res.explained[i][rank]
    score = float(res.scores[i, rank]) if res.scores is not None else float("nan")
    prob = float(res.target_probabilities[i, rank]) if res.target_probabilities is not None else None
    frame = tuple(int(v) for v in next(iter(res.maps.values())).shape[-2:])
    name = t.name(getattr(res.model, "categories", None))
    return target_caption(t, name, score, res.probabilities[i], prob), target_region(t, frame)  # type: ignore[arg-type]


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
    explained target, its box or mask outline drawn), with the class and its probability (or
    the target's caption); a banner for random weights."""
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
        caption, region = target_info(res, i, 0)
        more = (len(res.explained[i]) if is_task_result(res) and res.explained else res.targets.shape[1]) - 1
        if more > 0:
            what = ("target", "targets") if is_task_result(res) else ("class", "classes")
            caption += f" (+{more} more {what[more > 1]})"
        parts.append(
            f'<tr><td style="text-align:right;padding:2px 6px;max-width:160px;word-break:break-all">'
            f"<b>{e(_name(res, i))}</b><br>{e(caption)}</td>"
            f'<td><img src="{_thumb(photo, side)}" alt="{e(_name(res, i))}"></td>'
        )
        for v in variants:
            if region is False:  # e.g. a detector that found nothing above the threshold
                parts.append('<td style="color:#888;text-align:center">no target</td>')
                continue
            img = overlay(photo, res.maps[v][i, 0].numpy(), max_side=2 * side, region=region or None)
            parts.append(f'<td><img src="{_thumb(img, side)}" alt="{e(_label(v))} of {e(_name(res, i))}"></td>')
        parts.append("</tr>")
    parts.append("</table>")
    if n > max_images:
        parts.append(f'<div style="color:#555">{n - max_images} more images: res.figure(i) shows any one</div>')
    parts.append("</div>")
    return "".join(parts)
