"""``DIR/report.html`` (with ``metrics.csv`` and ``summary.json``) from the measured records.

The page is rendered from the Jinja2 templates in ``camscope/reporting/templates/`` with
autoescaping on: everything that comes from the user (file names, class names, paths, weights
names) is escaped by the template engine; only the package's own CSS and the explorer's pieces
(the CSP ``<meta>``, the empty mount, the JSON data block and the inline script, whose SHA-256
the CSP pins; :mod:`camscope.reporting.explore`) are passed as markup.

Images: by default the page links, with relative percent-encoded URLs, to files inside ``DIR``
(the overlays ``DIR/<variant>/<rel>.png`` written by ``explain`` and the report's own
``DIR/report_assets/``: photo thumbnails and matplotlib plots), so the page stays small and the
folder ``DIR`` is what one shares (zip it). With ``embed=True`` every image is embedded as a
``data:`` URI (overlays downscaled to JPEG thumbnails) and ``report.html`` alone is shareable.
The page loads nothing from outside and reads completely without JavaScript. Every file is
written atomically.

What the tables show comes from the metric registry (:data:`camscope.metrics.METRICS`) through
:func:`camscope.reporting.summary.report_columns`: a metric registered anywhere appears in the
summary, the per-photo tables, the bar plots, ``metrics.csv``, ``summary.json`` and the explorer.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from camscope.io.rundir import ASSETS, METRICS_CSV, REPORT, SUMMARY_JSON, ImageRecord, RunDir
from camscope.reporting.cache import load_image_metrics
from camscope.reporting.files import clean_json, write_metrics_csv, write_summary_json
from camscope.reporting.findings import clear_best_variant, image_findings, run_findings
from camscope.reporting.images import PageImages, thumbnail, write_bytes
from camscope.reporting.page import (
    definitions,
    methods_refs,
    photo_context,
    run_info,
    summary_context,
)
from camscope.reporting.summary import report_columns, summarize

__all__ = ["ReportFiles", "render_page", "write_report"]

logger = logging.getLogger(__name__)


@dataclass
class ReportFiles:
    """Paths written by :func:`write_report`."""

    html: Path
    csv: Path
    summary: Path
    assets: list[Path] = field(default_factory=list)


@cache
def _environment() -> Any:
    import jinja2  # the report's template engine (a core dependency; imported when a page is written)

    return jinja2.Environment(
        loader=jinja2.PackageLoader("camscope.reporting", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_page(context: dict[str, Any]) -> str:
    """``report.html`` from the templates (``context`` as :func:`write_report` builds it)."""
    return _environment().get_template("report.html").render(**context)


def _markup(text: str) -> Any:
    from markupsafe import Markup

    return Markup(text)


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
    recs: list[dict] = []
    for rel, rec in manifest.complete().items():
        r = (records or {}).get(rel) or load_image_metrics(out, rel) or _bare_record(rel, rec)
        r.setdefault("rel", rel)
        recs.append(r)
    variants = list(manifest.outputs)
    columns = report_columns(recs)
    summary = summarize(recs, variants)
    findings = run_findings(recs, summary, model=manifest.settings.model, random_weights=manifest.settings.random_weights)
    images = PageImages(out, embed)
    written: list[Path] = []

    index_path = out / ASSETS / "plots.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        index = {}
    fresh: dict[str, str] = {}

    def cached_plot(rel_path: str, inputs: Any, make: Any) -> str | None:
        """Draw a plot unless the same inputs already drew the file (digest in plots.json)."""
        digest = hashlib.sha1(json.dumps(clean_json(inputs), sort_keys=True).encode()).hexdigest()
        if index.get(rel_path) == digest and (out / rel_path).is_file():
            fresh[rel_path] = digest
            return rel_path
        data = make()
        if data is None:
            return None
        write_bytes(out / rel_path, data)
        written.append(out / rel_path)
        fresh[rel_path] = digest
        return rel_path

    labels = {n: v["label"] for n, v in summary["variants"].items()}
    summary_plots: dict[str, str | None] = {}
    if plots:
        firsts = [r["targets"][0] for r in recs if r.get("targets")]
        curve_inputs = [[(e.get("variants", {}).get(n) or {}).get("curves") for n in variants] for e in firsts]
        summary_plots["curves"] = cached_plot(
            f"{ASSETS}/summary_curves.png", [curve_inputs, labels], lambda: P.mean_curves_png(firsts, variants, labels)
        )
        bar_keys = [c.key for c in columns if c.direction is not None and c.ranked]
        summary_plots["bars"] = cached_plot(
            f"{ASSETS}/summary_bars.png", [summary["variants"], bar_keys], lambda: P.metric_bars_png(summary, bar_keys)
        )

    photos = []
    per_image: dict[str, Any] = {}
    for idx, r in enumerate(recs, 1):
        rel = r["rel"]
        thumb = thumbnail(out, rel, r.get("source"), preprocess)
        if thumb:
            written.append(out / thumb)
        curves: dict[int, str | None] = {}
        if plots:
            for e in r.get("targets", []):
                suffix = "" if e.get("rank", 0) == 0 else f".top{e['rank'] + 1}"
                vs = e.get("variants", {})
                inputs = {n: [v.get("label"), v.get("smoothing"), v.get("curves"), v.get("deletion_auc"), v.get("insertion_auc")] for n, v in vs.items()}
                curves[e.get("rank", 0)] = cached_plot(f"{ASSETS}/curves/{rel}{suffix}.png", inputs, functools.partial(P.curves_png, vs))
        photos.append(photo_context(idx, manifest, r, thumb, curves, images, embed, columns))
        first = (r.get("targets") or [{}])[0]
        per_image[rel] = {
            "source": r.get("source"),
            "predicted": (r.get("top5") or [{}])[0].get("name"),
            "true_name": r.get("true_name"),
            "correct": r.get("correct"),
            "best_variant": clear_best_variant(first) if first else None,
            "findings": image_findings(r),
        }
    if plots:
        write_bytes(index_path, json.dumps(fresh, indent=1, ensure_ascii=False).encode("utf-8"))

    csv_path = write_metrics_csv(out, recs, columns)
    summary_path = write_summary_json(out, manifest, summary, findings, per_image, recs)

    from camscope.reporting.explore import _asset, explorer_data, render_explorer, weights_banner

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
        colormap=settings.colormap, alpha=settings.alpha, columns=columns,
    ))
    import camscope

    page = render_page({
        "explorer": {k: _markup(getattr(explorer, k)) for k in ("csp", "mount", "scripts")},
        "css": _markup(_asset("report.css") + explorer.css),
        "banner": _markup(weights_banner(settings.weights)),
        "folder": out.resolve().name,
        "run_info": run_info(manifest, recs),
        "summary": summary_context(summary, columns, findings, images, summary_plots),
        "photos": photos,
        "definitions": definitions(recs),
        "methods": methods_refs(manifest),
        "version": camscope.__version__,
        "csv_name": METRICS_CSV,
        "summary_name": SUMMARY_JSON,
    })
    atomic_write_text(out / REPORT, page)
    logger.info("report written to %s", out / REPORT)
    return ReportFiles(out / REPORT, csv_path, summary_path, written)
