"""Across photos: one scalar row per photo x class x variant, mean ± std per variant, ranking.

Ranking (documented composite): for every photo (first explained class) and every ranking
metric measured for at least two variants, the variants are ranked 1 = best (ties share their
average rank; direction per metric below). A variant's score is the mean of all its ranks over
photos and metrics — its *mean rank*; lower is better, and ties keep the run's variant order.
Mean ranks are comparable across metrics of different scales and robust to a single outlying
photo. Concentration metrics describe maps and are not ranked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from camscope.io.rundir import parse_variant
from camscope.reporting.findings import as_float, gap

__all__ = ["METRICS", "RANKING_METRICS", "CSV_COLUMNS", "metric_rows", "summarize"]

# (key, label, direction: "lower"/"higher" is better, None: descriptive)
METRICS: tuple[tuple[str, str, str | None], ...] = (
    ("deletion_auc", "Deletion AUC", "lower"),
    ("insertion_auc", "Insertion AUC", "higher"),
    ("gap", "Insertion - deletion", "higher"),
    ("average_drop", "Average Drop %", "lower"),
    ("increase_in_confidence", "Increase in Confidence %", "higher"),
    ("road_morf", "ROAD MoRF", "lower"),
    ("road_lerf", "ROAD LeRF", "higher"),
    ("pointing_game", "Pointing game", "higher"),
    ("energy_pg", "Energy pointing game", "higher"),
    ("top5_energy", "Top-5% energy", None),
    ("top10_energy", "Top-10% energy", None),
    ("entropy", "Normalised entropy", None),
    ("degenerate", "Degenerate", None),
)
RANKING_METRICS: tuple[str, ...] = (
    "deletion_auc",
    "insertion_auc",
    "average_drop",
    "increase_in_confidence",
    "road_morf",
    "road_lerf",
    "pointing_game",
    "energy_pg",
)
"""Metrics entering the mean rank (the gap is left out: it would count deletion/insertion twice)."""

CSV_COLUMNS: tuple[str, ...] = (
    "file", "source", "target_rank", "target_class", "target_name", "target_prob",
    "true_class", "true_name", "correct", "variant", "method", "smoothing",
    "deletion_auc", "insertion_auc", "gap", "average_drop", "increase_in_confidence",
    "road_morf", "road_lerf", "pointing_game", "energy_pg",
    "top5_energy", "top10_energy", "entropy", "degenerate", "peak_region",
)


def scalar(v: dict, key: str) -> float:
    """A variant's scalar metric as a float (booleans 0/1, degenerate flag 0/1, NaN if absent)."""
    if key == "gap":
        return gap(v)
    if key == "degenerate":
        return 1.0 if v.get("degenerate") else 0.0
    return as_float(v.get(key))


def metric_rows(records: Sequence[dict]) -> list[dict[str, Any]]:
    """One row per photo x explained class x variant, in ``CSV_COLUMNS`` (blank = not measured)."""
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
                for key in CSV_COLUMNS:
                    if key in row:
                        continue
                    x = scalar(v, key)
                    row[key] = None if math.isnan(x) else round(x, 6)
                rows.append({k: row.get(k) for k in CSV_COLUMNS})
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


def summarize(records: Sequence[dict], variants: Sequence[str] | None = None) -> dict[str, Any]:
    """Mean ± std (population std over photos) of every metric per variant, mean ranks, ranking
    and mean pairwise agreement. Uses each photo's first explained class."""
    entries = [(rec, rec["targets"][0]) for rec in records if rec.get("targets")]
    if variants is None:
        variants = list(dict.fromkeys(n for _, e in entries for n in e.get("variants", {})))
    variants = list(variants)
    out: dict[str, Any] = {
        "n_photos": len(entries),
        "metrics": [{"key": k, "label": lab, "better": d} for k, lab, d in METRICS],
        "ranking_metrics": list(RANKING_METRICS),
        "variants": {},
    }
    ranks: dict[str, list[float]] = {n: [] for n in variants}
    per_metric_ranks: dict[str, dict[str, list[float]]] = {n: {} for n in variants}
    used: list[str] = []
    for key in RANKING_METRICS:
        for _, e in entries:
            vs = e.get("variants", {})
            vals = [scalar(vs[n], key) if n in vs else math.nan for n in variants]
            for n, rk in zip(variants, _ranks(vals, dict((k, d) for k, _, d in METRICS)[key]), strict=True):
                if not math.isnan(rk):
                    ranks[n].append(rk)
                    per_metric_ranks[n].setdefault(key, []).append(rk)
                    if key not in used:
                        used.append(key)
    labels = dict((k, lab) for k, lab, _ in METRICS)
    out["ranking_metrics_used"] = [labels[k] for k in used]
    for n in variants:
        first = next((e["variants"][n] for _, e in entries if n in e.get("variants", {})), {})
        out["variants"][n] = {
            "label": first.get("label") or n,
            "method": first.get("method") or parse_variant(n)[0],
            "smoothing": first.get("smoothing") or "",
            "metrics": {
                key: _stats([scalar(e["variants"][n], key) for _, e in entries if n in e.get("variants", {})])
                for key, _, _ in METRICS
            },
            "mean_rank": round(float(np.mean(ranks[n])), 4) if ranks[n] else None,
            "metric_ranks": {k: round(float(np.mean(v)), 4) for k, v in per_metric_ranks[n].items()},
        }
    order = sorted(
        (n for n in variants if out["variants"][n]["mean_rank"] is not None),
        key=lambda n: (out["variants"][n]["mean_rank"], variants.index(n)),
    )
    out["ranking"] = order
    for i, n in enumerate(order):
        out["variants"][n]["rank"] = i + 1
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
