"""Pointing games and box files on hand-made maps with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from camscope.errors import UsageError
from camscope.metrics import (
    Box,
    boxes_to_mask,
    energy_pointing_game,
    find_boxes,
    load_boxes,
    pointing_game,
    scale_boxes,
)


def peak_map(row: int, col: int, shape: tuple[int, int] = (20, 20)) -> np.ndarray:
    s = np.zeros(shape)
    s[row, col] = 1.0
    return s


def test_box_to_mask_pixel_centre_rule() -> None:
    mask = boxes_to_mask([(2, 1, 5, 3)], (6, 8))
    assert mask.sum() == 3 * 2
    assert mask[1:3, 2:5].all()
    # Fractional box: pixel 2's centre (2.5) is inside [2.4, 3.6), pixel 3's (3.5) too.
    assert np.flatnonzero(boxes_to_mask([(2.4, 0, 3.6, 1)], (1, 8))).tolist() == [2, 3]


def test_pointing_game_hit_miss_and_tolerance() -> None:
    box = [(0, 0, 10, 10)]  # columns 0..9, rows 0..9
    assert pointing_game(peak_map(3, 4), box, tolerance=0)
    # Peak at (row 10, col 15): nearest box pixel (9, 9) is sqrt(1 + 36) ~ 6.08 px away.
    far = peak_map(10, 15)
    assert not pointing_game(far, box, tolerance=0)
    assert not pointing_game(far, box, tolerance=6)
    assert pointing_game(far, box, tolerance=7)
    assert pointing_game(far, box)  # default tolerance 15 (Zhang et al.)
    # A torch map and a single bare box are accepted.
    assert pointing_game(torch.as_tensor(peak_map(3, 4)), (0, 0, 10, 10), tolerance=0)


def test_pointing_game_with_mask_and_ties() -> None:
    mask = np.zeros((20, 20), bool)
    mask[15:, 15:] = True
    s = np.zeros((20, 20))
    s[2, 2] = s[17, 17] = 1.0  # two maxima: one outside, one inside
    assert not pointing_game(s, mask, tolerance=0, ties="all")
    assert pointing_game(s, mask, tolerance=0, ties="any")
    assert not pointing_game(s, mask, tolerance=0, ties="first")  # (2, 2) comes first
    # A constant map cannot hit by chance with the default tie rule.
    assert not pointing_game(np.ones((20, 20)), mask, tolerance=0)
    # Empty region: a miss.
    assert not pointing_game(s, np.zeros((20, 20), bool))
    with pytest.raises(UsageError, match="mask"):
        pointing_game(s, np.zeros((10, 10), bool))


def test_energy_pointing_game() -> None:
    s = np.zeros((10, 10))
    s[1, 1] = s[2, 2] = s[8, 8] = s[9, 9] = 1.0
    assert energy_pointing_game(s, [(0, 0, 5, 5)]) == pytest.approx(0.5)
    s[1, 1] = 3.0  # 4 of 6 units inside
    assert energy_pointing_game(s, [(0, 0, 5, 5)]) == pytest.approx(4 / 6)
    # Union of two boxes covers everything with energy.
    assert energy_pointing_game(s, [(0, 0, 5, 5), (8, 8, 10, 10)]) == pytest.approx(1.0)
    assert energy_pointing_game(s, np.array([[0, 0, 5, 5], [8, 8, 10, 10]])) == pytest.approx(1.0)
    assert energy_pointing_game(np.zeros((10, 10)), [(0, 0, 5, 5)]) == 0.0
    with pytest.raises(UsageError, match="non-negative"):
        energy_pointing_game(-s, [(0, 0, 5, 5)])


def test_load_boxes_csv(tmp_path: Path) -> None:
    p = tmp_path / "boxes.csv"
    p.write_text(
        "file,x0,y0,x1,y1,width,height\n"
        "a.jpg,10,20,110,120,400,300\n"
        "a.jpg,0,0,50,50,400,300\n"
        "sub/b.png,1.5,2,3,4,,\n"
    )
    table = load_boxes(p)
    assert set(table) == {"a.jpg", "sub/b.png"}
    assert [tuple(b[:4]) for b in table["a.jpg"]] == [(10, 20, 110, 120), (0, 0, 50, 50)]
    assert table["a.jpg"][0].size == (400, 300)
    assert table["sub/b.png"][0].size is None
    scaled = scale_boxes(table["a.jpg"], None, (200, 150))
    assert tuple(scaled[0][:4]) == (5, 10, 55, 60) and scaled[0].size == (200, 150)
    assert tuple(scale_boxes([(0, 0, 100, 50)], (200, 100), (100, 100))[0][:4]) == (0, 0, 50, 50)
    with pytest.raises(UsageError, match="from_size"):
        scale_boxes(table["sub/b.png"], None, (10, 10))
    assert find_boxes(table, tmp_path / "imgs" / "a.jpg") == table["a.jpg"]
    assert find_boxes(table, "missing.jpg") is None


def test_load_boxes_malformed_csv_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "boxes.csv"
    p.write_text("file,x0,y0,x1,y1\na.jpg,1,2,3,4\na.jpg,abc,2,3,4\n")
    with pytest.raises(UsageError, match=r"boxes\.csv:3: x0 'abc' is not a number"):
        load_boxes(p)
    p.write_text("file,x0,y0,x1\na.jpg,1,2,3\n")
    with pytest.raises(UsageError, match=r"boxes\.csv:1: missing column\(s\) y1"):
        load_boxes(p)
    p.write_text("file,x0,y0,x1,y1\na.jpg,5,2,3,4\n")
    with pytest.raises(UsageError, match=r"boxes\.csv:2: empty box"):
        load_boxes(p)
    with pytest.raises(UsageError, match="no such"):
        load_boxes(tmp_path / "nope.csv")


VOC = """<annotation>
  <filename>n01440764_10026</filename>
  <size><width>250</width><height>200</height><depth>3</depth></size>
  <object><name>n01440764</name><bndbox><xmin>1</xmin><ymin>11</ymin><xmax>100</xmax><ymax>50</ymax></bndbox></object>
  <object><name>n01440764</name><bndbox><xmin>120</xmin><ymin>60</ymin><xmax>250</xmax><ymax>200</ymax></bndbox></object>
