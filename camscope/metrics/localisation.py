"""Localisation metrics against ground-truth boxes or masks: pointing game, energy pointing game.

Box convention: ``(x0, y0, x1, y1)`` in continuous pixel-edge coordinates of a given frame;
pixel (row i, column j) covers [j, j+1) x [i, i+1) and belongs to a box when its centre
(j + 0.5, i + 0.5) lies in [x0, x1) x [y0, y1). Integer boxes therefore cover columns
x0..x1-1 and rows y0..y1-1, and resizing a box is an exact multiplication of its coordinates.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from camscope.errors import UsageError
from camscope.metrics._common import MapLike, as_map

logger = logging.getLogger(__name__)


class Box(NamedTuple):
    """An axis-aligned box; ``size`` is the (width, height) of its coordinate frame when known."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str | None = None
    size: tuple[int, int] | None = None


BoxLike = Box | Sequence[float]
RegionLike = np.ndarray | Tensor | Sequence[BoxLike] | BoxLike
"""A boolean (H, W) mask (numpy or torch), one box, or a sequence of boxes (union)."""


# --------------------------------------------------------------------------------------------
# Regions
# --------------------------------------------------------------------------------------------


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def boxes_to_mask(boxes: Sequence[BoxLike], shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of the union of ``boxes`` (pixel-centre rule, see module docstring)."""
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    cx = np.arange(w) + 0.5
    cy = np.arange(h) + 0.5
    for k, b in enumerate(boxes):
        if len(b) < 4 or not all(_is_number(v) for v in b[:4]):
            raise UsageError(f"boxes[{k}]: expected (x0, y0, x1, y1) numbers, got {b!r}")
        x0, y0, x1, y1 = (float(v) for v in b[:4])
        if not (x1 >= x0 and y1 >= y0):
            raise UsageError(f"boxes[{k}]: expected x1 >= x0 and y1 >= y0, got {b!r}")
        inx = (cx >= x0) & (cx < x1)
        iny = (cy >= y0) & (cy < y1)
        mask |= iny[:, None] & inx[None, :]
    return mask


def region_mask(mask_or_boxes: RegionLike, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask from a mask (numpy/torch, bool or 0/1), one box, or several boxes
    (a sequence of boxes or a (K, 4) array)."""
    if isinstance(mask_or_boxes, Tensor):
        mask_or_boxes = mask_or_boxes.detach().cpu().numpy()
    is_box_array = (
        isinstance(mask_or_boxes, np.ndarray)
        and mask_or_boxes.ndim == 2
        and mask_or_boxes.dtype != bool
        and mask_or_boxes.shape[1] == 4
        and mask_or_boxes.shape != tuple(shape)
    )
    if isinstance(mask_or_boxes, np.ndarray) and mask_or_boxes.ndim == 2 and not is_box_array:
        arr = mask_or_boxes
        if arr.shape != tuple(shape):
            raise UsageError(f"mask: shape {arr.shape} does not match the map {tuple(shape)}")
        if arr.dtype != bool:
            if not np.all(np.isin(arr, (0, 1))):
                raise UsageError("mask: expected a boolean or 0/1 mask")
            arr = arr.astype(bool)
        return arr
    seq = list(mask_or_boxes)  # type: ignore[arg-type]
    if isinstance(mask_or_boxes, Box) or (len(seq) == 4 and all(_is_number(v) for v in seq)):
        seq = [mask_or_boxes]  # a single box
    return boxes_to_mask(seq, shape)


# --------------------------------------------------------------------------------------------
# Pointing games
# --------------------------------------------------------------------------------------------


def pointing_game(
    saliency: MapLike,
    mask_or_boxes: RegionLike,
    *,
    tolerance: float = 15,
    ties: str = "all",
) -> bool:
    """Pointing game hit (Zhang et al. 2016/2018, "Top-down neural attention by excitation
    backprop", ECCV 2016 / IJCV 2018): the map's maximum point must fall in the object region, dilated by
    ``tolerance`` pixels (15 in the paper). Hit iff ``dist(argmax S, region) <= tolerance``
    (Euclidean distance between pixel centres, ``scipy.ndimage.distance_transform_edt``).

    Ties between several maxima: ``"all"`` (default) hits only if every maximum is in the
    tolerance zone, so a constant map cannot hit by chance; ``"any"`` hits if one is; ``"first"``
    uses the first maximum in row-major order (``np.argmax``). An empty region is a miss.
    """
    sal = as_map(saliency)
    region = region_mask(mask_or_boxes, sal.shape)
    if tolerance < 0:
        raise UsageError(f"tolerance: expected a non-negative number, got {tolerance}")
    if ties not in ("all", "any", "first"):
        raise UsageError(f"ties: expected 'all', 'any' or 'first', got {ties!r}")
    if not region.any():
        logger.warning("pointing game: empty ground-truth region; counted as a miss")
        return False
    if tolerance > 0:
        from scipy.ndimage import distance_transform_edt

        zone = distance_transform_edt(~region) <= tolerance
    else:
        zone = region
    if ties == "first":
        return bool(zone.ravel()[int(np.argmax(sal))])
    maxima = sal == sal.max()
    inside = zone[maxima]
    return bool(inside.all() if ties == "all" else inside.any())


def pointing_hits(maps: torch.Tensor, masks: torch.Tensor, *, ties: str = "all") -> torch.Tensor:
    """:func:`pointing_game` at 0 px tolerance for a batch: (n,H,W) maps and masks -> (n,) bool.

    ``ties="first"``: the first maximum in row-major order (a NaN is never the maximum; a
    constant map points at pixel (0,0)); ``"all"``: every maximum must be inside.
    """
    if maps.dim() != 3 or maps.shape != masks.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must both be (n,H,W)")
    if ties not in ("all", "first"):
        raise UsageError(f"ties: expected 'all' or 'first', got {ties!r}")
    flat = torch.nan_to_num(maps.detach().reshape(maps.shape[0], -1).float(), nan=-math.inf)
    region = masks.reshape(masks.shape[0], -1).bool().to(flat.device)
    if ties == "first":
        return region.gather(1, flat.argmax(dim=1)[:, None])[:, 0]
    maxima = flat == flat.amax(dim=1, keepdim=True)
    return (maxima & ~region).sum(dim=1) == 0


def energy_pointing_game(saliency: MapLike, mask_or_boxes: RegionLike) -> float:
    """Energy-based pointing game (Wang et al. 2020, Score-CAM, Sec. 4.3)::

        Proportion = sum_{(i,j) in bbox} S_ij / (sum_{(i,j) in bbox} S_ij + sum_{(i,j) not in bbox} S_ij)

    i.e. ``sum(S * M) / sum(S)`` for a non-negative map S and the region mask M. An all-zero map
    has no energy and scores 0.0 (use :func:`camscope.metrics.is_degenerate` to flag it).
    """
    sal = as_map(saliency)
    if sal.min() < 0:
        raise UsageError("saliency: energy pointing game needs a non-negative map")
    region = region_mask(mask_or_boxes, sal.shape)
    total = float(sal.sum())
    if total <= 0:
        return 0.0
    return float(sal[region].sum() / total)


# --------------------------------------------------------------------------------------------
# Box files
# --------------------------------------------------------------------------------------------


def _parse_float(text: str | None, what: str, where: str) -> float:
    try:
        value = float((text or "").strip())
    except ValueError:
        raise UsageError(f"{where}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"{where}: {what} {text!r} is not a finite number")
    return value


def _parse_size(w_text: str | None, h_text: str | None, where: str) -> tuple[int, int] | None:
    if not (w_text or "").strip() and not (h_text or "").strip():
        return None
    w = _parse_float(w_text, "width", where)
    h = _parse_float(h_text, "height", where)
    if w <= 0 or h <= 0 or w != int(w) or h != int(h):
        raise UsageError(f"{where}: width/height must be positive integers, got {w_text!r}, {h_text!r}")
    return int(w), int(h)


def _make_box(
    x0: float, y0: float, x1: float, y1: float, label: str | None, size: tuple[int, int] | None, where: str
) -> Box:
    if not (x1 > x0 and y1 > y0):
        raise UsageError(f"{where}: empty box ({x0}, {y0}, {x1}, {y1}); need x1 > x0 and y1 > y0")
    return Box(x0, y0, x1, y1, label, size)


def _load_csv(path: Path) -> dict[str, list[Box]]:
    out: dict[str, list[Box]] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                raise UsageError(f"{path}:1: empty CSV; expected a header file,x0,y0,x1,y1")
            fields = [(f or "").strip().lower() for f in reader.fieldnames]
            missing = [c for c in ("file", "x0", "y0", "x1", "y1") if c not in fields]
            if missing:
                raise UsageError(f"{path}:1: missing column(s) {', '.join(missing)} in the header")
            reader.fieldnames = fields
            has_size = "width" in fields or "height" in fields
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row:
                    raise UsageError(f"{where}: more values than header columns")
                if any(row.get(c) is None for c in ("file", "x0", "y0", "x1", "y1")):
                    raise UsageError(f"{where}: fewer values than header columns")
                name = (row["file"] or "").strip().replace("\\", "/")
                if not name:
                    raise UsageError(f"{where}: empty file name")
                coords = [_parse_float(row[c], c, where) for c in ("x0", "y0", "x1", "y1")]
                size = _parse_size(row.get("width"), row.get("height"), where) if has_size else None
                label = (row.get("label") or "").strip() or None
                boxes = out.setdefault(name, [])
                if size is not None and any(b.size not in (None, size) for b in boxes):
                    raise UsageError(f"{where}: size {size} conflicts with earlier rows for {name}")
                boxes.append(_make_box(*coords, label, size, where))
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a UTF-8 text CSV file") from None
    except csv.Error as exc:
        raise UsageError(f"{path}: malformed CSV ({exc})") from None
    return out


def _load_xml(path: Path, one_based: bool) -> tuple[str, list[Box]]:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        line = exc.position[0] if getattr(exc, "position", None) else "?"
        raise UsageError(f"{path}:{line}: malformed XML ({exc})") from None
    if root.tag != "annotation":
        raise UsageError(f"{path}: expected an <annotation> root element, got <{root.tag}>")
    name = (root.findtext("filename") or "").strip() or path.stem
    size_el = root.find("size")
    size = None
    if size_el is not None:
        w_text, h_text = size_el.findtext("width"), size_el.findtext("height")
        # VOC files sometimes carry <width>0</width> when the size is unknown.
        if (w_text or "").strip() not in ("", "0") and (h_text or "").strip() not in ("", "0"):
            size = _parse_size(w_text, h_text, f"{path}: <size>")
    shift = 1.0 if one_based else 0.0
    boxes: list[Box] = []
    for k, obj in enumerate(root.iter("object")):
        where = f"{path}: <object> #{k + 1}"
        bnd = obj.find("bndbox")
        if bnd is None:
            raise UsageError(f"{where}: missing <bndbox>")
        vals = {}
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = bnd.findtext(tag)
            if text is None:
                raise UsageError(f"{where}: missing <{tag}>")
            vals[tag] = _parse_float(text, f"<{tag}>", where)
        label = (obj.findtext("name") or "").strip() or None
        # Inclusive pixel indices -> pixel-edge coordinates.
        boxes.append(
            _make_box(
                vals["xmin"] - shift,
                vals["ymin"] - shift,
                vals["xmax"] - shift + 1.0,
                vals["ymax"] - shift + 1.0,
                label,
                size,
                where,
            )
        )
    return name, boxes


def load_boxes(path: str | os.PathLike[str], *, xml_one_based: bool = True) -> dict[str, list[Box]]:
    """Read ground-truth boxes: file name -> boxes in the original photo's pixel frame.

    Accepted inputs:

    * CSV with header ``file,x0,y0,x1,y1`` and optional ``width,height`` (the frame the
      coordinates refer to, i.e. the original photo size) and ``label``. Coordinates are
      pixel-edge coordinates (see module docstring); several rows per file give several boxes.
      ``file`` is kept as written (base name or relative path, ``/`` separators).
    * A PASCAL VOC / ImageNet XML annotation file, or a folder searched recursively for them:
      ``<annotation><filename/><size><width/><height/></size><object><name/><bndbox>
      <xmin/><ymin/><xmax/><ymax/></bndbox></object>...``. Their coordinates are inclusive pixel
      indices, 1-based in VOC (``xml_one_based=True``, converted to ``(xmin-1, ymin-1, xmax,
      ymax)``); pass ``xml_one_based=False`` for 0-based files (``(xmin, ymin, xmax+1, ymax+1)``).
      The key is ``<filename>`` (ImageNet omits the extension; see :func:`find_boxes`).

    Malformed input raises :class:`camscope.errors.UsageError` naming the file (and line).
    """
    p = Path(path)
    if p.is_dir():
        files = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() == ".xml")
        if not files:
            raise UsageError(f"{p}: folder contains no .xml annotation files")
        out: dict[str, list[Box]] = {}
        for f in files:
            name, boxes = _load_xml(f, xml_one_based)
            out.setdefault(name, []).extend(boxes)
        return out
    if not p.is_file():
        raise UsageError(f"{p}: no such box file or folder")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return _load_csv(p)
    if suffix == ".xml":
        name, boxes = _load_xml(p, xml_one_based)
        return {name: boxes}
    raise UsageError(f"{p}: unsupported box file type; expected .csv, .xml or a folder of .xml")


def find_boxes(
    table: dict[str, list[Box]], image_path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> list[Box] | None:
    """Boxes of ``image_path`` in a :func:`load_boxes` table, or None.

    Matched in order by: path relative to ``root`` (when given), base name, base name without
    extension (ImageNet XML ``<filename>`` has none). A level that matches several keys is
    ambiguous and raises :class:`UsageError`.
    """
    p = Path(image_path)
    candidates: list[str] = []
    if root is not None:
        try:
            candidates.append(p.resolve().relative_to(Path(root).resolve()).as_posix())
        except ValueError:
            pass
    candidates.append(p.as_posix())
    for key in candidates:
        if key in table:
            return table[key]
    for level, probe in (("name", p.name), ("stem", p.stem)):
        hits = [k for k in table if (Path(k).name if level == "name" else Path(k).stem) == probe]
        if len(hits) == 1:
            return table[hits[0]]
        if len(hits) > 1:
            raise UsageError(f"{image_path}: ambiguous box entries {hits[:3]}; use relative paths")
    return None


def scale_boxes(
    boxes: Sequence[BoxLike], from_size: tuple[int, int] | None, to_size: tuple[int, int]
) -> list[Box]:
    """Rescale boxes from a (width, height) frame to another (plain resize, no crop).

    ``from_size=None`` uses each box's own ``size`` (from :func:`load_boxes`). For a
    resize-then-centre-crop preprocessing, scale to the resized size, then subtract the crop
    offset. Returned boxes carry ``size=to_size``.
    """
    tw, th = to_size
    if tw <= 0 or th <= 0:
        raise UsageError(f"to_size: expected a positive (width, height), got {to_size}")
    out: list[Box] = []
    for k, b in enumerate(boxes):
        b = b if isinstance(b, Box) else Box(*(float(v) for v in b[:4]))
        frame = from_size if from_size is not None else b.size
        if frame is None:
            raise UsageError(f"boxes[{k}]: unknown source frame size; pass from_size=(width, height)")
        fw, fh = frame
        if fw <= 0 or fh <= 0:
            raise UsageError(f"from_size: expected a positive (width, height), got {frame}")
        sx, sy = tw / fw, th / fh
        out.append(Box(b.x0 * sx, b.y0 * sy, b.x1 * sx, b.y1 * sy, b.label, (int(tw), int(th))))
    return out
