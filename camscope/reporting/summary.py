"""Across photos: one scalar row per photo x class x variant, mean ± std per variant, rankings
overall and per category, and the rankings' stability.

The metrics come from the registry (:data:`camscope.metrics.METRICS`): every column of a
registered metric that has a value in the records (the default metrics' columns always) is a
column of ``metrics.csv``, a row of the summary and a candidate for the rankings.

Ranking (documented composite): for every photo (first explained class) and every ranked column
measured for at least two variants, the variants are ranked 1 = best (ties share their average
rank; direction from the registration). A variant's score is the mean of all its ranks over
photos and columns — its *mean rank*; lower is better, and ties keep the run's variant order.
Each category (faithfulness, robustness, localisation, complexity, randomisation, axiomatic,
agreement) gets its own ranking; the overall ranking uses the categories in
:data:`OVERALL_CATEGORIES` (complexity and agreement describe maps: a sparser map or one like
the others is not by itself a better explanation).

Per photo, a variant's mean rank over the columns of each category (and over the overall
columns) is kept as ``photo_ranks`` (one entry per photo, None where not ranked): the findings
compare the leader with the runner-up photo by photo (a sign test) before naming a winner.

Stability (Quantus's lesson that rankings move with a metric's hyperparameters): where the
records hold values measured at other seeds or at other values of a metric's main
hyperparameter (``camscope report --stability``), the ranking of the variants by their mean
under each alternative setting is compared with the ranking under the report's setting by
Kendall's tau-b and Spearman's rho (1: same order, -1: reversed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from camscope.io.rundir import parse_variant
from camscope.metrics import CATEGORIES, METRICS, Column, MetricSpec
from camscope.metrics.registry import all_columns
from camscope.reporting.findings import JUDGING_CATEGORIES, as_float, gap

__all__ = [
    "BASE_COLUMNS",
    "OVERALL_CATEGORIES",
    "ReportColumn",
    "csv_columns",
    "metric_rows",
    "report_columns",
    "scalar",
    "summarize",
]

OVERALL_CATEGORIES: tuple[str, ...] = JUDGING_CATEGORIES
"""Categories whose columns enter the overall mean rank (those that judge the explanation)."""

BASE_COLUMNS: tuple[str, ...] = (
    "file", "source", "target_rank", "target_class", "target_name", "target_prob",
    "true_class", "true_name", "correct", "variant", "method", "smoothing",
)
TAIL_COLUMNS: tuple[str, ...] = ("degenerate", "peak_region")


@dataclass(frozen=True)
class ReportColumn:
    """A column of the report: a registered metric's column, or the descriptive degenerate flag."""

    key: str
    title: str
    direction: str | None
    category: str | None
    metric: str | None
    ranked: bool
    unit: str

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.title, "better": self.direction, "category": self.category,
                "metric": self.metric, "ranked": self.ranked, "unit": self.unit}


def _col(spec: MetricSpec, c: Column) -> ReportColumn:
    return ReportColumn(c.key, c.title, c.direction, spec.category, spec.name, c.ranked, c.unit)


DEGENERATE = ReportColumn("degenerate", "Degenerate", None, None, None, False, "")


def scalar(v: dict, key: str) -> float:
    """A variant's scalar value as a float (booleans 0/1, degenerate flag 0/1, NaN if absent)."""
    if key == "gap" and "gap" not in v:
        return gap(v)
    if key == "degenerate":
        return 1.0 if v.get("degenerate") else 0.0
    return as_float(v.get(key))


def _variant_dicts(records: Sequence[dict]) -> list[dict]:
    return [v for rec in records for e in rec.get("targets", []) for v in e.get("variants", {}).values()]


def report_columns(records: Sequence[dict]) -> list[ReportColumn]:
    """The registered columns the report shows: every column of a default metric, and every
    other registered column with a value in ``records``; then the degenerate flag."""
    vs = _variant_dicts(records)
    out = []
    for spec, c in all_columns():
        if spec.default or any(not math.isnan(scalar(v, c.key)) for v in vs):
            out.append(_col(spec, c))
    return [*out, DEGENERATE]


def csv_columns(columns: Sequence[ReportColumn]) -> list[str]:
    """The header of ``metrics.csv``."""
    return [*BASE_COLUMNS, *(c.key for c in columns if c.key != "degenerate"), *TAIL_COLUMNS]


