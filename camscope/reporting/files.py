"""``DIR/metrics.csv`` and ``DIR/summary.json``: the report's tables for other tools."""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from camscope.io.rundir import METRICS_CSV, SUMMARY_JSON, Manifest
from camscope.reporting.summary import ReportColumn, csv_columns, metric_rows

__all__ = ["clean_json", "write_metrics_csv", "write_summary_json"]


def clean_json(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats -> None (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    return obj


def write_metrics_csv(out: Path, records: Sequence[dict], columns: Sequence[ReportColumn]) -> Path:
    """One row per photo x explained class x variant; a column per registered metric column."""
    from camscope.io.atomic import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=csv_columns(columns), lineterminator="\n")
    w.writeheader()
    for row in metric_rows(records, columns):
        w.writerow({k: "" if v is None else v for k, v in row.items()})
    atomic_write_text(out / METRICS_CSV, buf.getvalue())
    return out / METRICS_CSV


def write_summary_json(
    out: Path, manifest: Manifest, summary: dict, findings: list[str], per_image: dict[str, Any], records: Sequence[dict]
) -> Path:
    """The summary (means, rankings overall and per category, stability, agreement), the
    findings, per photo the headline, and what each metric was measured with."""
    from camscope.io.atomic import atomic_write_text
    from camscope.metrics import METRICS

    measured: dict[str, Any] = {}
    for rec in records:
        for name, how in (rec.get("metrics") or {}).items():
            spec = METRICS.get(name)
            measured.setdefault(name, {
                "title": spec.title if spec else name, "category": spec.category if spec else None,
                "paper": spec.paper if spec else None, **how,
            })
    doc = {
        "version": 2,
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run": {k: v for k, v in manifest.settings.to_json().items() if k in ("model", "weights", "layer", "methods", "smoothing", "preprocess")},
        "measured_with": measured,
        **summary,
        "findings": findings,
        "images": per_image,
        "failures": {rel: f.to_json() for rel, f in manifest.failures.items()},
    }
    atomic_write_text(out / SUMMARY_JSON, json.dumps(clean_json(doc), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return out / SUMMARY_JSON
