"""Measure and render in one call: ``build_report`` (``camscope report DIR``) and the
``explain --report`` hook.

Exit codes of the report commands: 0 report written; 1 report written but some photos could not
be measured completely (missing source photo or map file); 2 user error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from camscope.errors import UsageError
from camscope.reporting.evaluate import (
    EvaluationResult,
    MeasureSettings,
    evaluate_run,
    measure_settings,
)
from camscope.reporting.html import ReportFiles, write_report

__all__ = ["check_report_options", "build_report", "report_after_explain"]

logger = logging.getLogger(__name__)


def check_report_options(*, boxes: str | Path | None = None) -> dict | None:
    """Load the box file before any work (a bad one fails in seconds, not after the explain
    run); returns the loaded box table or None."""
    from camscope.metrics import load_boxes

    return load_boxes(boxes) if boxes is not None else None


def build_report(
    out_dir: str | Path,
    *,
    model: Any = None,
    weights_file: str | Path | None = None,
    boxes: str | Path | dict | None = None,
    device: Any = None,
    measure: MeasureSettings | None = None,
    embed: bool = False,
    trust_checkpoint: bool = False,
    progress: bool = False,
    ray: Any = None,
    masks: str | Path | dict | None = None,
    **options: Any,
) -> tuple[EvaluationResult, ReportFiles]:
    """Measure (reusing cached metrics) and write the report; the library entry point.
    ``measure`` (:class:`~camscope.reporting.evaluate.MeasureSettings`) or its fields as
    ``options`` (``steps=12, road=False``...) say what to measure. With ``ray``
    (:class:`camscope.scale.RayOptions`, or anything with its ``evaluate_run``) the photos are measured on a Ray cluster (the
    model is rebuilt there; ``model`` is not used)."""
    measure = measure_settings(measure, options)
    table = check_report_options(boxes=boxes) if not isinstance(boxes, dict) else boxes
    common = dict(weights_file=weights_file, boxes=table, device=device, measure=measure,
                  trust_checkpoint=trust_checkpoint, progress=progress)
    if masks is not None and not isinstance(masks, dict):
        from camscope.reporting.masks import load_mask_dir

        masks = load_mask_dir(masks)  # a bad folder: one line before any work
    if ray is not None:  # the scale-out layer measures (it sits above the report: no import here)
        if masks is not None:
            raise UsageError("--masks is not measured on Ray yet; run the report without --ray")
        ev = ray.evaluate_run(out_dir, **common)
    else:
        ev = evaluate_run(out_dir, model=model, masks=masks, **common)
    return ev, write_report(out_dir, ev.images, embed=embed)


def report_after_explain(
    out_dir: str | Path,
    loaded: Any,
    *,
    boxes: str | Path | dict | None = None,
    measure: MeasureSettings | None = None,
    embed: bool = False,
    progress: bool = True,
    ray: Any = None,
    masks: str | Path | dict | None = None,
) -> int:
    """``explain --report``: measure with the model ``explain`` already loaded (on its own
    device), write the report. Returns an exit code (0, or 1 if some photos could not be
    measured completely).
    """
    ev, _ = build_report(out_dir, model=loaded, boxes=boxes, measure=measure, embed=embed, progress=progress, ray=ray,
                         masks=masks)
    return ev.exit_code
