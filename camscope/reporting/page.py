"""What the report page shows, as plain data for the templates: value formatting, the summary
(rankings overall and per category, means grouped by category, stability, agreement), each
photo's section and the definitions of the metrics measured (from the registry).

Nothing here builds HTML: the templates (``templates/*.html``) do, with autoescaping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from camscope.io.rundir import Manifest, smoothing_label, variant_name
from camscope.metrics import CATEGORIES, METRICS
from camscope.reporting.findings import as_float, image_findings
from camscope.reporting.images import PageImages
from camscope.reporting.summary import OVERALL_CATEGORIES, ReportColumn, scalar

__all__ = ["definitions", "photo_context", "run_info", "summary_context"]

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


def run_info(manifest: Manifest, records: Sequence[dict]) -> list[str]:
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
    if s.task is not None:
        parts.insert(1, f"task {s.task}")
    if manifest.failures:
        parts.append(f"{len(manifest.failures)} inputs failed (see failures.csv)")
    regions = list(dict.fromkeys(e["region"]["source"] for rec in records for e in rec.get("targets", []) if e.get("region")))
    own = list(dict.fromkeys(e["own_region"]["source"] for rec in records for e in rec.get("targets", []) if e.get("own_region")))
    if regions:
        parts.append("localisation measured against " + " / ".join(regions)
                     + (" (the model's own output as the region, not ground truth)" if all("own" in r for r in regions) else ""))
    if own:
        parts.append("also against " + " / ".join(own) + " (in each photo's metrics/*.json, own_region)")
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


def summary_context(summary: dict, columns: list[ReportColumn], findings: list[str], images: PageImages,
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
    groups: list[dict[str, Any]] = []
    for c in keys:  # columns come in category order: one header cell per run of a category
        title = (c.category or "map properties").capitalize()
        if groups and groups[-1]["title"] == title:
            groups[-1]["span"] += 1
        else:
            groups.append({"title": title, "span": 1})
    return {"headers": [_title(c) for c in keys], "groups": groups, "rows": rows}


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


def photo_context(idx: int, manifest: Manifest, record: dict, thumb: str | None, curves: dict[int, str | None],
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


def definitions(records: Sequence[dict]) -> list[dict[str, Any]]:
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


def methods_refs(manifest: Manifest) -> list[dict[str, Any]]:
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


