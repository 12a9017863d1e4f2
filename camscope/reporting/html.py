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
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

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
from camscope.metrics import CATEGORIES, METRICS
from camscope.reporting.cache import load_image_metrics
from camscope.reporting.files import clean_json, write_metrics_csv, write_summary_json
from camscope.reporting.findings import as_float, best_variant, image_findings, run_findings
from camscope.reporting.images import PageImages, thumbnail, write_bytes
from camscope.reporting.summary import (
    OVERALL_CATEGORIES,
    ReportColumn,
    report_columns,
    scalar,
    summarize,
)

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
# Formatting
# ---------------------------------------------------------------------------------------------


def _fmt(col: ReportColumn, x: Any, *, per_photo: bool) -> str | None:
    """The text of a value (None: not measured)."""
    if col.key == "degenerate":
        if per_photo:
            return str(x or "")
        v = as_float(x)
        return None if math.isnan(v) else f"{100 * v:.0f}%"
    v = as_float(x)
    if math.isnan(v):
        return None
    if col.unit == "bool":
        if per_photo:
            return ("hit" if v > 0 else "miss") if col.category == "localisation" else ("yes" if v > 0 else "no")
        return f"{100 * v:.0f}%"
    if col.unit == "fraction":
        return f"{100 * v:.1f}%"
    if col.unit == "percent":
        return f"{v:.1f}"
    return f"{v:.3f}"


def _num(x: Any, digits: int = 3) -> str:
    v = as_float(x)
    return "–" if math.isnan(v) else f"{v:.{digits}f}"


def _cell(text: str | None, best: bool = False, small: str | None = None) -> dict[str, Any]:
    if text is None:
        return {"text": "–", "cls": "na", "small": None}
    return {"text": text, "cls": "best" if best else None, "small": small}


def _best_indices(values: list[float], direction: str | None) -> set[int]:
    finite = [(i, v) for i, v in enumerate(values) if not math.isnan(v)]
    if direction is None or len(finite) < 2:
        return set()
    target = min(v for _, v in finite) if direction == "lower" else max(v for _, v in finite)
    if all(v == target for _, v in finite):
        return set()
    return {i for i, v in finite if v == target}


def _title(col: ReportColumn) -> str:
    return col.title + {"lower": " ↓", "higher": " ↑"}.get(col.direction or "", "")


# ---------------------------------------------------------------------------------------------
# Page parts (plain data for the templates)
# ---------------------------------------------------------------------------------------------


def _run_info(manifest: Manifest, records: Sequence[dict]) -> list[str]:
    s = manifest.settings
    pre = s.preprocess
    size = "x".join(str(v) for v in pre.get("input_size", []))
    parts = [
        f"model {s.model} ({s.weights})",
        f"layer {s.layer}",
        f"input {size} ({pre.get('mode')}: map covers the {pre.get('map_covers')})",
        f"methods {', '.join(s.methods)}",
        f"smoothing {', '.join(s.smoothing) or 'none'}",
        f"{len(records)} photos",
    ]
    if manifest.failures:
        parts.append(f"{len(manifest.failures)} inputs failed (see failures.csv)")
    measured: dict[str, dict] = {}
    for rec in records:
        for name, how in (rec.get("metrics") or {}).items():
            measured.setdefault(name, how)
    if not any(METRICS.get(n) is not None and METRICS[n].model_based for n in measured):
        parts.append("faithfulness not measured")
    if measured:
        parts.append("metrics " + ", ".join(_how(n, h) for n, h in measured.items()))
    return parts


def _how(name: str, how: dict) -> str:
    bits = [f"{k} {_short(v)}" for k, v in (how.get("params") or {}).items()]
    if how.get("seed") is not None:
        bits.append(f"seed {how['seed']}")
    return f"{name} ({', '.join(bits)})" if bits else name


def _short(v: Any) -> str:
    return ", ".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)


