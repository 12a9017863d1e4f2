"""``DIR/report.html``, ``DIR/metrics.csv`` and ``DIR/summary.json`` from the measured records.

Images: by default the page links, with relative percent-encoded URLs, to files inside ``DIR``
(the overlays ``DIR/<variant>/<rel>.png`` written by ``explain`` and the report's own
``DIR/report_assets/``: photo thumbnails and matplotlib plots), so the page stays small and the
folder ``DIR`` is what one shares (zip it). With ``embed=True`` every image is embedded as a
``data:`` URI (overlays downscaled to JPEG thumbnails) and ``report.html`` alone is shareable.

The page loads nothing from outside and escapes everything that comes from the user (file names,
class names, paths) with ``html.escape(..., quote=True)``; URLs are percent-encoded with
``urllib.parse.quote``. It reads completely without JavaScript; one inline script adds the
explorer (:mod:`camscope.reporting.explore`). Images load lazily. Every file is written atomically.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import functools
import hashlib
import html
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from camscope.io.rundir import (
    ASSETS,
    METRICS_CSV,
    REPORT,
    SUMMARY_JSON,
    ImageRecord,
    Manifest,
    RunDir,
    smoothing_label,
    variant_name,
)
from camscope.render.draw import jpeg_thumbnail
from camscope.reporting.evaluate import load_image_metrics
from camscope.reporting.findings import best_variant, image_findings, run_findings
from camscope.reporting.summary import (
    CSV_COLUMNS,
    METRICS,
    RANKING_METRICS,
    as_float,
    metric_rows,
    scalar,
    summarize,
)

__all__ = ["ReportFiles", "write_report"]

logger = logging.getLogger(__name__)

THUMB_SIDE = 384

_DIRECTION = {k: d for k, _, d in METRICS}
_LABEL = {k: lab for k, lab, _ in METRICS}


@dataclass
class ReportFiles:
    """Paths written by :func:`write_report`."""

    html: Path
    csv: Path
    summary: Path
    assets: list[Path] = field(default_factory=list)


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _nan_low(x: Any) -> float:
    v = as_float(x)
    return -math.inf if math.isnan(v) else v


def _clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats -> None (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# Images: links or data URIs
# ---------------------------------------------------------------------------------------------


class _Images:
    def __init__(self, out: Path, embed: bool) -> None:
        self.out = out
        self.embed = embed

    def src(self, rel_path: str, *, thumbnail: bool = False) -> str | None:
        """``src`` value for a file inside DIR (None if it does not exist)."""
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
                    data, mime = jpeg_thumbnail(im, THUMB_SIDE, quality=85), "image/jpeg"
            except OSError:
                return None
        elif path.suffix.lower() in (".jpg", ".jpeg"):
            mime = "image/jpeg"
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

    def img(self, rel_path: str, alt: str, *, thumbnail: bool = False, cls: str = "") -> str:
        src = self.src(rel_path, thumbnail=thumbnail)
        if src is None:
            return f'<div class="missing">{_e(alt)}: not available</div>'
        c = f' class="{cls}"' if cls else ""
        return f'<img src="{_e(src)}" alt="{_e(alt)}"{c} loading="lazy" decoding="async">'


def _write_bytes(path: Path, data: bytes) -> None:
    from camscope.io.atomic import atomic_write_bytes

    atomic_write_bytes(path, data)


def _thumbnail(out: Path, rel: str, source: str | None, preprocess: Any) -> str | None:
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
    _write_bytes(out / target, jpeg_thumbnail(preprocess.frame(photo), THUMB_SIDE, quality=88, resample=Image.Resampling.LANCZOS))
    return target


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def _fmt(key: str, x: Any, *, per_photo: bool) -> str:
    if key == "degenerate":
        if per_photo:
            return _e(x or "")
        v = as_float(x)
        return "" if math.isnan(v) else f"{100 * v:.0f}%"
    v = as_float(x)
    if math.isnan(v):
        return '<span class="na">–</span>'
    if key == "increase_in_confidence":
        return ("yes" if v > 0 else "no") if per_photo else f"{v:.0f}%"
    if key == "pointing_game":
        return ("hit" if v > 0 else "miss") if per_photo else f"{100 * v:.0f}%"
    if key in ("energy_pg", "top5_energy", "top10_energy"):
        return f"{100 * v:.1f}%"
    if key == "average_drop":
        return f"{v:.1f}"
    return f"{v:.3f}"


def _best_indices(values: list[float], direction: str | None) -> set[int]:
    finite = [(i, v) for i, v in enumerate(values) if not math.isnan(v)]
    if direction is None or len(finite) < 2:
        return set()
    target = min(v for _, v in finite) if direction == "lower" else max(v for _, v in finite)
    if all(v == target for _, v in finite):
        return set()
    return {i for i, v in finite if v == target}


def _header_cells(keys: Sequence[str]) -> str:
    arrows = {"lower": " ↓", "higher": " ↑"}
    return "".join(f"<th>{_e(_LABEL[k])}{arrows.get(_DIRECTION[k] or '', '')}</th>" for k in keys)


CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#d9dde5; --bg:#f6f7f9; --accent:#2b5fb4; --bad:#b3261e; --good:#1b7f3b; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif; color:var(--fg); background:var(--bg); }
header, main, footer { max-width: 1280px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 18px; }
h1 { font-size: 1.6em; margin: .2em 0; }
h2 { font-size: 1.25em; margin: 0 0 .4em; word-break: break-all; }
h3 { font-size: 1.02em; margin: 1.1em 0 .4em; color: var(--muted); }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:16px 20px; margin:18px 0; }
table { border-collapse: collapse; font-size: .86em; margin: .3em 0; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: right; vertical-align: top; }
td { white-space: nowrap; }
td small { color: var(--muted); }
th:first-child, td:first-child { text-align: left; }
th { background: #eef1f6; font-weight: 600; }
tr.flag td { background: #fff4e5; }
td.best { font-weight: 700; color: var(--good); }
.na { color: #9aa1ad; }
.scroll { overflow-x: auto; }
.meta { color: var(--muted); font-size: .9em; }
.meta code, td code { font-size: .95em; background: #eef1f6; padding: 0 3px; border-radius: 3px; word-break: break-all; }
.badge { display:inline-block; padding: 1px 8px; border-radius: 10px; font-size: .8em; font-weight: 600; color:#fff; background: var(--good); }
.badge.bad { background: var(--bad); }
.badge.warn { background: #a15c00; }
.top { display:flex; flex-wrap: wrap; gap: 20px; align-items: flex-start; }
.thumb img { width: 256px; height: auto; border-radius: 4px; border:1px solid var(--line); }
table.grid td, table.grid th { text-align: center; border: none; padding: 3px; }
table.grid img { width: 210px; max-width: 24vw; border-radius: 3px; display: block; }
table.grid th.row { text-align: right; vertical-align: middle; font-weight: 600; background: none; }
ul.findings { margin: .3em 0; padding-left: 1.2em; }
ul.findings li { margin: .25em 0; }
img.plot { max-width: 100%; height: auto; }
.missing { width: 210px; padding: 30px 6px; color: var(--muted); border: 1px dashed var(--line); font-size: .8em; }
nav ol { columns: 3; font-size: .88em; }
nav a, a { color: var(--accent); }
footer { color: var(--muted); font-size: .8em; padding-bottom: 30px; }
dl.defs dt { font-weight: 600; margin-top: .4em; }
dl.defs dd { margin: 0 0 0 1.2em; color: var(--muted); }
"""


