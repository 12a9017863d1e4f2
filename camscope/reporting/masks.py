"""Regions to measure localisation against, in the model input's frame (where the maps live):
ground-truth masks (``camscope report --masks DIR``: one PNG per photo, matched by file stem)
and each target's own region (a detection's box, a segment's mask file in the run folder).

A region mask is any PNG whose non-zero pixels are the object; it must have the photo's size
(it is then resized and cropped as the photo was, nearest neighbour)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from camscope.errors import UsageError

__all__ = ["load_mask_dir", "mask_for", "mask_to_input_frame", "own_region"]

MASK_SUFFIXES = (".png",)


def load_mask_dir(path: str | Path) -> dict[str, Path]:
    """``--masks DIR``: file stem (and path relative to DIR without suffix) -> mask file; a
    one-line error when DIR is not a folder or holds no PNG."""
    root = Path(path)
    if not root.is_dir():
        raise UsageError(f"--masks {path}: not a folder (give a folder of one mask PNG per photo, named like the photo)")
    table: dict[str, Path] = {}
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.suffix.lower() in MASK_SUFFIXES:
            rel = f.relative_to(root).with_suffix("").as_posix()
            table.setdefault(rel, f)
            table.setdefault(f.stem, f)
    if not table:
        raise UsageError(f"--masks {path}: no .png masks in it")
    return table


def mask_for(table: dict[str, Path], rel: str) -> Path | None:
    """The mask of the photo ``rel`` (its relative name in the run): by relative stem, else by
    file stem."""
    stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
    return table.get(stem) or table.get(stem.rsplit("/", 1)[-1])


def mask_to_input_frame(path: Path, photo_size: tuple[int, int], preprocess: Any) -> np.ndarray:
    """A ground-truth mask PNG (the photo's size, (W, H)) as a boolean (H, W) mask of the model
    input; ``ValueError`` with one line when it cannot be read or has another size."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            mask = im.convert("L")
    except Exception as exc:
        raise ValueError(f"mask {path} unreadable ({type(exc).__name__})") from None
    if tuple(mask.size) != tuple(photo_size):
        raise ValueError(f"mask {path} is {mask.size[0]}x{mask.size[1]}, the photo {photo_size[0]}x{photo_size[1]}")
    return _to_frame(mask, preprocess)


def _to_frame(mask: Any, preprocess: Any) -> np.ndarray:
    geometric = replace(preprocess, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="nearest")
    return geometric.to_tensor(mask.convert("RGB"))[0].numpy() > 0.5


def own_region(target: Any, out: Path, shape: tuple[int, int]) -> tuple[np.ndarray, str] | None:
    """A target's own region (an :class:`~camscope.io.rundir.ExplainedTarget` of a task run)
    as a boolean (H, W) mask of the map's frame, and what it is; None for a target without one.
    ``ValueError`` when its mask file cannot be read."""
    from PIL import Image

    from camscope.metrics import boxes_to_mask

    if target.box is not None:
        return boxes_to_mask([target.box], shape), "the model's own detection box"
    if target.mask:
        try:
            with Image.open(out / target.mask) as im:
                im.load()
                m = im.convert("L")
        except Exception as exc:
            raise ValueError(f"region mask {target.mask} unreadable ({type(exc).__name__})") from None
        if m.size != (shape[1], shape[0]):
            m = m.resize((shape[1], shape[0]), Image.NEAREST)
        region = str(target.details.get("region", "predicted"))
        what = "the model's own predicted mask" if region == "predicted" else f"the segment's {region} region"
        return np.asarray(m) > 0, what
    return None