</annotation>
"""


def test_load_boxes_voc_xml_file_and_folder(tmp_path: Path) -> None:
    (tmp_path / "ann").mkdir()
    p = tmp_path / "ann" / "x.xml"
    p.write_text(VOC)
    table = load_boxes(p)
    boxes = table["n01440764_10026"]
    # 1-based inclusive (1..100) -> pixel edges [0, 100).
    assert boxes[0] == Box(0, 10, 100, 50, "n01440764", (250, 200))
    assert tuple(boxes[1][:4]) == (119, 59, 250, 200)
    assert load_boxes(tmp_path / "ann") == table
    assert tuple(load_boxes(p, xml_one_based=False)["n01440764_10026"][0][:4]) == (1, 11, 101, 51)
    # ImageNet <filename> has no extension: matched by stem.
    assert find_boxes(table, "/data/val/n01440764_10026.JPEG") == boxes


def test_load_boxes_malformed_xml(tmp_path: Path) -> None:
    p = tmp_path / "bad.xml"
    p.write_text("<annotation>\n<object><bndbox><xmin>1</xmin></object>\n</annotation>\n")
    with pytest.raises(UsageError, match=r"bad\.xml:2: malformed XML"):
        load_boxes(p)
    p.write_text("<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax></bndbox></object></annotation>")
    with pytest.raises(UsageError, match=r"bad\.xml: <object> #1: missing <ymax>"):
        load_boxes(p)


def test_pointing_hits_is_the_pointing_game_of_a_batch() -> None:
    """The batched form (the synthetic benchmark's and the localisation tests') gives
    pointing_game's verdict scene by scene, for both tie rules."""
    import torch

    from camscope.metrics import pointing_game, pointing_hits

    g = torch.Generator().manual_seed(0)
    maps = torch.rand(40, 12, 12, generator=g).round(decimals=1)  # many ties
    maps[0] = 0.0  # constant: "first" points at (0, 0), "all" misses unless all inside
    maps[1, 3, 4] = float("nan")
    masks = torch.rand(40, 12, 12, generator=g) > 0.6
    masks[0, 0, 0] = True
    for ties in ("all", "first"):
        got = pointing_hits(maps, masks, ties=ties).tolist()
        want = [pointing_game(torch.nan_to_num(maps[i], nan=-1.0).numpy(), masks[i].numpy(), tolerance=0, ties=ties)
                for i in range(40)]
        assert got == want, ties
    assert pointing_hits(maps[:1], masks[:1], ties="first").item() is True
