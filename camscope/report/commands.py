"""CLI glue: ``camscope report DIR`` and the ``explain --report`` hook.

    camscope report DIR [--boxes FILE] [--weights FILE] [--device D] [--steps N] [--seed S]
                        [--no-road] [--no-faithfulness] [--recompute] [--embed] [--quiet]

Exit codes: 0 report written; 1 report written but some photos could not be measured
completely (missing source photo or map file; listed on stderr); 2 user error (one line,
raised as :class:`camscope.errors.CamscopeError` and printed by ``camscope.cli.main``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from camscope.errors import UsageError
from camscope.report.evaluate import DEFAULT_STEPS, EvaluationResult, evaluate_run
from camscope.report.html import ReportFiles, write_report

__all__ = [
    "add_report_commands",
    "add_explain_report_args",
    "check_report_options",
    "report_after_explain",
    "build_report",
    "cmd_report",
]

logger = logging.getLogger(__name__)


def _add_measure_args(p: argparse.ArgumentParser | Any, *, with_boxes: bool = True) -> None:
    if with_boxes:
        p.add_argument(
            "--boxes",
            metavar="FILE",
            help="ground-truth boxes for the pointing games: CSV (file,x0,y0,x1,y1[,width,height,label]) "
            "or ImageNet/VOC XML file or folder",
        )
    p.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"deletion/insertion steps: 2*(steps+1) forward passes per map (default: {DEFAULT_STEPS})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of ROAD's imputation noise (default: 0)")
    p.add_argument(
        "--no-road",
        dest="road",
        action="store_false",
        help="skip ROAD (the costliest metric: 10 sparse solves + 10 forwards per map)",
    )
    p.add_argument(
        "--embed",
        action="store_true",
        help="embed every image in report.html (one file to share) instead of linking files inside DIR",
    )


def add_report_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``camscope report DIR ...`` to the CLI's subparsers; returns the new parser."""
    p = subparsers.add_parser(
        "report",
        help="measure the maps of an explain run and write DIR/report.html, metrics.csv, summary.json",
        description="Measure the saved maps of `camscope explain --out DIR` (maps are not recomputed; "
        "metrics already in DIR/metrics/ are reused) and write DIR/report.html.",
    )
    p.add_argument("dir", help="the --out folder of `camscope explain`")
    _add_measure_args(p)
    p.add_argument("--weights", dest="weights_file", metavar="FILE", help="local state dict overriding the run's weights")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow a checkpoint that needs arbitrary unpickling")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument(
        "--no-faithfulness",
        dest="faithfulness",
        action="store_false",
        help="no model: only map properties, agreement and localisation (seconds)",
    )
    p.add_argument("--recompute", action="store_true", help="ignore cached metrics in DIR/metrics/")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_report)
    return p


def add_explain_report_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--report`` (+ ``--boxes``, ``--steps``, ``--seed``, ``--no-road``, ``--embed``) to
    the ``explain`` parser."""
    g = parser.add_argument_group("report")
    g.add_argument(
        "--report",
        action="store_true",
        help="also measure the maps and write DIR/report.html, metrics.csv, summary.json",
    )
    _add_measure_args(g)


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
) -> tuple[EvaluationResult, ReportFiles]:
    """Measure (reusing cached metrics) and write the report; the library entry point."""
    table = check_report_options(boxes=boxes, steps=steps) if not isinstance(boxes, dict) else boxes
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
    device: Any = None,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    road: bool = True,
    embed: bool = False,
    progress: bool = True,
) -> int:
    """``explain --report``: measure with the model ``explain`` already loaded, write the report.

    ``device`` is accepted for symmetry; the model's own device is used. Returns an exit code
    (0, or 1 if some photos could not be measured completely).
    """
    del device  # the loaded model already sits on its device
    ev, files = build_report(
        out_dir, model=loaded, boxes=boxes, steps=steps, seed=seed, road=road, embed=embed, progress=progress
    )
    return ev.exit_code


def cmd_report(args: argparse.Namespace) -> int:
    """``camscope report DIR``."""
    out = Path(args.dir)
    if not (out / "manifest.json").is_file():
        raise UsageError(f"{out}: no manifest.json; give the --out folder of `camscope explain`")
    ev, files = build_report(
        out,
        weights_file=args.weights_file,
        boxes=args.boxes,
        device=args.device,
        steps=args.steps,
        seed=args.seed,
        road=args.road,
        faithfulness=args.faithfulness,
        recompute=args.recompute,
        embed=args.embed,
        trust_checkpoint=args.trust_checkpoint,
        progress=not args.quiet,
    )
    for rel, reason in ev.problems:
        logger.warning("%s: %s", rel, reason)
    logger.info(
        "report written to %s (%d photos, %d maps measured, %d from cache, %.1f s)",
        files.html, len(ev.images), ev.computed["faithfulness"], ev.reused["faithfulness"], ev.seconds,
    )
    return ev.exit_code