def metric_rows(records: Sequence[dict], columns: Sequence[ReportColumn] | None = None) -> list[dict[str, Any]]:
    """One row per photo x explained class x variant, in :func:`csv_columns` order (None = not measured)."""
    columns = report_columns(records) if columns is None else columns
    header = csv_columns(columns)
    rows = []
    for rec in records:
        for entry in rec.get("targets", []):
            for name, v in entry.get("variants", {}).items():
                row: dict[str, Any] = {
                    "file": rec.get("rel"),
                    "source": rec.get("source"),
                    "target_rank": entry.get("rank", 0) + 1,
                    "target_class": entry.get("class"),
                    "target_name": entry.get("name"),
                    "target_prob": entry.get("prob"),
                    "true_class": rec.get("true_class"),
                    "true_name": rec.get("true_name"),
                    "correct": None if rec.get("correct") is None else ("yes" if rec["correct"] else "no"),
                    "variant": name,
                    "method": v.get("method"),
                    "smoothing": v.get("smoothing") or "",
                    "degenerate": v.get("degenerate") or "",
                    "peak_region": v.get("region") or "",
                }
                for key in header:
                    if key in row:
                        continue
                    x = scalar(v, key)
                    row[key] = None if math.isnan(x) else round(x, 6)
                rows.append({k: row.get(k) for k in header})
    return rows


def _stats(values: list[float]) -> dict[str, Any]:
    arr = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if arr.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": round(float(arr.mean()), 6), "std": round(float(arr.std()), 6), "n": int(arr.size)}


def _ranks(values: list[float], direction: str) -> list[float]:
    """Average ranks (1 = best) of the finite values; NaN stays NaN."""
    from scipy.stats import rankdata

    idx = [i for i, x in enumerate(values) if not math.isnan(x)]
    out = [math.nan] * len(values)
    if len(idx) < 2:
        return out
    vals = np.asarray([values[i] for i in idx])
    r = rankdata(vals if direction == "lower" else -vals, method="average")
    for i, rk in zip(idx, r, strict=True):
        out[i] = float(rk)
    return out


def _order(means: dict[str, float], variants: list[str]) -> list[str]:
    return sorted((n for n in variants if not math.isnan(means.get(n, math.nan))),
                  key=lambda n: (means[n], variants.index(n)))


def summarize(records: Sequence[dict], variants: Sequence[str] | None = None) -> dict[str, Any]:
    """Mean ± std (population std over photos) of every column per variant, mean ranks (overall
    and per category), rankings, stability of the rankings and mean pairwise agreement. Uses
    each photo's first explained class."""
    entries = [(rec, rec["targets"][0]) for rec in records if rec.get("targets")]
    if variants is None:
        variants = list(dict.fromkeys(n for _, e in entries for n in e.get("variants", {})))
    variants = list(variants)
    columns = report_columns(records)
    out: dict[str, Any] = {
        "n_photos": len(entries),
        "metrics": [c.to_json() for c in columns],
        "variants": {},
    }
    # ---- ranks per photo and column --------------------------------------------------------
    per_col: dict[str, dict[str, list[float]]] = {n: {} for n in variants}
    per_photo: list[dict[str, dict[str, float]]] = [{} for _ in entries]  # photo -> column -> variant -> rank
    used: list[ReportColumn] = []
    for c in columns:
        if not c.ranked or c.direction is None:
            continue
        for i, (_, e) in enumerate(entries):
            vs = e.get("variants", {})
            vals = [scalar(vs[n], c.key) if n in vs else math.nan for n in variants]
            for n, rk in zip(variants, _ranks(vals, c.direction), strict=True):
                if not math.isnan(rk):
                    per_col[n].setdefault(c.key, []).append(rk)
                    per_photo[i].setdefault(c.key, {})[n] = rk
                    if c not in used:
                        used.append(c)

    def photo_ranks(cols: Sequence[ReportColumn]) -> dict[str, list[float | None]]:
        """Per variant, its mean rank over ``cols`` on each photo (None where not ranked): what
        the findings compare photo by photo before they name a winner."""
        table: dict[str, list[float | None]] = {}
        for n in variants:
            row: list[float | None] = []
            for ph in per_photo:
                rk = [ph[c.key][n] for c in cols if n in ph.get(c.key, {})]
                row.append(round(float(np.mean(rk)), 4) if rk else None)
            table[n] = row
        return table

    def mean_rank(n: str, cols: Sequence[ReportColumn]) -> float:
        ranks = [r for c in cols for r in per_col[n].get(c.key, [])]
        return round(float(np.mean(ranks)), 4) if ranks else math.nan

    overall = [c for c in used if c.category in OVERALL_CATEGORIES]
    out["ranking_metrics"] = [c.key for c in overall]
    out["ranking_metrics_used"] = [c.title for c in overall]
    for n in variants:
        first = next((e["variants"][n] for _, e in entries if n in e.get("variants", {})), {})
        mr = mean_rank(n, overall)
        out["variants"][n] = {
            "label": first.get("label") or n,
            "method": first.get("method") or parse_variant(n)[0],
            "smoothing": first.get("smoothing") or "",
            "metrics": {
                c.key: _stats([scalar(e["variants"][n], c.key) for _, e in entries if n in e.get("variants", {})])
                for c in columns
            },
            "mean_rank": None if math.isnan(mr) else mr,
            "metric_ranks": {k: round(float(np.mean(v)), 4) for k, v in per_col[n].items()},
        }
    order = _order({n: as_float(out["variants"][n]["mean_rank"]) for n in variants}, variants)
    out["ranking"] = order
    out["photo_ranks"] = photo_ranks(overall)
    for i, n in enumerate(order):
        out["variants"][n]["rank"] = i + 1
    # ---- per category ----------------------------------------------------------------------
    cats: dict[str, Any] = {}
    for cat in CATEGORIES:
        cols = [c for c in used if c.category == cat]
        if not cols:
            continue
        means = {n: mean_rank(n, cols) for n in variants}
        ranking = _order(means, variants)
        if not ranking:
            continue
        cats[cat] = {
            "columns": [c.key for c in cols],
            "labels": [c.title for c in cols],
            "ranking": ranking,
            "mean_rank": {n: means[n] for n in ranking},
            "photo_ranks": photo_ranks(cols),
        }
        for n in ranking:
            out["variants"][n].setdefault("category_ranks", {})[cat] = means[n]
    out["categories"] = cats
    out["stability"] = stability(entries, variants)
    # ---- agreement -------------------------------------------------------------------------
    pairs: dict[tuple[str, str], dict[str, list[float]]] = {}
    for _, e in entries:
        for p in e.get("agreement", []):
            d = pairs.setdefault((p["a"], p["b"]), {"spearman": [], "top_iou": []})
            d["spearman"].append(as_float(p.get("spearman")))
            d["top_iou"].append(as_float(p.get("top_iou")))
    out["agreement"] = [
        {
            "a": a,
            "b": b,
            "spearman_mean": _stats(d["spearman"])["mean"],
            "spearman_std": _stats(d["spearman"])["std"],
            "top_iou_mean": _stats(d["top_iou"])["mean"],
            "top_iou_std": _stats(d["top_iou"])["std"],
            "n": _stats(d["spearman"])["n"],
        }
        for (a, b), d in pairs.items()
    ]
    return out


