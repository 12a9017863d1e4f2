"""``camscope explain IMAGES... --out DIR`` and ``camscope demo``."""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from camscope.cli.args import (
    add_methods_arg,
    add_model_args,
    add_quiet_arg,
    add_ray_args,
    add_smooth_arg,
    add_speed_args,
    add_task_args,
    model_from_args,
    ray_from_args,
    speed_from_args,
)
from camscope.cli.report import add_explain_report_args, measure_from_args

if TYPE_CHECKING:
    from camscope.run import ExplainOptions

__all__ = ["register", "options_from_args", "DEMO_PHOTOS"]

logger = logging.getLogger(__name__)

DEMO_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def register(subparsers: Any) -> None:
    ex = subparsers.add_parser("explain", help="compute CAMs for images and folders of images")
    ex.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    ex.add_argument("--out", required=True, help="output directory (nothing is written outside it)")
    add_model_args(ex)
    g = ex.add_argument_group("methods")
    add_methods_arg(g)
    add_smooth_arg(g)
    add_task_args(ex)
    add_speed_args(g)
    g.add_argument("--images-per-batch", type=int, default=4, help="images per capture (default: 4)")
    g.add_argument("--max-pixels", type=int, default=89_478_485, metavar="N",
                   help="refuse images with more pixels than this (decompression-bomb guard and memory "
                   "bound, see docs/limits.md; default: 89478485, as Pillow)")
    o = ex.add_argument_group("output")
    o.add_argument("--colormap", default="jet", help="matplotlib colour map for overlays (default: jet)")
    o.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the heat map (default: 0.5)")
    o.add_argument("--outputs", default="maps,overlays,figures", metavar="KINDS",
                   help="what each image writes, comma-separated: maps (.npy), overlays (PNG per map), "
                   "figures (comparison figure); default: all (bytes and seconds of each: docs/cluster.md)")
    o.add_argument("--no-figures", dest="figures", action="store_false", help="skip comparison figures (drops figures from --outputs)")
    o.add_argument("--force", action="store_true", help="recompute finished images / overwrite a run with other settings")
    o.add_argument("--fail-fast", action="store_true", help="stop at the first image that fails")
    add_quiet_arg(o)
    add_explain_report_args(ex)
    add_ray_args(ex)
    ex.set_defaults(func=cmd_explain)

    de = subparsers.add_parser(
        "demo",
        help="explain scikit-image's public-domain demo photos end to end (needs camscope[demo])",
    )
    de.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    add_methods_arg(de)
    de.add_argument("--weights", dest="weights_file", metavar="FILE", help="local ResNet-50 state dict")
    de.add_argument("--smooth", default="eigen",
                    help="smoothed variant next to the plain maps (default: eigen; the full classic "
                    "study is 'eigen,aug', which costs Score-CAM 6x more)")
    de.add_argument("--no-report", dest="report", action="store_false", help="skip report.html")
    de.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    add_quiet_arg(de)
    de.set_defaults(func=cmd_demo)


def options_from_args(args: argparse.Namespace) -> ExplainOptions:
    """The explain options of the parsed command line: every option named like a field of
    :class:`~camscope.run.ExplainOptions`, plus the model and the speed settings."""
    from camscope.run import ExplainOptions

    given = {f.name for f in fields(ExplainOptions)} & vars(args).keys()
    kw = {name: getattr(args, name) for name in given}
    return ExplainOptions(**{**kw, "model": model_from_args(args), "speed": speed_from_args(args)})