def _summary_context(summary: dict, columns: list[ReportColumn], findings: list[str], images: PageImages,
                     plots: dict[str, str | None]) -> dict[str, Any]:
    variants = summary.get("variants", {})
    order = list(variants)
    labels = {n: variants[n]["label"] for n in order}
    by_key = {c.key: c for c in columns}
    ctx: dict[str, Any] = {"findings": findings, "n_photos": summary.get("n_photos", 0),
                           "variant_labels": [labels[n] for n in order], "ranking": None}
    ranking = summary.get("ranking") or []
    if ranking:
        mkeys = [k for k in summary.get("ranking_metrics", []) if any(k in variants[n].get("metric_ranks", {}) for n in ranking)]
        ctx["ranking"] = {
            "used": ", ".join(summary.get("ranking_metrics_used") or []),
            "headers": [by_key[k].title if k in by_key else k for k in mkeys],
            "rows": [
                {"rank": variants[n]["rank"], "label": labels[n], "mean_rank": _num(variants[n]["mean_rank"], 2),
                 "cells": [_cell(_num(variants[n]["metric_ranks"][k], 2)) if k in variants[n]["metric_ranks"] else _cell(None)
                           for k in mkeys]}
                for n in ranking
            ],
        }
    cats = summary.get("categories") or {}
    ctx["overall_categories"] = ", ".join(c for c in OVERALL_CATEGORIES if c in cats) or "no category measured"
    ctx["categories"] = [{"name": c, "title": c.capitalize(), "labels": ", ".join(d["labels"])} for c, d in cats.items()]
    rows = []
    for n in order:
        cells = []
        for d in cats.values():
            col = [as_float(d["mean_rank"].get(x)) for x in order]
            best = order.index(n) in _best_indices(col, "lower")
            x = d["mean_rank"].get(n)
            cells.append(_cell(None if x is None else f"{x:.2f}", best,
                               None if x is None else f"#{d['ranking'].index(n) + 1}"))
        rows.append({"label": labels[n], "cells": cells})
    ctx["category_rows"] = rows
    groups = []
    for cat in (*CATEGORIES, None):
        cols = [c for c in columns if c.category == cat and any(variants[n]["metrics"][c.key]["n"] for n in order)]
        if not cols:
            continue
        grows = []
        for c in cols:
            means = [as_float(variants[n]["metrics"][c.key]["mean"]) for n in order]
            best = _best_indices(means, c.direction)
            cells = []
            for i, n in enumerate(order):
                st = variants[n]["metrics"][c.key]
                text = _fmt(c, st["mean"], per_photo=False) if st["mean"] is not None else None
                small = None
                if text is not None and c.unit != "bool" and c.key not in ("degenerate", "increase_in_confidence") and st["n"] > 1:
                    small = f"± {_fmt(c, st['std'], per_photo=False)}"
                cells.append(_cell(text, i in best, small))
            grows.append({"title": _title(c), "cells": cells})
        groups.append({"title": (cat or "map properties").capitalize(), "rows": grows})
    ctx["groups"] = groups
    stab = []
    for r in summary.get("stability") or []:
        tau = as_float(r.get("kendall_tau"))
        stab.append({
            "label": r["label"], "setting": r["setting"],
            "tau": {"text": _num(tau, 2), "cls": "na" if math.isnan(tau) else ("bad" if tau < 0.8 else None), "small": None},
            "rho": _cell(None if r.get("spearman") is None else f"{as_float(r['spearman']):.2f}"),
            "order": " > ".join(labels.get(n, n) for n in r.get("order", [])),
            "order_alt": " > ".join(labels.get(n, n) for n in r.get("order_alt", [])),
        })
    ctx["stability"] = stab
    ctx["plots"] = [{"title": t, "src": images.src(plots.get(k))} for k, t in
                    (("curves", "Deletion and insertion curves"), ("bars", "Metrics per variant")) if plots.get(k)]
    pairs = summary.get("agreement") or []
    ctx["agreement"] = [
        {"a": labels.get(p["a"], p["a"]), "b": labels.get(p["b"], p["b"]),
         "rho": f"{_num(p.get('spearman_mean'))} ± {_num(p.get('spearman_std'))}",
         "iou": f"{_num(p.get('top_iou_mean'))} ± {_num(p.get('top_iou_std'))}", "n": p.get("n")}
        for p in sorted(pairs, key=lambda p: -(as_float(p.get("spearman_mean")) if not math.isnan(as_float(p.get("spearman_mean"))) else -math.inf))
    ]
    return ctx


def _grid(manifest: Manifest, record: dict, entry: dict, images: PageImages, embed: bool) -> dict[str, Any]:
    s = manifest.settings
    rel = record["rel"]
    rank = entry.get("rank", 0)
    files = manifest.images.get(rel)
    rows = []
    for parts in s.variants:
        cells = []
        for m in s.methods:
            name = variant_name(m, parts)
            v = entry.get("variants", {}).get(name) or {}
            png = files.file(name, rank, ".png") if files is not None else None
            cells.append({"src": images.src(png, thumbnail=embed), "alt": f"{v.get('label') or name} map of {rel}",
                          "degenerate": v.get("degenerate")})
        rows.append({"label": smoothing_label(parts) or "plain", "cells": cells})
    return {"methods": [manifest.title(m) for m in s.methods], "rows": rows}


def _metric_table(entry: dict, columns: list[ReportColumn]) -> dict[str, Any] | None:
    variants = entry.get("variants", {})
    names = list(variants)
    if not names:
        return None
    keys = [c for c in columns if c.key != "degenerate" and any(not math.isnan(scalar(variants[n], c.key)) for n in names)]
    if any(variants[n].get("degenerate") for n in names):
        keys += [c for c in columns if c.key == "degenerate"]
    vals = {c.key: [scalar(variants[n], c.key) for n in names] for c in keys}
    rows = []
    for i, n in enumerate(names):
        v = variants[n]
        cells = []
        for c in keys:
            raw = v.get("degenerate") if c.key == "degenerate" else scalar(v, c.key)
            cells.append(_cell(_fmt(c, raw, per_photo=True), i in _best_indices(vals[c.key], c.direction)))
        rows.append({"label": v.get("label") or n, "cells": cells})
    return {"headers": [_title(c) for c in keys], "rows": rows}


