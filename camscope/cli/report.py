"""``camscope report DIR`` and the report options of ``camscope explain --report``.

    camscope report DIR [--metrics SELECTION] [--stability] [--boxes FILE] [--weights FILE]
                        [--device D] [--steps N] [--seed S] [--no-road] [--no-faithfulness]
                        [--recompute] [--embed] [--quiet]
                        [--ray [ADDRESS] [--workers N] [--gpus-per-worker F] [--cpus-per-worker N]]

Exit codes: 0 report written; 1 report written but some photos could not be measured
completely (missing source photo or map file; listed on stderr); 2 user error.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from camscope.cli.args import add_device_arg, add_quiet_arg, add_ray_args, ray_from_args

__all__ = ["register", "add_measure_args", "add_explain_report_args", "measure_from_args"]

logger = logging.getLogger(__name__)


def add_measure_args(p: Any, *, with_boxes: bool = True) -> None:
    """What to measure: ``--metrics``, ``--stability``, ``--boxes``, ``--steps``, ``--seed``,
    ``--no-road``, ``--embed``. The metric names and categories come from the registry."""
    from camscope.metrics import CATEGORIES, METRICS
    from camscope.reporting.evaluate import DEFAULT_STEPS

    cats = [c for c in CATEGORIES if any(m.category == c for m in METRICS.values())]
    default = [m.name for m in METRICS.values() if m.default]
    p.add_argument(
        "--metrics",
        metavar="SELECTION",
        help="what to measure: comma-separated categories (" + ", ".join(cats) + "), metric names ("
        + ", ".join(METRICS) + "), 'all' or 'default' (default: " + ", ".join(default) + ")",
    )
    p.add_argument(
        "--stability",
        action="store_true",
        help="also measure each metric at other seeds and other values of its main hyperparameter, "
        "and report how much the ranking of the methods moves (costs that many more measurements)",
    )
    if with_boxes:
        p.add_argument(
            "--boxes",
            metavar="FILE",
            help="ground-truth boxes for the pointing games: CSV (file,x0,y0,x1,y1[,width,height,label]) "
            "or ImageNet/VOC XML file or folder",
        )
        p.add_argument(
            "--masks",
            metavar="DIR",
            help="ground-truth masks for the localisation metrics: one PNG per photo (non-zero = the object, "
            "the photo's size), named like the photo (detect/segment runs are also measured against each "
            "target's own box or mask)",
        )
    p.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"deletion/insertion steps: 2*(steps+1) forward passes per map (default: {DEFAULT_STEPS})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every seeded metric, e.g. ROAD's imputation noise (default: 0)")
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


def add_explain_report_args(parser: argparse.ArgumentParser) -> None:
    """``--report`` and what to measure, for ``camscope explain``."""
    g = parser.add_argument_group("report")
    g.add_argument(
        "--report",
        action="store_true",
        help="also measure the maps and write DIR/report.html, metrics.csv, summary.json",
    )
    add_measure_args(g)


def measure_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~camscope.reporting.evaluate.MeasureSettings` the options ask for (defaults
    for options a command lacks, such as ``--no-faithfulness`` in ``explain``)."""
    from camscope.reporting.evaluate import MeasureSettings

    return MeasureSettings(
        metrics=args.metrics,
        stability=args.stability,
        steps=args.steps,
        seed=args.seed,
        road=args.road,
        faithfulness=getattr(args, "faithfulness", True),
        recompute=getattr(args, "recompute", False),
    )


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report",
        help="measure the maps of an explain run and write DIR/report.html, metrics.csv, summary.json",
        description="Measure the saved maps of `camscope explain --out DIR` (maps are not recomputed; "
        "metrics already in DIR/metrics/ are reused) and write DIR/report.html.",
    )
    p.add_argument("dir", help="the --out folder of `camscope explain`")
    add_measure_args(p)
    p.add_argument("--weights", dest="weights_file", metavar="FILE", help="local state dict overriding the run's weights")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow a checkpoint that needs arbitrary unpickling")
    add_device_arg(p)
    p.add_argument(
        "--no-faithfulness",
        dest="faithfulness",
        action="store_false",
        help="no model: only map properties, agreement and localisation (seconds)",
    )
    p.add_argument("--recompute", action="store_true", help="ignore cached metrics in DIR/metrics/")
    add_quiet_arg(p)
    add_ray_args(p)
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """``camscope report DIR``."""
    from camscope.io.rundir import RunDir
    from camscope.reporting import build_report

    ray = ray_from_args(args)
    if ray is not None:
        from camscope.scale import RayMeasurement, import_ray

        import_ray()
        ray = RayMeasurement(ray)
    RunDir(args.dir).load()  # no manifest: one line before anything else
    ev, files = build_report(
        args.dir,
        weights_file=args.weights_file,
        boxes=args.boxes,
        masks=args.masks,
        device=args.device,
        measure=measure_from_args(args),
        embed=args.embed,
        trust_checkpoint=args.trust_checkpoint,
        progress=not args.quiet,
        ray=ray,
    )
    for rel, reason in ev.problems:
        logger.warning("%s: %s", rel, reason)
    logger.info(
        "report written to %s (%d photos; model-based metrics computed for %d maps, %d from cache; %.1f s)",
        files.html, len(ev.images), ev.maps_computed, ev.maps_reused, ev.seconds,
    )
    return ev.exit_code