def cmd_explain(args: argparse.Namespace) -> int:
    from PIL import Image

    from camscope.reporting import check_report_options
    from camscope.run import run_explain

    if args.max_pixels > (Image.MAX_IMAGE_PIXELS or 0):
        # Pillow refuses outright above twice its own limit; the user asked for more, explicitly.
        Image.MAX_IMAGE_PIXELS = args.max_pixels
    ray = ray_from_args(args)
    opts = options_from_args(args)
    measure = measure_from_args(args)  # a bad --steps: one line before any work
    boxes = check_report_options(boxes=args.boxes) if args.report else None
    if args.report and args.masks is not None:
        from camscope.reporting.masks import load_mask_dir

        args.masks = load_mask_dir(args.masks)  # a bad folder: one line before any work
    if args.report and "maps" not in opts.outputs:
        from camscope.errors import UsageError

        raise UsageError("--report measures the .npy maps: keep maps in --outputs")
    if ray is not None:
        from camscope.scale import RayMeasurement, held_session, import_ray, run_explain_ray

        import_ray()  # a missing extra: one line, before anything else
        with held_session():  # one Ray session for the explain run and its report
            return _finish(args, run_explain_ray(args.images, args.out, opts, ray), boxes, measure, RayMeasurement(ray))
    return _finish(args, run_explain(args.images, args.out, opts), boxes, measure, None)


def _finish(args: argparse.Namespace, res: Any, boxes: Any, measure: Any, ray: Any) -> int:
    """Log the explain run's summary and write its report when asked; the exit code."""
    from camscope.reporting import report_after_explain

    msg = (
        f"{len(res.completed)} images explained, {len(res.skipped)} already complete, "
        f"{len(res.failed)} failed -> {res.out} ({res.seconds:.1f} s)"
    )
    logger.warning(msg) if res.failed else logger.info(msg)
    if args.report and res.loaded is not None and (res.completed or res.skipped):
        code = report_after_explain(
            res.out, res.loaded, boxes=boxes, masks=args.masks, measure=measure, embed=args.embed,
            progress=not args.quiet, ray=ray,
        )
        return max(res.exit_code, code)
    return res.exit_code


def cmd_demo(args: argparse.Namespace) -> int:
    """Write scikit-image's demo photos under OUT/photos and run the classic study on them.

    ImageNet weights are used when they are cached or can be downloaded; when they cannot (no
    network), the demo says so and runs with random weights so that every step can still be
    seen — every output of such a run is marked "random (no weights)".
    """
    from pathlib import Path

    from camscope.errors import UsageError, WeightsError
    from camscope.io.atomic import atomic_save
    from camscope.models import (
        ModelSpec,
        imagenet_categories,
        imagenet_wnids,
        load_model,
        pick_device,
    )
    from camscope.run import ExplainOptions, run_explain

    try:
        import skimage.data
    except ImportError:
        raise UsageError("the demo needs scikit-image: pip install 'camscope[demo]'") from None
    from PIL import Image

    out = Path(args.out)
    photos = out / "photos"
    for name in DEMO_PHOTOS:
        target = photos / f"{name}.png"
        if not target.exists():
            img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
            atomic_save(target, lambda f, img=img: img.save(f, format="PNG"))
    opts = ExplainOptions(
        model=ModelSpec(weights_file=args.weights_file),
        methods=args.methods,
        smoothing=[args.smooth],
        device=args.device,
        quiet=args.quiet,
    )
    device = pick_device(args.device)
    try:
        loaded = opts.model_spec.load(device, progress=not args.quiet)
    except WeightsError as exc:
        logger.warning("%s", exc)
        logger.warning(
            "demo: continuing with RANDOM weights so the pipeline can be seen end to end; "
            "the maps say nothing about a trained model"
        )
        loaded = load_model("resnet50", weights_tag=None, device=device)
        loaded.categories, loaded.wnids = imagenet_categories(), imagenet_wnids()
    res = run_explain([photos], out / "run", opts, loaded=loaded)
    logger.info("demo: %d photos explained -> %s", len(res.completed) + len(res.skipped), out / "run")
    if args.report and (res.completed or res.skipped):
        from camscope.reporting import report_after_explain

        return max(res.exit_code, report_after_explain(res.out, loaded, progress=not args.quiet))
    return res.exit_code
