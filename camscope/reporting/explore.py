"""The interactive explorer of ``report.html``: data, inline script and style.

Progressive enhancement: the static page (every section, table, image and finding) is complete
without JavaScript. One inline script (``assets/explore.js``) builds the explorer into an empty
``hidden`` mount: per photo the method / smoothing of the map, the heat map's opacity, two maps
compared with a swipe divider and the map's value under the pointer; across photos a lazy-loaded
thumbnail grid with filters (misclassified, degenerate map, low agreement), sorting by any metric
and keyboard navigation.

Data travels in one ``<script type="application/json">`` block, serialised with :func:`json.dumps`
and with ``<``, ``>`` and ``&`` written as ``\\u003c``, ``\\u003e``, ``\\u0026``, so no string
(a file named ``</script>``) can end the block; the script reads it with ``JSON.parse`` and
writes to the page only through ``textContent``, ``setAttribute`` and ``createElement``. A
Content-Security-Policy ``<meta>`` allows exactly that script (by its SHA-256) and no other.

Maps: the heat map is drawn in a canvas from an embedded copy of each ``.npy`` map, box-averaged
by an integer factor to at most :data:`MAP_MAX_SIDE` pixels a side (224 -> 56) and quantised to
256 levels, stored as a greyscale PNG (about half the bytes of the raw values), and coloured
with the run's ``--colormap`` (a 256-entry lookup table computed here with matplotlib, as the
overlays are). Images linked from disk cannot be read back under ``file://`` (tainted canvas),
the embedded ``data:`` PNGs can.

Nothing here reads the run folder's manifest: the caller passes the records, the map files and
the run settings.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from camscope.errors import CamscopeError
from camscope.io.rundir import is_random_weights, smoothing_parts, variant_name
from camscope.names import variant_title
from camscope.reporting.findings import DISAGREE_SPEARMAN
from camscope.reporting.summary import ReportColumn, report_columns, scalar

__all__ = [
    "MAP_MAX_SIDE",
    "LOW_AGREEMENT",
    "DATA_ID",
    "MOUNT_ID",
    "ExplorerHTML",
    "map_grid",
    "encode_map",
    "colormap_lut",
    "json_for_script",
    "explorer_data",
    "render_explorer",
    "weights_banner",
]

logger = logging.getLogger(__name__)

MAP_MAX_SIDE = 64
"""Longest side of the embedded map copies (box-averaged by an integer factor: 224 -> 56)."""
LOW_AGREEMENT = DISAGREE_SPEARMAN
"""The "low agreement" filter: lowest pairwise Spearman of a photo's maps below this (0.3, the
findings' "disagrees" threshold)."""
DATA_ID = "camscope-data"
MOUNT_ID = "camscope-explorer"
RANDOM_WEIGHTS_WARNING = "random weights: these maps say nothing about a trained model"


@cache
def _asset(name: str) -> str:
    text = resources.files("camscope.reporting").joinpath("assets", name).read_text(encoding="utf-8")
    low = text.lower()
    if "</script" in low or "</style" in low or "<!--" in low:
        raise RuntimeError(f"report asset {name} contains a sequence that would end its HTML element")
    return text