# ---------------------------------------------------------------------------------------------
# Page parts
# ---------------------------------------------------------------------------------------------


def _run_info(manifest: Manifest, records: Sequence[dict], out: Path) -> str:
    s = manifest.settings
    pre = s.preprocess
    size = "x".join(str(v) for v in pre.get("input_size", []))
    smooth = ", ".join(s.smoothing) or "none"
    faith = road = None
    for rec in records:
        for e in rec.get("targets", []):
            for v in e.get("variants", {}).values():
                faith = faith or v.get("faithfulness_key")
                road = road or v.get("road_key")
    parts = [
        f"model <code>{_e(s.model)}</code> ({_e(s.weights)})",
        f"layer <code>{_e(s.layer)}</code>",
        f"input {_e(size)} ({_e(pre.get('mode'))}: map covers the {_e(pre.get('map_covers'))})",
        f"methods {_e(', '.join(s.methods))}",
        f"smoothing {_e(smooth)}",
        f"{len(records)} photos",
    ]
    if manifest.failures:
        parts.append(f"{len(manifest.failures)} inputs failed (see failures.csv)")
    metric = "faithfulness not measured"
    if faith:
        metric = f"deletion/insertion with {_e(faith.get('steps'))} steps, score = class probability"
        metric += "; ROAD " + (f"at fractions {_e(', '.join(str(f) for f in road['fractions']))}, seed {_e(road.get('seed'))}" if road else "not measured")
    parts.append(metric)
    return f'<p class="meta">{" · ".join(parts)} · folder <code>{_e(out.name)}</code></p>'


