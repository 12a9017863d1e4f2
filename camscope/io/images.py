"""Finding input images and loading them as RGB, robust to every odd input.

`find_images` turns files/folders into a deterministic list of `ImageInput` with unique,
filesystem-safe relative names for output files. `load_image` returns a decoded RGB image or
raises `ImageLoadError` with a one-line "path: reason" message; no raw Pillow/OS error escapes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import stat
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from camscope.errors import ImageLoadError, UsageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
"""Lower-case suffixes taken from folders (matched case-insensitively)."""

DEFAULT_MAX_PIXELS = 89_478_485
"""Same default as Pillow's ``Image.MAX_IMAGE_PIXELS`` (about 0.25 GiB of RGB pixels)."""

_MAX_COMPONENT_BYTES = 200  # leaves room for output suffixes within the 255-byte NAME_MAX
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
# EXIF orientation -> transpose that makes the image upright (as ImageOps.exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class ImageInput:
    """One input image: its path and a unique, safe relative POSIX name for its outputs.

    `rel` keeps the extension ("sub/cat.jpg"), so outputs are named ``<rel>.png`` etc. and
    ``a.jpg`` / ``a.png`` never collide.
    """

    path: Path
    rel: str


def is_image_name(name: str | Path) -> bool:
    """True when the file name has one of `IMAGE_EXTENSIONS` (case-insensitive)."""
    return os.path.splitext(str(name))[1].lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------- find_images


