"""Report plots (matplotlib, Agg canvas, no pyplot state): PNG bytes, written by the caller."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["curves_png", "mean_curves_png", "metric_bars_png"]


def _figure(w: float, h: float) -> Any:
    from camscope.render.draw import new_figure

    return new_figure(figsize=(w, h), dpi=100)


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _style(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def curves_png(variants: dict[str, dict]) -> bytes | None:
    """Deletion and insertion curves of one photo, one line per variant; None without curves."""
    have = {n: v for n, v in variants.items() if v.get("curves")}
    if not have:
        return None
    fig = _figure(8.0, 2.8)
    ax_d, ax_i = fig.subplots(1, 2)
    for n, v in have.items():
        c = v["curves"]
        style = "--" if v.get("smoothing") else "-"
        label = v.get("label") or n
        ax_d.plot(c["fractions"], c["deletion"], style, lw=1.3, label=f"{label} ({v.get('deletion_auc', math.nan):.3f})")
        ax_i.plot(c["fractions"], c["insertion"], style, lw=1.3, label=f"{label} ({v.get('insertion_auc', math.nan):.3f})")
    _style(ax_d, "Deletion (lower AUC is better)", "fraction of pixels deleted", "class probability")
    _style(ax_i, "Insertion (higher AUC is better)", "fraction of pixels inserted", "class probability")
    for ax in (ax_d, ax_i):
        ax.legend(fontsize=6.5, frameon=False)
    return _png(fig)


def mean_curves_png(entries: Sequence[dict], variants: Sequence[str], labels: dict[str, str]) -> bytes | None:
    """Mean deletion and insertion curves over photos (first class of each), one line per variant."""
    sums: dict[str, dict[str, Any]] = {}
    for e in entries:
        for n in variants:
            v = e.get("variants", {}).get(n) or {}
            c = v.get("curves")
            if not c:
                continue
            s = sums.setdefault(n, {"x": np.asarray(c["fractions"], dtype=float), "d": [], "i": [], "smooth": bool(v.get("smoothing"))})
            if len(c["fractions"]) == len(s["x"]):
                s["d"].append(np.asarray(c["deletion"], dtype=float))
                s["i"].append(np.asarray(c["insertion"], dtype=float))
    if not sums:
        return None
    fig = _figure(9.0, 3.2)
    ax_d, ax_i = fig.subplots(1, 2)
    for n, s in sums.items():
        style = "--" if s["smooth"] else "-"
        ax_d.plot(s["x"], np.nanmean(s["d"], axis=0), style, lw=1.5, label=f"{labels.get(n, n)} (n={len(s['d'])})")
        ax_i.plot(s["x"], np.nanmean(s["i"], axis=0), style, lw=1.5, label=f"{labels.get(n, n)} (n={len(s['i'])})")
    _style(ax_d, "Mean deletion curve", "fraction of pixels deleted", "class probability")
    _style(ax_i, "Mean insertion curve", "fraction of pixels inserted", "class probability")
    for ax in (ax_d, ax_i):
        ax.legend(fontsize=7, frameon=False)
    return _png(fig)


def metric_bars_png(summary: dict, keys: Sequence[str]) -> bytes | None:
    """One bar chart per metric: mean ± std per variant."""
    variants = list(summary.get("variants", {}))
    meta = {m["key"]: m for m in summary.get("metrics", [])}
    keys = [k for k in keys if any(summary["variants"][n]["metrics"][k]["n"] for n in variants)]
    if not keys or not variants:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = _figure(3.8 * cols, rows * (1.0 + 0.25 * len(variants)))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    labels = [summary["variants"][n]["label"] for n in variants]
    colours = ["#4c72b0" if not summary["variants"][n]["smoothing"] else "#dd8452" for n in variants]
    for ax, key in zip(axes, keys, strict=False):
        st = [summary["variants"][n]["metrics"][key] for n in variants]
        means = [s["mean"] if s["mean"] is not None else np.nan for s in st]
        stds = [s["std"] if s["std"] is not None else 0.0 for s in st]
        y = np.arange(len(variants))
        ax.barh(y, means, xerr=stds, color=colours, alpha=0.85, error_kw={"lw": 0.8, "capsize": 2})
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        better = meta.get(key, {}).get("better")
        arrow = {"lower": " (lower is better)", "higher": " (higher is better)"}.get(better or "", "")
        ax.set_title(meta.get(key, {}).get("label", key) + arrow, fontsize=8.5)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[len(keys) :]:
        ax.axis("off")
    return _png(fig)
