"""Images of the report: links to files inside ``DIR`` or ``data:`` URIs (``--embed``), and the
photo thumbnails ``report_assets/photos/<rel>.jpg``."""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

from camscope.io.rundir import ASSETS
from camscope.render.draw import jpeg_thumbnail

__all__ = ["THUMB_SIDE", "PageImages", "thumbnail", "write_bytes"]

logger = logging.getLogger(__name__)

THUMB_SIDE = 384


def write_bytes(path: Path, data: bytes) -> None:
    from camscope.io.atomic import atomic_write_bytes

    atomic_write_bytes(path, data)


class PageImages:
    """``src`` values of images inside ``out``: relative percent-encoded URLs, or with
    ``embed`` ``data:`` URIs (thumbnails as JPEG)."""

    def __init__(self, out: Path, embed: bool) -> None:
        self.out = out
        self.embed = embed

    def src(self, rel_path: str | None, *, thumbnail: bool = False) -> str | None:
        """``src`` value for a file inside DIR (None if it does not exist)."""
        if not rel_path:
            return None
        path = self.out / rel_path
        if not path.is_file():
            return None
        if not self.embed:
            return quote(rel_path)
        data = path.read_bytes()
        mime = "image/png"
        if thumbnail:
            from PIL import Image

            try:
                with Image.open(io.BytesIO(data)) as im:
                    data, mime = jpeg_thumbnail(im, THUMB_SIDE, 85), "image/jpeg"
            except OSError:
                return None
        elif path.suffix.lower() in (".jpg", ".jpeg"):
            mime = "image/jpeg"
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail(out: Path, rel: str, source: str | None, preprocess: Any) -> str | None:
    """``report_assets/photos/<rel>.jpg``: the part of the photo the maps cover."""
    from PIL import Image

    from camscope.errors import CamscopeError
    from camscope.io.images import load_image

    target = f"{ASSETS}/photos/{rel}.jpg"
    try:
        photo = load_image(source) if source else None
    except CamscopeError as exc:
        logger.debug("thumbnail of %s: %s", rel, exc)
        photo = None
    if photo is None:
        return target if (out / target).is_file() else None
    write_bytes(out / target, jpeg_thumbnail(preprocess.frame(photo), THUMB_SIDE, 88, Image.Resampling.LANCZOS))
    return target
