"""Generator of a corpus of good, odd and bad input files (made on the fly, nothing downloaded).

`make_bad_input_corpus(root)` writes everything into ONE folder and returns
``[(path, expected)]`` where `expected` is "ok" (loads as RGB) or a substring of the
`ImageLoadError` reason. The `smooth_noise` / `*_array` helpers regenerate the exact source
pixels so that tests can check loaded values.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

OK = "ok"
NOT_IMAGE = "cannot identify image file"
CORRUPT = "truncated or corrupt image data"
EMPTY = "empty file"
IS_DIR = "is a directory"
BOMB = "decompression-bomb guard"
BROKEN_LINK = "broken symbolic link"
PERMISSION = "permission denied"

# A name with non-ASCII and HTML-special characters ("/" cannot be in a name: U+2215 instead).
UNICODE_NAME = "ünïcødé <script>alert(\"x\")<\u2215script> & 'q'.png"
HUGE_HEADER_SIZE = (20000, 20000)  # over twice Pillow's limit: Pillow's own guard trips
BIG_HEADER_SIZE = (10000, 10000)  # over the default max_pixels, under Pillow's error limit


def smooth_noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Photo-like uint8 array (H, W, C): random low-resolution noise, bilinearly upsampled."""
    rng = np.random.default_rng(seed)
    small = rng.integers(
        0, 256, size=(max(2, height // 8), max(2, width // 8), channels), dtype=np.uint8
    )
    planes = [
        np.asarray(
            Image.fromarray(small[..., c]).resize((width, height), Image.Resampling.BILINEAR)
        )
        for c in range(channels)
    ]
    return np.stack(planes, axis=-1)


def rgba_array() -> np.ndarray:
    """8x6 RGBA: alpha 0 in column 0-1, 255 in columns 2-3, 128 in columns 4-5."""
    arr = np.concatenate([smooth_noise(6, 8, 3, seed=3), np.zeros((6, 8, 1), np.uint8)], axis=-1)
    arr[:, 0:2, 3] = 0
    arr[:, 2:4, 3] = 255
    arr[:, 4:6, 3] = 128
    arr[:, 6:8, 3] = 64
    return arr


def palette_image() -> Image.Image:
    """5x4 palette image; index 0 is fully transparent, index 1 half transparent."""
    idx = (np.arange(20, dtype=np.uint8).reshape(4, 5) % 4).astype(np.uint8)
    img = Image.frombytes("P", (5, 4), idx.tobytes())
    palette = [10, 20, 30, 200, 100, 50, 0, 255, 0, 12, 34, 56]
    img.putpalette(palette + [0] * (768 - len(palette)))
    return img


PALETTE_ALPHA = bytes([0, 128, 255, 255])


def gray16_array() -> np.ndarray:
    """7x5 uint16 covering 0 and 65535."""
    arr = smooth_noise(5, 7, 1, seed=5)[..., 0].astype(np.uint16) * 257
    arr = arr + np.arange(35, dtype=np.uint16).reshape(5, 7) % 200
    arr = np.minimum(arr, 65535).astype(np.uint16)
    arr[0, 0], arr[0, 1] = 0, 65535
    return arr


def exif_stored_array() -> np.ndarray:
    """40x24 (W x H) stored image with four distinct quadrant colours."""
    arr = np.zeros((24, 40, 3), np.uint8)
    arr[:12, :20] = (255, 0, 0)  # top-left red
    arr[:12, 20:] = (0, 0, 255)  # top-right blue
    arr[12:, :20] = (0, 255, 0)  # bottom-left green
    arr[12:, 20:] = (255, 255, 0)  # bottom-right yellow
    return arr


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (8-bit gray) with only a few rows of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 4)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _save(arr_or_img: np.ndarray | Image.Image, path: Path, **kwargs: object) -> Path:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def _symlink(link: Path, target: str, *, is_dir: bool = False) -> bool:
    try:
        os.symlink(target, link, target_is_directory=is_dir)
        return True
    except (OSError, NotImplementedError):
        return False


def make_bad_input_corpus(root: Path) -> list[tuple[Path, str]]:
    """Write the corpus into `root` (created); return [(path, "ok" or expected reason)].

    Also creates a symlink loop ``loop -> .`` (not listed: it is a folder, for `find_images`).
    ``notes.txt`` and ``.hidden.png`` are listed (loading them explicitly must fail / work)
    although a folder walk skips them. Symlink entries are left out where symlinks are
    unsupported, the permission entry when running as root (root reads anything).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out: list[tuple[Path, str]] = []

    def add(path: Path, expected: str) -> None:
        out.append((path, expected))

    photo = smooth_noise(48, 64, 3, seed=1)
    add(_save(photo, root / "photo.jpg", quality=95), OK)
    add(_save(photo, root / "photo.png"), OK)
    add(_save(photo, root / "photo.webp", lossless=True), OK)
    add(_save(photo, root / "photo.ppm"), OK)
    add(_save(photo, root / "UPPER.JPG", quality=90), OK)
    add(_save(photo, root / "png_content.jpg", format="PNG"), OK)  # content wins over suffix
    add(_save(smooth_noise(30, 20, 1, seed=2)[..., 0], root / "gray.png"), OK)
    add(_save(Image.fromarray(rgba_array()).convert("LA"), root / "gray_alpha.png"), OK)
    add(_save(rgba_array(), root / "rgba.png"), OK)
    add(_save(palette_image(), root / "palette_trns.png", transparency=PALETTE_ALPHA), OK)
    add(
        _save(photo, root / "rgb_colorkey.png", transparency=tuple(int(v) for v in photo[0, 0])), OK
    )
    add(_save(gray16_array(), root / "gray16.png"), OK)
    add(_save(gray16_array(), root / "gray16.tif"), OK)
    add(_save((np.indices((6, 9)).sum(axis=0) % 2 == 0), root / "bilevel.png"), OK)
    add(_save(Image.fromarray(photo).convert("CMYK"), root / "cmyk.jpg", quality=95), OK)
    exif = Image.Exif()
    exif[0x0112] = 6
    add(_save(exif_stored_array(), root / "exif_rot6.jpg", quality=95, exif=exif.tobytes()), OK)
    frames = [Image.new("RGB", (10, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    add(
        _save(
            frames[0], root / "animated.gif", save_all=True, append_images=frames[1:], duration=50
        ),
        OK,
    )
    pages = [Image.new("RGB", (12, 9), (0, 0, 255)), Image.new("RGB", (30, 30), (255, 0, 0))]
    add(_save(pages[0], root / "multipage.tif", save_all=True, append_images=pages[1:]), OK)
    add(_save(np.array([[[7, 8, 9]]], np.uint8), root / "tiny_1x1.png"), OK)
    add(_save(smooth_noise(2, 3, 3, seed=4), root / "tiny_3x2.bmp"), OK)
    add(_save(photo, root / UNICODE_NAME), OK)
    add(_save(photo, root / "a.jpg", quality=90), OK)
    add(_save(photo[::-1], root / "a.png"), OK)
    add(_save(photo[:, ::-1], root / "sub_a" / "cat.jpg", quality=90), OK)
    add(_save(photo[::-1, ::-1], root / "sub_b" / "cat.jpg", quality=90), OK)
    add(_save(photo, root / ".hidden.png"), OK)
    if _symlink(root / "link_to_photo.jpg", "photo.png"):
        add(root / "link_to_photo.jpg", OK)
    if _symlink(root / "dangling.jpg", "does-not-exist.jpg"):
        add(root / "dangling.jpg", BROKEN_LINK)
    _symlink(root / "loop", ".", is_dir=True)

    png_header_only(root / "huge_header.png", *HUGE_HEADER_SIZE)
    add(root / "huge_header.png", BOMB)
    png_header_only(root / "big_header.png", *BIG_HEADER_SIZE)
    add(root / "big_header.png", BOMB)
    (root / "not_an_image.jpg").write_text("hello, I am plain text\n", encoding="utf-8")
    add(root / "not_an_image.jpg", NOT_IMAGE)
    (root / "notes.txt").write_text("not an image either\n", encoding="utf-8")
    add(root / "notes.txt", NOT_IMAGE)
    jpeg = (root / "photo.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    add(root / "truncated.jpg", CORRUPT)
    png = (root / "photo.png").read_bytes()
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    add(root / "truncated.png", CORRUPT)
    (root / "empty.png").write_bytes(b"")
    add(root / "empty.png", EMPTY)
    (root / "folder.jpg").mkdir()
    add(root / "folder.jpg", IS_DIR)
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        _save(photo, root / "unreadable.png").chmod(0)
        add(root / "unreadable.png", PERMISSION)
    return out