def _summary_section(summary: dict, findings: list[str], images: _Images, plots: dict[str, str | None]) -> str:
    variants = summary.get("variants", {})
    order = list(variants)
    keys = [k for k, _, _ in METRICS if any(variants[n]["metrics"][k]["n"] for n in order)]
    h = ['<section id="summary"><h2>Across photos</h2>']
    if findings:
        h.append('<h3>Findings</h3><ul class="findings">' + "".join(f"<li>{_e(f)}</li>" for f in findings) + "</ul>")
    ranking = summary.get("ranking") or []
    if ranking:
        used = summary.get("ranking_metrics_used") or []
        h.append(
            "<h3>Ranking</h3><p class=\"meta\">Mean rank of each variant over photos and metrics "
            f"({_e(', '.join(used))}); on each photo and metric the variants are ranked 1 = best, ties "
            "share their average rank. Lower is better.</p>"
        )
        mkeys = [k for k in RANKING_METRICS if any(k in variants[n].get("metric_ranks", {}) for n in ranking)]
        h.append('<div class="scroll"><table><tr><th>Rank</th><th>Variant</th><th>Mean rank</th>')
        h.append("".join(f"<th>{_e(_LABEL[k])}</th>" for k in mkeys) + "</tr>")
        for n in ranking:
            v = variants[n]
            cells = "".join(
                f"<td>{as_float(v['metric_ranks'].get(k)):.2f}</td>" if k in v["metric_ranks"] else '<td class="na">–</td>'
                for k in mkeys
            )
            h.append(f"<tr><td>{v['rank']}</td><td>{_e(v['label'])}</td><td>{as_float(v['mean_rank']):.2f}</td>{cells}</tr>")
        h.append("</table></div>")
    h.append(f"<h3>Mean ± std over photos (n = {summary.get('n_photos', 0)})</h3>")
    h.append('<div class="scroll"><table><tr><th>Metric</th>')
    h.append("".join(f"<th>{_e(variants[n]['label'])}</th>" for n in order) + "</tr>")
    arrows = {"lower": " ↓", "higher": " ↑"}
    for k in keys:
        col = [as_float(variants[n]["metrics"][k]["mean"]) for n in order]
        best = _best_indices(col, _DIRECTION[k])
        cells = []
        for i, n in enumerate(order):
            st = variants[n]["metrics"][k]
            if st["mean"] is None:
                cells.append('<td class="na">–</td>')
                continue
            text = _fmt(k, st["mean"], per_photo=False)
            if k not in ("degenerate", "pointing_game", "increase_in_confidence") and st["n"] > 1:
                text += f" <small>± {_fmt(k, st['std'], per_photo=False)}</small>"
            cells.append(f'<td{" class=best" if i in best else ""}>{text}</td>')
        h.append(f"<tr><td>{_e(_LABEL[k])}{arrows.get(_DIRECTION[k] or '', '')}</td>{''.join(cells)}</tr>")
    h.append("</table></div>")
    for key, title in (("curves", "Deletion and insertion curves"), ("bars", "Metrics per variant")):
        if plots.get(key):
            h.append(f"<h3>{title}</h3>" + images.img(plots[key], title, cls="plot"))
    pairs = summary.get("agreement") or []
    if pairs:
        labels = {n: variants[n]["label"] for n in order}
        h.append("<h3>Mean agreement between variants</h3><div class=\"scroll\"><table><tr><th>A</th><th>B</th>"
                 "<th>Spearman</th><th>Top-15% IoU</th><th>n</th></tr>")
        for p in sorted(pairs, key=lambda p: -_nan_low(p.get("spearman_mean"))):
            h.append(
                f"<tr><td>{_e(labels.get(p['a'], p['a']))}</td><td>{_e(labels.get(p['b'], p['b']))}</td>"
                f"<td>{_fmt('x', p.get('spearman_mean'), per_photo=True)} ± {_fmt('x', p.get('spearman_std'), per_photo=True)}</td>"
                f"<td>{_fmt('x', p.get('top_iou_mean'), per_photo=True)} ± {_fmt('x', p.get('top_iou_std'), per_photo=True)}</td>"
                f"<td>{p.get('n')}</td></tr>"
            )
        h.append("</table></div>")
    h.append("</section>")
    return "".join(h)


