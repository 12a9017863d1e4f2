"""Measured reports of an explain run: ``DIR/report.html``, ``metrics.csv``, ``summary.json``.

``evaluate_run`` measures the saved maps (cached in ``DIR/metrics/``), ``write_report`` renders
them, ``build_report`` does both; ``findings`` turns numbers into sentences.
"""

from __future__ import annotations

from camscope.reporting.build import build_report, check_report_options, report_after_explain
from camscope.reporting.evaluate import DEFAULT_STEPS, EvaluationResult, evaluate_run
from camscope.reporting.findings import image_findings, run_findings
from camscope.reporting.html import ReportFiles, write_report
from camscope.reporting.notebook import MetricTable, evaluate_result
from camscope.reporting.settings import MeasureSettings
from camscope.reporting.summary import metric_rows, summarize

__all__ = [
    "DEFAULT_STEPS",
    "EvaluationResult",
    "MeasureSettings",
    "MetricTable",
    "ReportFiles",
    "build_report",
    "check_report_options",
    "evaluate_result",
    "evaluate_run",
    "image_findings",
    "metric_rows",
    "report_after_explain",
    "run_findings",
    "summarize",
    "write_report",
]