def map_grid(sal: np.ndarray, max_side: int = MAP_MAX_SIDE) -> np.ndarray:
    """A map downsampled for the page: box average by the smallest integer factor that brings
    the longer side to at most ``max_side``, clipped to [0, 1] and quantised to uint8 (0..255).
    Non-finite values count as 0."""
    from PIL import Image

    arr = np.nan_to_num(np.asarray(sal, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"a map must be a non-empty 2-D array, not shape {arr.shape}")
    h, w = arr.shape
    f = max(1, math.ceil(max(h, w) / max_side))
    if f > 1:
        size = (math.ceil(w / f), math.ceil(h / f))
        arr = np.asarray(Image.fromarray(arr, mode="F").resize(size, Image.Resampling.BOX), dtype=np.float32)
    return np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_map(grid: np.ndarray) -> str:
    """A uint8 grid as the base64 text of a greyscale PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(grid, dtype=np.uint8), mode="L").save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def colormap_lut(name: str) -> bytes:
    """256 RGB triplets (768 bytes) of a matplotlib colour map, as :func:`camscope.render.colorize`
    colours the quantised values ``i / 255``."""
    from camscope.render.draw import colorize

    return colorize(np.linspace(0.0, 1.0, 256)[None, :], name)[0].tobytes()


def json_for_script(obj: Any) -> str:
    """Strict JSON safe inside ``<script type="application/json">``: ``<``, ``>``, ``&`` (and,
    through ``ensure_ascii``, every non-ASCII character) written as ``\\uXXXX`` escapes."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def explorer_data(
    records: Sequence[Mapping[str, Any]],
    map_files: Mapping[str, Mapping[str, Path]],
    *,
    anchors: Sequence[str],
    methods: Mapping[str, str],
    smoothings: Sequence[str],
    colormap: str = "jet",
    alpha: float | None = 0.5,
    columns: Sequence[ReportColumn] | None = None,
) -> dict[str, Any]:
    """The explorer's data (JSON-ready; serialise with :func:`json_for_script`).

    ``records``: the per-photo metric records (``DIR/metrics/<rel>.json``); the explorer uses each
    photo's first explained class. ``map_files``: rel -> variant -> ``.npy`` path of that class's
    map. ``anchors``: the id of each photo's section in the page, parallel to ``records``.
    ``methods``: method key -> title, in run order; ``smoothings``: the run's smoothing specs
    (plain excluded). ``colormap`` and ``alpha``: the run's ``--colormap`` and ``--alpha`` (the
    heat map's initial opacity; 0.5 when unknown). ``columns``: the metric columns to offer
    for sorting (default: :func:`~camscope.reporting.summary.report_columns` of ``records``,
    i.e. every registered metric measured).
    """
    columns = report_columns(records) if columns is None else list(columns)
    if len(anchors) != len(records):
        raise ValueError("anchors must be parallel to records")
    variants: dict[str, dict[str, str]] = {}
    for sm in ["", *smoothings]:
        for m, title in methods.items():
            key = variant_name(m, smoothing_parts(sm))
            variants[key] = {"method": m, "smoothing": sm, "label": variant_title(title, sm)}
    photos: list[dict[str, Any]] = []
    measured: set[str] = set()
    for rec, anchor in zip(records, anchors, strict=True):
        rel = str(rec.get("rel"))
        entry = (rec.get("targets") or [{}])[0]
        vs = entry.get("variants") or {}
        top = (rec.get("top5") or [{}])[0]
        maps: dict[str, str] = {}
        for name, path in (map_files.get(rel) or {}).items():
            try:
                sal = np.load(path, allow_pickle=False)
                maps[name] = encode_map(map_grid(sal))
            except (OSError, ValueError) as exc:
                logger.warning("%s: map %s not embedded in the explorer (%s)", rel, path, exc)
        metrics: dict[str, dict[str, float | None]] = {}
        for name, v in vs.items():
            row = {c.key: _num(scalar(v, c.key)) for c in columns}
            metrics[name] = row
            measured.update(k for k, x in row.items() if x is not None and k != "degenerate")
            if name not in variants:
                variants[name] = {"method": v.get("method") or name.partition("+")[0],
                                  "smoothing": v.get("smoothing") or "", "label": v.get("label") or name}
        rhos = [x for x in (scalar(p, "spearman") for p in entry.get("agreement") or []) if not math.isnan(x)]
        photos.append({
            "rel": rel,
            "anchor": anchor,
            "predicted": top.get("name"),
            "prob": _num(scalar(top, "prob")),
            "correct": rec.get("correct") if isinstance(rec.get("correct"), bool) else None,
            "true_name": rec.get("true_name"),
            "target": entry.get("name"),
            "degenerate": {n: str(v["degenerate"]) for n, v in vs.items() if v.get("degenerate")},
            "min_spearman": _num(min(rhos)) if rhos else None,
            "maps": maps,
            "metrics": metrics,
        })
    if any(p["degenerate"] for p in photos):
        measured.add("degenerate")
    try:
        lut = colormap_lut(colormap)
    except CamscopeError as exc:  # a colour map this matplotlib does not know
        logger.warning("explorer: %s; drawing the maps with 'jet'", exc)
        colormap, lut = "jet", colormap_lut("jet")
    return {
        "version": 1,
        "colormap": colormap,
        "lut": base64.b64encode(lut).decode("ascii"),
        "alpha": float(alpha) if isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0 else 0.5,
        "low_agreement": LOW_AGREEMENT,
        "map_max_side": MAP_MAX_SIDE,
        "methods": [{"key": m, "label": t} for m, t in methods.items()],
        "smoothings": list(smoothings),
        "variants": variants,
        "metrics": [{"key": c.key, "label": c.title, "better": c.direction, "category": c.category}
                    for c in columns if c.key in measured],
        "photos": photos,
    }


@dataclass(frozen=True)
class ExplorerHTML:
    """The pieces :mod:`camscope.reporting.html` puts into the page."""

    csp: str
    """``<meta http-equiv="Content-Security-Policy">``: only the explorer's script may run."""
    css: str
    """Style rules, for the page's ``<style>``."""
    mount: str
    """The empty, ``hidden`` element the script fills (invisible without JavaScript)."""
    scripts: str
    """The JSON data block and the script, for the end of ``<body>``."""


def render_explorer(data: Mapping[str, Any]) -> ExplorerHTML:
    """The explorer's HTML pieces for ``data`` (from :func:`explorer_data`)."""
    js = _asset("explore.js")
    digest = base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode("ascii")
    csp = (
        '<meta http-equiv="Content-Security-Policy" content="'
        f"script-src 'sha256-{digest}'; object-src 'none'; base-uri 'none'; form-action 'none'; "
        "connect-src 'none'; frame-src 'none'; worker-src 'none'\">"
    )
    mount = f'<section id="{MOUNT_ID}" class="explorer" hidden></section>'
    scripts = (
        f'<script type="application/json" id="{DATA_ID}">{json_for_script(data)}</script>'
        f"<script>{js}</script>"
    )
    return ExplorerHTML(csp=csp, css=_asset("explore.css"), mount=mount, scripts=scripts)


def weights_banner(weights: Any) -> str:
    """A warning banner (static HTML) for a run with random weights; empty otherwise."""
    if not isinstance(weights, str) or not is_random_weights(weights):
        return ""
    import html

    return (
        '<p class="banner" id="weights-warning"><strong>'
        f"{html.escape(RANDOM_WEIGHTS_WARNING[:1].upper() + RANDOM_WEIGHTS_WARNING[1:])}</strong> "
        f"(the run's weights: {html.escape(weights, quote=True)}).</p>"
    )
