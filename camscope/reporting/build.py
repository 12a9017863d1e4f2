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
from camscope.reporting.evaluate import DEFAULT_STEPS, EvaluationResult, evaluate_run
from camscope.reporting.html import ReportFiles, write_report

__all__ = ["check_report_options", "build_report", "report_after_explain"]

logger = logging.getLogger(__name__)


def check_report_options(*, boxes: str | Path | None = None, steps: int = DEFAULT_STEPS) -> dict | None:
    """Validate report options before any work (a bad box file fails in seconds, not after the
    explain run); returns the loaded box table or None."""
    from camscope.metrics import load_boxes

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"--steps must be a positive integer, not {steps!r}")
    return load_boxes(boxes) if boxes is not None else None


def build_report(
    out_dir: str | Path,
    *,
    model: Any = None,
    weights_file: str | Path | None = None,
    boxes: str | Path | dict | None = None,
    device: Any = None,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    road: bool = True,
    faithfulness: bool = True,
    recompute: bool = False,
    embed: bool = False,
    trust_checkpoint: bool = False,
    progress: bool = False,
    ray: Any = None,
) -> tuple[EvaluationResult, ReportFiles]:
    """Measure (reusing cached metrics) and write the report; the library entry point. With
    ``ray`` (:class:`camscope.distributed.RayOptions`) the photos are measured on a Ray
    cluster (the model is rebuilt there; ``model`` is not used)."""
    table = check_report_options(boxes=boxes, steps=steps) if not isinstance(boxes, dict) else boxes
    if ray is not None:
        from camscope.distributed import evaluate_run_ray

        ev = evaluate_run_ray(
            out_dir, ray, weights_file=weights_file, boxes=table, device=device, seed=seed, steps=steps,
            faithfulness=faithfulness, road=road, recompute=recompute, trust_checkpoint=trust_checkpoint,
            progress=progress,
        )  # fmt: skip
        return ev, write_report(out_dir, ev.images, embed=embed)
    ev = evaluate_run(
        out_dir,
        model=model,
        weights_file=weights_file,
        boxes=table,
        device=device,
        seed=seed,
        steps=steps,
        faithfulness=faithfulness,
        road=road,
        recompute=recompute,
        trust_checkpoint=trust_checkpoint,
        progress=progress,
    )
    files = write_report(out_dir, ev.images, embed=embed)
    return ev, files


def report_after_explain(
    out_dir: str | Path,
    loaded: Any,
    *,
    boxes: str | Path | dict | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    road: bool = True,
    embed: bool = False,
    progress: bool = True,
    ray: Any = None,
) -> int:
    """``explain --report``: measure with the model ``explain`` already loaded (on its own
    device), write the report. Returns an exit code (0, or 1 if some photos could not be
    measured completely).
    """
    ev, files = build_report(
        out_dir, model=loaded, boxes=boxes, steps=steps, seed=seed, road=road, embed=embed, progress=progress, ray=ray
    )
    return ev.exit_code