def _agreement_matrix(entry: dict) -> dict[str, Any] | None:
    variants = entry.get("variants", {})
    names = list(variants)
    pairs = {(p["a"], p["b"]): p for p in entry.get("agreement", [])}
    if len(names) < 2 or not pairs:
        return None
    rows = []
    for i, a in enumerate(names):
        cells = []
        for j, b in enumerate(names):
            if i == j:
                cells.append({"text": "—", "cls": "na", "small": None})
                continue
            p = pairs.get((a, b)) or pairs.get((b, a))
            x = as_float(p.get("spearman" if j > i else "top_iou")) if p else math.nan
            cells.append(_cell(None if math.isnan(x) else f"{x:.3f}"))
        rows.append({"label": variants[a].get("label") or a, "cells": cells})
    return {"labels": [variants[n].get("label") or n for n in names], "rows": rows}


def _photo_context(idx: int, manifest: Manifest, record: dict, thumb: str | None, curves: dict[int, str | None],
                   images: PageImages, embed: bool, columns: list[ReportColumn]) -> dict[str, Any]:
    rel = record["rel"]
    truth = record.get("true_class")
    targets = record.get("targets") or []
    out = {
        "anchor": f"photo-{idx}", "rel": rel, "source": record.get("source"), "correct": record.get("correct"),
        "thumb": images.src(thumb) if thumb else None,
        "top5": [{"name": t.get("name"), "prob": _num(t.get("prob")), "true": truth is not None and t.get("class") == truth,
                  "flag": i == 0 and record.get("correct") is False} for i, t in enumerate(record.get("top5") or [])],
        "true_name": record.get("true_name") if truth is not None and record.get("correct") is False else None,
        "targets": [],
    }
    for entry in targets:
        name, prob = entry.get("name"), _num(entry.get("prob"))
        heading = (f"Explained class {entry.get('rank', 0) + 1}: {name} (p = {prob})" if len(targets) > 1
                   else f"Maps for '{name}' (p = {prob})")
        curve = curves.get(entry.get("rank", 0))
        out["targets"].append({
            "heading": heading,
            "grid": _grid(manifest, record, entry, images, embed),
            "findings": image_findings(record, entry),
            "metrics": _metric_table(entry, columns),
            "agreement": _agreement_matrix(entry),
            "curves": images.src(curve) if curve else None,
        })
    return out


_FIXED_DEFINITIONS = (
    {"name": "pairwise-agreement", "title": "Agreement between two maps", "category": "agreement",
     "text": "Spearman rank correlation over pixels and IoU of the top-15% regions of two maps.", "paper": "", "url": ""},
    {"name": "degenerate", "title": "Degenerate", "category": "map property",
     "text": "Empty, constant or near-empty maps (fewer than 0.1% of pixels above half the maximum).", "paper": "", "url": ""},
)


def _definitions(records: Sequence[dict]) -> list[dict[str, Any]]:
    measured: dict[str, dict] = {}
    for rec in records:
        for name, how in (rec.get("metrics") or {}).items():
            measured.setdefault(name, how)
    out = []
    for name, how in measured.items():
        spec = METRICS.get(name)
        if spec is None:
            continue
        text = (spec.fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        if spec.equation:
            text = f"{text} {spec.equation}." if text else f"{spec.equation}."
        out.append({"name": name, "title": spec.title, "category": spec.category, "text": text.strip(),
                    "paper": spec.paper, "url": spec.url if spec.url.startswith("https://") else "",
                    "settings": f"measured with {_how(name, how)}; cost per map: {spec.cost}"})
    return out + [dict(d, settings=None) for d in _FIXED_DEFINITIONS]


def _methods_refs(manifest: Manifest) -> list[dict[str, Any]]:
    from camscope.errors import UsageError
    from camscope.methods.registry import get_method

    rows = []
    for name, meta in manifest.methods.items():
        url = ""
        try:
            url = get_method(name).url
        except UsageError:
            pass
        rows.append({"title": meta.get("title") or name, "paper": meta.get("paper"),
                     "url": url if url.startswith("https://") else ""})
    return rows


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
    findings = run_findings(recs, summary)
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
        photos.append(_photo_context(idx, manifest, r, thumb, curves, images, embed, columns))
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
        "run_info": _run_info(manifest, recs),
        "summary": _summary_context(summary, columns, findings, images, summary_plots),
        "photos": photos,
        "definitions": _definitions(recs),
        "methods": _methods_refs(manifest),
        "version": camscope.__version__,
        "csv_name": METRICS_CSV,
        "summary_name": SUMMARY_JSON,
    })
    atomic_write_text(out / REPORT, page)
    logger.info("report written to %s", out / REPORT)
    return ReportFiles(out / REPORT, csv_path, summary_path, written)