def find_images(
    inputs: Sequence[str | Path] | str | Path,
    *,
    follow_symlinks: bool = True,
    include_hidden: bool = False,
) -> list[ImageInput]:
    """Expand files and folders into a deterministic list of image inputs.

    - Files named explicitly are always included, whatever their extension (so a bad one is
      reported by `load_image` rather than silently dropped); dangling symlinks too.
    - Folders are walked recursively in sorted order; only regular files with an image
      extension are taken. Names starting with "." are skipped unless `include_hidden`.
    - Symlinks inside folders are followed when `follow_symlinks` (loops are detected by
      the directory's device/inode and skipped); otherwise they are ignored.
    - A file reached twice (same real path) appears once: where it was reached without a
      symlink if it was, else at its first occurrence.
    - `rel` is the path relative to the folder it was found in (the file name for explicit
      files). Names equal across input roots (compared case-insensitively) are prefixed
      with the root's name, then ``<root>~2``, ``<root>~3``... Unsafe characters (control
      characters, undecodable bytes, backslash) become "_" and over-long names are shortened
      with a hash, so `rel` is always a valid relative path without "..".

    Raises `UsageError` naming an input that does not exist.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found_all: list[tuple[str, tuple[str, ...], Path]] = []  # (root label, rel parts, path)
    for raw in inputs:
        p = Path(raw)
        if not os.path.lexists(p):
            raise UsageError(f"{_display(raw)}: no such file or directory")
        if p.is_dir():
            label = _safe_component(Path(os.path.abspath(p)).name or "root")
            found = _walk(p, follow_symlinks=follow_symlinks, include_hidden=include_hidden)
            if not found:
                logger.warning("%s: no image files found in this folder", _display(p))
        else:
            label = _safe_component(Path(os.path.abspath(p)).parent.name or "root")
            found = [((p.name,), p)]
        found_all.extend((label, parts, path) for parts, path in found)
    # The same file reached twice is listed once: preferably where it was reached without
    # a symlink, else at its first occurrence.
    chosen: dict[str, int] = {}
    for i, (_, _, path) in enumerate(found_all):
        real = os.path.realpath(path)
        if real not in chosen or (
            not _is_direct(found_all[chosen[real]][2], real) and _is_direct(path, real)
        ):
            chosen[real] = i
    keep = set(chosen.values())
    for i, (_, _, path) in enumerate(found_all):
        if i not in keep:
            logger.debug("%s: skipped, same file as another input", _display(path))
    candidates = [
        (label, "/".join(_safe_component(c) for c in parts), path)
        for i, (label, parts, path) in enumerate(found_all)
        if i in keep
    ]
    return _unique_names(candidates)


def _is_direct(path: Path, real: str) -> bool:
    """True when `path` reaches its file without going through a symlink."""
    return os.path.abspath(path) == real


def _walk(
    root: Path, *, follow_symlinks: bool, include_hidden: bool
) -> list[tuple[tuple[str, ...], Path]]:
    """Image files under `root` as (relative parts, path), sorted by relative parts."""
    found: list[tuple[tuple[str, ...], Path]] = []
    visited: set[tuple[int, int]] = set()
    stack: list[tuple[Path, tuple[str, ...]]] = [(root, ())]
    while stack:
        folder, parts = stack.pop()
        try:
            st = os.stat(folder)
            key = (st.st_dev, st.st_ino)
            if key in visited:
                logger.warning(
                    "%s: folder already visited (symlink loop?); skipped", _display(folder)
                )
                continue
            visited.add(key)
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            logger.warning("%s: %s; skipped", _display(folder), _os_reason(e, "folder"))
            continue
        subfolders: list[tuple[Path, tuple[str, ...]]] = []
        for entry in entries:
            if not include_hidden and entry.name.startswith("."):
                continue
            try:
                is_link = entry.is_symlink()
                if is_link and not follow_symlinks:
                    continue
                if entry.is_dir():
                    subfolders.append((Path(entry.path), (*parts, entry.name)))
                elif is_image_name(entry.name) and (
                    entry.is_file() or (is_link and not os.path.exists(entry.path))
                ):
                    # regular files, plus dangling links so that they get reported
                    found.append(((*parts, entry.name), Path(entry.path)))
            except OSError as e:
                logger.warning("%s: %s; skipped", _display(entry.path), _os_reason(e))
        stack.extend(reversed(subfolders))  # pop in sorted order
    found.sort(key=lambda item: item[0])
    return found


def _safe_component(name: str) -> str:
    """One path component, made valid: no separators/control chars, not "." or "..", short."""
    chars = []
    for ch in name:
        code = ord(ch)
        bad = ch in "/\\" or code < 32 or code == 127 or 0xD800 <= code <= 0xDFFF
        chars.append("_" if bad else ch)
    safe = "".join(chars)
    if safe in ("", ".", ".."):
        safe = "_" + safe
    if len(safe.encode("utf-8")) > _MAX_COMPONENT_BYTES:
        digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        stem, ext = os.path.splitext(safe)
        if len(ext.encode("utf-8")) > 16:
            stem, ext = safe, ""
        budget = _MAX_COMPONENT_BYTES - len(ext.encode("utf-8")) - 9
        stem = stem.encode("utf-8")[:budget].decode("utf-8", "ignore")
        safe = f"{stem}~{digest}{ext}"
    return safe


def _unique_names(candidates: list[tuple[str, str, Path]]) -> list[ImageInput]:
    counts = Counter(rel.casefold() for _, rel, _ in candidates)
    used = {key for key, n in counts.items() if n == 1}
    result: list[ImageInput] = []
    for label, rel, path in candidates:
        name = rel
        if counts[rel.casefold()] > 1:
            name, n = f"{label}/{rel}", 2
            while name.casefold() in used or name.casefold() in counts:
                name, n = f"{label}~{n}/{rel}", n + 1
            used.add(name.casefold())
        result.append(ImageInput(path=path, rel=name))
    return result


# --------------------------------------------------------------------------- in memory


@dataclass(frozen=True)
class Photo:
    """A decoded photo with its name and, when it came from a file, that file."""

    image: Image.Image
    name: str
    source: Path | None = None


def collect_photos(images: object) -> list[Photo]:
    """Photos from what a notebook user has at hand: a path or folder (found as the CLI finds
    them), a PIL image, an (H,W,3) or (H,W) uint8 array, a list mixing these, or a dict naming
    them. Images given in memory are named ``image<i>.png`` by their position (or by their
    key); a file that cannot be decoded is a one-line :class:`ImageLoadError`."""
    if isinstance(images, dict):  # name -> image
        named = [(str(name), collect_photos([image])) for name, image in images.items()]
        return [Photo(p.image, name if len(ps) == 1 else f"{name}/{p.name}", p.source) for name, ps in named for p in ps]
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    paths = [item for item in items if isinstance(item, (str, Path))]
    found = find_images(paths) if paths else []  # one search: names unique across roots
    photos: list[Photo] = []
    for i, item in enumerate(items):
        if isinstance(item, (str, Path)):
            photos.extend(Photo(load_image(f.path), f.rel, f.path) for f in found)  # at the first path
            found = []
        elif isinstance(item, Image.Image):
            photos.append(Photo(item.convert("RGB"), f"image{i}.png"))
        elif isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or not (item.ndim == 2 or (item.ndim == 3 and item.shape[2] == 3)):
                raise UsageError(
                    f"image {i}: an array must be (H, W, 3) or (H, W) uint8, not {item.dtype} {item.shape}"
                )
            photos.append(Photo(Image.fromarray(item).convert("RGB"), f"image{i}.png"))
        else:
            raise UsageError(
                f"image {i}: expected a path, a folder, a PIL image or a uint8 array, not {type(item).__name__}"
            )
    names = [p.name for p in photos]
    if len(set(names)) != len(names):  # a file named like an in-memory image
        photos = [Photo(p.image, f"{i}-{p.name}" if names.count(p.name) > 1 else p.name, p.source)
                  for i, p in enumerate(photos)]
    return photos


# --------------------------------------------------------------------------- load_image


def load_image(
    path: str | Path,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Load one image file as a fully decoded 8-bit RGB `PIL.Image.Image`.

    - Transparency (RGBA, LA, PA, palette or colour-key transparency) is composited over
      `background`; grayscale, palette, 1-bit and CMYK are converted to RGB.
    - High bit depth is scaled by the range of its bit depth: 16-bit ("I;16*") by 1/257;
      32-bit "I" is taken as 8-bit when all values lie in 0..255, as 16-bit when in 0..65535,
      otherwise min-max stretched; float "F" as 0..1 when in [0, 1], then like "I".
    - The EXIF orientation is applied; multi-frame files (GIF, TIFF) give their first frame.
    - The size is checked from the header, before any pixel is decoded, against `max_pixels`
      (None disables this check; Pillow's own ``Image.MAX_IMAGE_PIXELS`` guard, 2x its value,
      still applies and is reported the same way).

    Raises `ImageLoadError` ("path: reason", one line) for anything unusable: missing, empty,
    unreadable, a folder, not an image, truncated/corrupt data, too many pixels.
    """
    p = Path(path)
    _check_file(p)
    try:
        fh = open(p, "rb")
    except OSError as e:
        raise ImageLoadError(_display(p), _os_reason(e)) from e
    with fh, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return _decode(p, fh, max_pixels, background)
        finally:
            _report_warnings(p, caught)


