"""Figures draw a target's region: a detection's box and a segment's mask outline, scaled from
the map's frame to the photo, white edged in black; nothing else of the image changes."""

from __future__ import annotations

import numpy as np
from PIL import Image

from camscope.render.draw import TargetRegion, mark_region


def test_box_is_drawn_scaled_to_the_photo() -> None:
    photo = Image.new("RGB", (128, 96), (0, 0, 255))
    out = np.asarray(mark_region(photo, TargetRegion((48, 64), box=(16, 8, 48, 40)), width=1))
    # map frame 64x48 -> photo 128x96: the box is x 32..96, y 16..80
    assert (out[16, 32:96] == 255).all() and (out[16:80, 32] == 255).all() and (out[79, 32:96] == 255).all()
    assert (out[40, 60] == (0, 0, 255)).all() and (out[5, 5] == (0, 0, 255)).all()  # inside and outside untouched
    assert (out[15, 40] == 0).all() or (out[17, 40] == 0).all()  # the black edge beside the white line


def test_mask_outline_is_drawn_and_its_inside_kept() -> None:
    photo = Image.new("RGB", (64, 64), (10, 200, 10))
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    out = np.asarray(mark_region(photo, TargetRegion((32, 32), mask=mask), width=1))
    white = (out == 255).all(axis=2)
    expected = np.zeros((64, 64), bool)
    expected[16:48, 16:48] = True
    inner = expected.copy()
    inner[17:47, 17:47] = False
    assert (white == inner).all()  # exactly the outline of the upscaled mask
    assert (out[32, 32] == (10, 200, 10)).all()


def test_no_region_leaves_the_image_as_it_is() -> None:
    photo = Image.new("RGB", (8, 8), (1, 2, 3))
    assert mark_region(photo, None) is photo
    assert mark_region(photo, TargetRegion((8, 8))) is photo