def _top5_table(record: dict) -> str:
    truth = record.get("true_class")
    rows = ["<table><tr><th>#</th><th>Class</th><th>Probability</th></tr>"]
    for i, t in enumerate(record.get("top5") or []):
        mark = ' <span class="badge">true class</span>' if truth is not None and t.get("class") == truth else ""
        flag = ' class="flag"' if i == 0 and record.get("correct") is False else ""
        rows.append(f"<tr{flag}><td>{i + 1}</td><td>{_e(t.get('name'))}{mark}</td><td>{as_float(t.get('prob')):.3f}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _grid(manifest: Manifest, record: dict, entry: dict, images: _Images, embed: bool) -> str:
    s = manifest.settings
    rel = record["rel"]
    rank = entry.get("rank", 0)
    files = manifest.images.get(rel)
    h = ['<div class="scroll"><table class="grid"><tr><th></th>']
    h += [f"<th>{_e(manifest.title(m))}</th>" for m in s.methods]
    h.append("</tr>")
    for parts in s.variants:
        h.append(f'<tr><th class="row">{_e(smoothing_label(parts) or "plain")}</th>')
        for m in s.methods:
            name = variant_name(m, parts)
            v = entry.get("variants", {}).get(name) or {}
            alt = f"{v.get('label') or name} map of {rel}"
            png = files.file(name, rank, ".png") if files is not None else None
            cell = images.img(png, alt, thumbnail=embed) if png else f'<div class="missing">{_e(alt)}: not available</div>'
            if v.get("degenerate"):
                cell += f'<span class="badge warn">degenerate: {_e(v["degenerate"])}</span>'
            h.append(f"<td>{cell}</td>")
        h.append("</tr>")
    h.append("</table></div>")
    return "".join(h)


def _metric_table(entry: dict) -> str:
    variants = entry.get("variants", {})
    names = list(variants)
    keys = [k for k, _, _ in METRICS if any(not math.isnan(scalar(variants[n], k)) for n in names) or k == "degenerate"]
    keys = [k for k in keys if k != "degenerate" or any(variants[n].get("degenerate") for n in names)]
    h = [f'<div class="scroll"><table><tr><th>Variant</th>{_header_cells(keys)}</tr>']
    cols = {k: [scalar(variants[n], k) for n in names] for k in keys}
    for i, n in enumerate(names):
        v = variants[n]
        cells = []
        for k in keys:
            raw = v.get("degenerate") if k == "degenerate" else (scalar(v, k) if k == "gap" else v.get(k))
            best = i in _best_indices(cols[k], _DIRECTION[k])
            cells.append(f'<td{" class=best" if best else ""}>{_fmt(k, raw, per_photo=True)}</td>')
        h.append(f"<tr><td>{_e(v.get('label') or n)}</td>{''.join(cells)}</tr>")
    h.append("</table></div>")
    return "".join(h)


def _agreement_matrix(entry: dict) -> str:
    variants = entry.get("variants", {})
    names = list(variants)
    pairs = {(p["a"], p["b"]): p for p in entry.get("agreement", [])}
    if len(names) < 2 or not pairs:
        return ""
    h = ['<p class="meta">Upper right: Spearman rank correlation; lower left: IoU of the top-15% regions.</p>'
         '<div class="scroll"><table><tr><th></th>']
    h += [f"<th>{_e(variants[n].get('label') or n)}</th>" for n in names]
    h.append("</tr>")
    for i, a in enumerate(names):
        h.append(f"<tr><th>{_e(variants[a].get('label') or a)}</th>")
        for j, b in enumerate(names):
            if i == j:
                h.append('<td class="na">—</td>')
                continue
            p = pairs.get((a, b)) or pairs.get((b, a))
            key = "spearman" if j > i else "top_iou"
            h.append(f"<td>{_fmt('x', p.get(key) if p else None, per_photo=True)}</td>")
        h.append("</tr>")
    h.append("</table></div>")
    return "".join(h)


def _photo_section(
    idx: int, manifest: Manifest, record: dict, thumb: str | None, curves: dict[int, str | None], images: _Images, embed: bool
) -> str:
    rel = record["rel"]
    h = [f'<section class="photo" id="photo-{idx}"><h2>{_e(rel)}']
    if record.get("correct") is False:
        h.append(' <span class="badge bad">misclassified</span>')
    elif record.get("correct") is True:
        h.append(' <span class="badge">correct</span>')
    h.append(f'</h2><p class="meta">source <code>{_e(record.get("source"))}</code></p><div class="top"><div class="thumb">')
    h.append(images.img(thumb, f"photo {rel}") if thumb else '<div class="missing">photo not available</div>')
    h.append("</div><div><h3>Top-5 predictions</h3>")
    h.append(_top5_table(record))
    if record.get("true_class") is not None and record.get("correct") is False:
        h.append(f'<p class="meta">true class: <b>{_e(record.get("true_name"))}</b></p>')
    h.append("</div></div>")
    targets = record.get("targets") or []
    for entry in targets:
        if len(targets) > 1:
            h.append(f"<h3>Explained class {entry.get('rank', 0) + 1}: {_e(entry.get('name'))} (p = {as_float(entry.get('prob')):.3f})</h3>")
        else:
            h.append(f"<h3>Maps for '{_e(entry.get('name'))}' (p = {as_float(entry.get('prob')):.3f})</h3>")
        h.append(_grid(manifest, record, entry, images, embed))
        finds = image_findings(record, entry)
        if finds:
            h.append('<h3>Findings</h3><ul class="findings">' + "".join(f"<li>{_e(f)}</li>" for f in finds) + "</ul>")
        if entry.get("variants"):
            h.append("<h3>Metrics</h3>" + _metric_table(entry))
        matrix = _agreement_matrix(entry)
        if matrix:
            h.append("<h3>Agreement</h3>" + matrix)
        plot = curves.get(entry.get("rank", 0))
        if plot:
            h.append("<h3>Deletion / insertion curves</h3>" + images.img(plot, f"curves of {rel}", cls="plot"))
    h.append('<p class="meta"><a href="#top">back to top</a></p></section>')
    return "".join(h)


def _definitions() -> str:
    items = [
        ("Deletion / insertion AUC", "Area under the class probability as the most salient pixels are deleted (set to the "
         "dataset mean) or inserted into a blurred copy, 0-100% of the pixels. Petsiuk et al. 2018, RISE (BMVC)."),
        ("Average Drop / Increase in Confidence", "Relative drop of the class probability when the photo is multiplied by "
         "the map; Increase counts photos whose probability rises. Chattopadhyay et al. 2018, Grad-CAM++ (WACV)."),
        ("ROAD MoRF / LeRF", "Class probability (mean over removed fractions) after removing the most / least relevant "
         "pixels and filling them by noisy linear imputation. Rong et al. 2022, ROAD (ICML)."),
        ("Pointing game / energy pointing game", "Whether the map's maximum falls in the ground-truth box (15 px "
         "tolerance; Zhang et al. 2016) and the share of the map's energy inside the box (Wang et al. 2020, Score-CAM)."),
        ("Concentration", "Share of the map's total in its top 5% / 10% pixels, and the normalised entropy "
         "(1 = uniform, 0 = one pixel)."),
        ("Agreement", "Spearman rank correlation over pixels and IoU of the top-15% regions of two maps."),
        ("Degenerate", "Empty, constant or near-empty maps (fewer than 0.1% of pixels above half the maximum)."),
    ]
    return '<dl class="defs">' + "".join(f"<dt>{_e(t)}</dt><dd>{_e(d)}</dd>" for t, d in items) + "</dl>"


def _methods_refs(manifest: Manifest) -> str:
    from camscope.errors import UsageError
    from camscope.methods.registry import get_method

    rows = []
    for name, meta in manifest.methods.items():
        url = ""
        try:
            url = get_method(name).url
        except UsageError:
            pass
        paper = _e(meta.get("paper"))
        if url.startswith("https://"):
            paper = f'<a href="{_e(url)}" rel="noopener noreferrer">{paper}</a>'
        rows.append(f"<tr><td>{_e(meta.get('title') or name)}</td><td>{paper}</td></tr>")
    return "<table><tr><th>Method</th><th>Paper</th></tr>" + "".join(rows) + "</table>" if rows else ""


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _bare_record(rel: str, rec: ImageRecord) -> dict:
    """A record for a photo without measurements (the grid and predictions still show)."""
    return {
        "rel": rel,
        "source": rec.source,
        "top5": [t.to_json() for t in rec.top5],
        "true_class": rec.true_class,
        "true_name": rec.true_name,
        "correct": rec.correct,
        "targets": [{"rank": i, "class": t.index, "name": t.name, "prob": t.prob, "variants": {}, "agreement": []}
                    for i, t in enumerate(rec.targets)],
    }


def write_report(
    out_dir: str | Path,
    records: dict[str, dict] | None = None,
    *,
    embed: bool = False,
    plots: bool = True,
) -> ReportFiles:
    """Write ``report.html``, ``metrics.csv``, ``summary.json`` (and ``report_assets/``).

    ``records`` (rel -> record, as returned in :class:`EvaluationResult.images`) default to the
    cached ``DIR/metrics/<rel>.json``; photos without a record appear without measurements.
    """
    from camscope.io.atomic import atomic_write_text
    from camscope.models import preprocess_from_description
    from camscope.reporting import plots as P

    out = Path(out_dir)
    manifest = RunDir(out).load()
    preprocess = preprocess_from_description(manifest.settings.preprocess)
    complete = manifest.complete()
    recs: list[dict] = []
    for rel, rec in complete.items():
        r = (records or {}).get(rel) or load_image_metrics(out, rel) or _bare_record(rel, rec)
        r.setdefault("rel", rel)
        recs.append(r)
    variants = list(manifest.outputs)
    summary = summarize(recs, variants)
    findings = run_findings(recs, summary)
    images = _Images(out, embed)
    written: list[Path] = []

    index_path = out / ASSETS / "plots.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        index = {}
    fresh: dict[str, str] = {}

    def put(rel_path: str, inputs: Any, make: Any) -> str | None:
        """Draw a plot unless the same inputs already drew the file (digest in plots.json)."""
        digest = hashlib.sha1(json.dumps(_clean(inputs), sort_keys=True).encode()).hexdigest()
        if index.get(rel_path) == digest and (out / rel_path).is_file():
            fresh[rel_path] = digest
            return rel_path
        data = make()
        if data is None:
            return None
        _write_bytes(out / rel_path, data)
        written.append(out / rel_path)
        fresh[rel_path] = digest
        return rel_path

    labels = {n: v["label"] for n, v in summary["variants"].items()}
    summary_plots: dict[str, str | None] = {}
    if plots:
        firsts = [r["targets"][0] for r in recs if r.get("targets")]
        curve_inputs = [[(e.get("variants", {}).get(n) or {}).get("curves") for n in variants] for e in firsts]
        summary_plots["curves"] = put(
            f"{ASSETS}/summary_curves.png", [curve_inputs, labels], lambda: P.mean_curves_png(firsts, variants, labels)
        )
        bar_keys = ["deletion_auc", "insertion_auc", "average_drop", "road_morf", "road_lerf", "energy_pg",
                    "pointing_game", "top10_energy", "entropy"]
        summary_plots["bars"] = put(
            f"{ASSETS}/summary_bars.png", [summary["variants"], bar_keys], lambda: P.metric_bars_png(summary, bar_keys)
        )

    sections = []
    per_image: dict[str, Any] = {}
    for idx, r in enumerate(recs, 1):
        rel = r["rel"]
        thumb = _thumbnail(out, rel, r.get("source"), preprocess)
        if thumb:
            written.append(out / thumb)
        curves: dict[int, str | None] = {}
        if plots:
            for e in r.get("targets", []):
                suffix = "" if e.get("rank", 0) == 0 else f".top{e['rank'] + 1}"
                vs = e.get("variants", {})
                inputs = {n: [v.get("label"), v.get("smoothing"), v.get("curves"), v.get("deletion_auc"), v.get("insertion_auc")] for n, v in vs.items()}
                curves[e.get("rank", 0)] = put(f"{ASSETS}/curves/{rel}{suffix}.png", inputs, functools.partial(P.curves_png, vs))
        sections.append(_photo_section(idx, manifest, r, thumb, curves, images, embed))
        first = (r.get("targets") or [{}])[0]
        per_image[rel] = {
            "source": r.get("source"),
            "predicted": (r.get("top5") or [{}])[0].get("name"),
            "true_name": r.get("true_name"),
            "correct": r.get("correct"),
            "best_variant": best_variant(first) if first else None,
            "findings": image_findings(r),
        }

    if plots:
        _write_bytes(index_path, json.dumps(fresh, indent=1, ensure_ascii=False).encode("utf-8"))

    # ---- metrics.csv -----------------------------------------------------------------------
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    w.writeheader()
    for row in metric_rows(recs):
        w.writerow({k: "" if v is None else v for k, v in row.items()})
    atomic_write_text(out / METRICS_CSV, buf.getvalue())

    # ---- summary.json ----------------------------------------------------------------------
    doc = {
        "version": 1,
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run": {k: v for k, v in manifest.settings.to_json().items() if k in ("model", "weights", "layer", "methods", "smoothing", "preprocess")},
        **summary,
        "findings": findings,
        "images": per_image,
        "failures": {rel: f.to_json() for rel, f in manifest.failures.items()},
    }
    atomic_write_text(out / SUMMARY_JSON, json.dumps(_clean(doc), indent=2, ensure_ascii=False, allow_nan=False) + "\n")

    # ---- report.html -----------------------------------------------------------------------
    from camscope.reporting.explore import explorer_data, render_explorer, weights_banner

    settings = manifest.settings
    map_files = {}
    for r in recs:
        files = manifest.images[r["rel"]]
        npys = {n: files.file(n, 0, ".npy") for n in variants}
        map_files[r["rel"]] = {n: out / f for n, f in npys.items() if f and (out / f).is_file()}
    explorer = render_explorer(explorer_data(
        recs, map_files, anchors=[f"photo-{i}" for i in range(1, len(recs) + 1)],
        methods={m: manifest.title(m) for m in settings.methods},
        smoothings=list(settings.smoothing),
        colormap=settings.colormap, alpha=settings.alpha,
    ))
    nav = "".join(f'<li><a href="#photo-{i}">{_e(r["rel"])}</a></li>' for i, r in enumerate(recs, 1))
    import camscope

    page = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        explorer.csp,
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>camscope report: {_e(out.resolve().name)}</title><style>{CSS}{explorer.css}</style></head>",
        '<body id="top"><header><h1>camscope report</h1>',
        weights_banner(settings.weights),
        _run_info(manifest, recs, out.resolve()),
        "</header><main>",
        _summary_section(summary, findings, images, summary_plots),
        explorer.mount,
        f'<section id="photos"><h2>Photos</h2><nav><ol>{nav}</ol></nav></section>',
        "".join(sections),
        f'<section id="definitions"><h2>Metrics and methods</h2>{_definitions()}{_methods_refs(manifest)}</section>',
        f"</main><footer>generated by camscope {_e(camscope.__version__)} · "
        f"<a href=\"{METRICS_CSV}\">metrics.csv</a> · <a href=\"{SUMMARY_JSON}\">summary.json</a></footer>",
        explorer.scripts,
        "</body></html>\n",
    ]
    atomic_write_text(out / REPORT, "".join(page))
    logger.info("report written to %s", out / REPORT)
    return ReportFiles(out / REPORT, out / METRICS_CSV, out / SUMMARY_JSON, written)