def _report_warnings(p: Path, caught: list[warnings.WarningMessage]) -> None:
    """Pillow's UserWarnings (corrupt EXIF, odd palettes...) are logged with the file name;
    its size warning is superseded by our own check; anything else is re-issued as is."""
    for w in caught:
        if issubclass(w.category, Image.DecompressionBombWarning):
            continue
        if issubclass(w.category, UserWarning):
            logger.warning("%s: %s", _display(p), _one_line(str(w.message)))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def _check_file(p: Path) -> None:
    """Reject what is not a non-empty regular file, without opening it (FIFOs would block)."""
    try:
        st = os.stat(p)
    except FileNotFoundError as e:
        if os.path.islink(p):
            raise ImageLoadError(
                _display(p), f"broken symbolic link (to {_display(os.readlink(p))})"
            ) from e
        raise ImageLoadError(_display(p), "file not found") from e
    except OSError as e:
        raise ImageLoadError(_display(p), _os_reason(e)) from e
    if stat.S_ISDIR(st.st_mode):
        raise ImageLoadError(_display(p), "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageLoadError(_display(p), "not a regular file")
    if st.st_size == 0:
        raise ImageLoadError(_display(p), "empty file (0 bytes)")


def _decode(
    p: Path, fh: object, max_pixels: int | None, background: tuple[int, int, int]
) -> Image.Image:
    name = _display(p)
    with _failures(name, max_pixels, "open", "corrupt image header"):
        img = Image.open(fh)  # type: ignore[arg-type]  # reads the header only
    with img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageLoadError(name, f"invalid image size {width}×{height}")
        if max_pixels is not None and width * height > max_pixels:
            raise ImageLoadError(name, _bomb_reason((width, height), None, max_pixels))
        with _failures(name, max_pixels, "decode", "truncated or corrupt image data"):
            img.load()  # force Pillow's lazy decoding here, inside the guard
            orientation = _orientation(img, name)
            rgb = _to_rgb(img, background, name)
    if orientation in _ORIENTATION:
        rgb = rgb.transpose(_ORIENTATION[orientation])
    return rgb


@contextlib.contextmanager
def _failures(name: str, max_pixels: int | None, verb: str, otherwise: str) -> Iterator[None]:
    """Any exception of Pillow while it ``verb``s an image, as a one-line ImageLoadError."""
    try:
        yield
    except ImageLoadError:
        raise
    except UnidentifiedImageError as e:
        raise ImageLoadError(name, "cannot identify image file: not an image or unsupported format") from e
    except Image.DecompressionBombError as e:
        raise ImageLoadError(name, _bomb_reason(None, str(e), max_pixels)) from e
    except MemoryError as e:
        raise ImageLoadError(name, f"not enough memory to {verb} the image") from e
    except Exception as e:
        raise ImageLoadError(name, f"{otherwise} ({_exc_detail(e)})") from e


def _orientation(img: Image.Image, name: str) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if isinstance(value, int) else 1
    except Exception as e:  # a corrupt EXIF block should not cost the image
        logger.warning("%s: unreadable EXIF data ignored (%s)", name, _exc_detail(e))
        return 1


def _to_rgb(img: Image.Image, background: tuple[int, int, int], name: str) -> Image.Image:
    mode = img.mode
    if mode in _HIGH_DEPTH_MODES:
        gray = Image.fromarray(_scale_high_depth(np.asarray(img), mode))
        trns = img.info.get("transparency")
        if isinstance(trns, int) and not isinstance(trns, bool):
            alpha = np.where(np.asarray(img) == trns, 0, 255).astype(np.uint8)
            gray = Image.merge("LA", (gray, Image.fromarray(alpha)))
        img, mode = gray, gray.mode
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if mode == "RGB":
        return img.copy()
    try:
        return img.convert("RGB")
    except ValueError as e:
        raise ImageLoadError(name, f"unsupported pixel mode {mode!r}") from e


def _scale_high_depth(arr: np.ndarray, mode: str) -> np.ndarray:
    """Map a 16/32-bit or float image to uint8 (see `load_image` for the rules)."""
    if mode.startswith("I;16"):
        return np.rint(arr.astype(np.float64) / 257.0).astype(np.uint8)
    data = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = data * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        scaled = data
    elif lo >= 0.0 and hi <= 65535.0:
        scaled = data / 257.0
    else:
        scaled = (data - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(data)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- messages


def _bomb_reason(
    size: tuple[int, int] | None, pil_message: str | None, max_pixels: int | None
) -> str:
    pil_max = Image.MAX_IMAGE_PIXELS
    if size is not None:
        desc = f"{size[0]}×{size[1]} = {size[0] * size[1]} pixels"
        limit = max_pixels
    else:
        m = re.search(r"\((\d+) pixels\)", pil_message or "")
        desc = f"{m.group(1)} pixels" if m else "too many pixels"
        limits = [v for v in (max_pixels, 2 * pil_max if pil_max else None) if v is not None]
        limit = min(limits) if limits else None
    return (
        f"image is {desc}, over the limit of {limit} pixels (decompression-bomb guard); "
        "raise max_pixels (and PIL.Image.MAX_IMAGE_PIXELS) only if the file is trusted"
    )


def _os_reason(e: OSError, what: str = "file") -> str:
    if isinstance(e, PermissionError):
        return f"permission denied (cannot read the {what})"
    return f"cannot read the {what} ({_one_line(e.strerror or str(e))})"


def _exc_detail(e: BaseException) -> str:
    text = _one_line(str(e))
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _one_line(text: str) -> str:
    return _display(" ".join(text.split()))


def _display(value: object) -> str:
    """`str(value)` with control characters and undecodable bytes escaped (stays one line)."""
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if all(ch.isprintable() or ch == " " for ch in text):
        return text
    return "".join(
        ch
        if ch.isprintable() or ch == " "
        else ch.encode("unicode_escape", "backslashreplace").decode("ascii")
        for ch in text
    )