def _rank_agreement(a: list[float], b: list[float]) -> tuple[float, float]:
    from scipy.stats import kendalltau, spearmanr

    if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return math.nan, math.nan
    tau = float(kendalltau(a, b).statistic)
    rho = float(spearmanr(a, b).statistic)
    return tau, rho


def stability(entries: Sequence[tuple[dict, dict]], variants: Sequence[str]) -> list[dict[str, Any]]:
    """Per metric, ranked column and alternative setting found in the records (``stability``
    of each variant): Kendall's tau and Spearman's rho between the variants' mean values under
    the report's setting and under the alternative, over the photos that have both."""
    rows: list[dict[str, Any]] = []
    found: dict[str, list[str]] = {}
    for _, e in entries:
        for v in e.get("variants", {}).values():
            for metric, alts in (v.get("stability") or {}).items():
                for label in alts:
                    if label not in found.setdefault(metric, []):
                        found[metric].append(label)
    for metric, labels in found.items():
        spec = METRICS.get(metric)
        if spec is None:
            continue
        for c in spec.columns:
            if not c.ranked:
                continue
            for label in labels:
                base: dict[str, list[float]] = {}
                alt: dict[str, list[float]] = {}
                for _, e in entries:
                    for n, v in e.get("variants", {}).items():
                        x = as_float(v.get(c.key))
                        y = as_float(((v.get("stability") or {}).get(metric) or {}).get(label, {}).get(c.key))
                        if not (math.isnan(x) or math.isnan(y)):
                            base.setdefault(n, []).append(x)
                            alt.setdefault(n, []).append(y)
                names = [n for n in variants if n in base]
                a = [float(np.mean(base[n])) for n in names]
                b = [float(np.mean(alt[n])) for n in names]
                tau, rho = _rank_agreement(a, b)
                sign = 1.0 if c.direction == "lower" else -1.0
                rows.append({
                    "metric": metric, "key": c.key, "label": c.title, "category": spec.category, "setting": label,
                    "kendall_tau": None if math.isnan(tau) else round(tau, 4),
                    "spearman": None if math.isnan(rho) else round(rho, 4),
                    "n_variants": len(names), "n_photos": min((len(base[n]) for n in names), default=0),
                    "order": [n for _, n in sorted(zip([sign * x for x in a], names, strict=True))],
                    "order_alt": [n for _, n in sorted(zip([sign * x for x in b], names, strict=True))],
                })
    return rows
