"""Command-line interface: ``camscope explain|methods|models ...``.

Errors the user can fix are printed as one line (``camscope: error: ...``) with exit code 2;
a run in which some images failed exits with 1 after finishing the others.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from camscope.errors import CamscopeError

logger = logging.getLogger("camscope")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="resnet50",
                   help="torchvision classifier (resnet50, vit_b_16, swin_t, ...; `camscope models`), "
                   "timm/NAME (camscope[timm]), hf/ORG/NAME or hf/FOLDER (Hugging Face, camscope[hf]), "
                   "or package.module:callable returning an nn.Module (default: resnet50)")
    g.add_argument(
        "--weights-tag",
        default="IMAGENET1K_V1",
        help="entry of the model's torchvision weights enum (IMAGENET1K_V1, DEFAULT, ...) or 'none' "
        "for random weights (default: IMAGENET1K_V1)",
    )
    g.add_argument("--weights", dest="weights_file", metavar="FILE",
                   help="local state dict: .safetensors, or .pt/.pth loaded with weights_only=True")
    g.add_argument("--trust-checkpoint", action="store_true", help="allow a checkpoint that needs arbitrary unpickling (runs its code!)")
    g.add_argument("--labels", metavar="FILE", help="class names: one per line, or JSON")
    g.add_argument("--layer", help="target layer as a dotted module path, e.g. layer4.2 (default: per architecture)")
    g.add_argument("--preprocess", choices=("classic", "weights"), default="classic",
                   help="classic: resize to 224x224, map covers the whole photo; weights: the weights' "
                   "resize + centre crop, map covers the crop (default: classic)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    g.add_argument("--reshape", default="auto", metavar="SPEC",
                   help="how the layer's output becomes a (N, C, h, w) map: auto (default: transformer "
                   "tokens and channels-last maps detected), none, nhwc, tokens:HxW[:skip=T]")
    g.add_argument("--input-size", metavar="N|HxW",
                   help="model input size (default: from the model's weights/config, else 224)")
    g.add_argument("--mean", metavar="R,G,B", help="normalisation mean (default: from the model, else ImageNet's)")
    g.add_argument("--std", metavar="R,G,B", help="normalisation std (default: from the model, else ImageNet's)")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="Hugging Face models only: allow the model repository's own Python code to run")


def build_parser() -> argparse.ArgumentParser:
    from camscope import __version__
    from camscope.methods.registry import METHODS, method_names
    from camscope.smoothing import SMOOTHINGS

    names = method_names()
    parser = argparse.ArgumentParser(
        prog="camscope",
        description="Explain what an image classifier looked at: class activation maps, measured.",
    )
    parser.add_argument("--version", action="version", version=f"camscope {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("explain", help="compute CAMs for images and folders of images")
    ex.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    ex.add_argument("--out", required=True, help="output directory (nothing is written outside it)")
    _add_model_args(ex)
    g = ex.add_argument_group("methods")
    g.add_argument(
        "--methods",
        default="gradcam,ablationcam,scorecam",
        help=f"comma-separated, or 'all' (choices: {', '.join(names)}; default: gradcam,ablationcam,scorecam)",
    )
    g.add_argument(
        "--smooth",
        action="append",
        default=[],
        metavar="SPEC",
        help=f"add a smoothed variant next to the plain maps: {', '.join(SMOOTHINGS)} or a combination "
        "like 'eigen,aug' (repeatable)",
    )
    g.add_argument("--class", dest="target_class", help="class to explain: index or name (default: predicted)")
    g.add_argument("--top-k", type=int, default=1, help="explain the K best predicted classes (default: 1)")
    g.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="precision of the many-forward methods (Score-/Ablation-CAM); default fp32")
    g.add_argument("--compile", action="store_true",
                   help="run Score-CAM's masked forwards through torch.compile (pays seconds to a "
                   "minute once per run, then faster; needs a C++ compiler on CPU; falls back to "
                   "uncompiled with a warning)")
    g.add_argument("--freeze", choices=("auto", "on", "off"), default="auto",
                   help="Score-CAM's masked forwards through a TorchScript-frozen copy of the model, "
                   "checked against eager logits (auto: on CPU at fp32, and at bf16 on CPUs with bf16 instructions, "
                   "for torch/torchvision models)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="rows per forward pass for Score-/Ablation-CAM (default on CPU: full forwards measured on "
                   "the first batches among 2/4/8/16 (8 with --compile), 256 tails; on CUDA: 128, 1024)")
    g.add_argument("--images-per-batch", type=int, default=4, help="images per capture (default: 4)")
    g.add_argument("--max-pixels", type=int, default=89_478_485, metavar="N",
                   help="refuse images with more pixels than this (decompression-bomb guard and memory "
                   "bound, see docs/limits.md; default: 89478485, as Pillow)")
    o = ex.add_argument_group("output")
    o.add_argument("--colormap", default="jet", help="matplotlib colour map for overlays (default: jet)")
    o.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the heat map (default: 0.5)")
    o.add_argument("--no-figures", dest="figures", action="store_false", help="skip comparison figures")
    o.add_argument("--force", action="store_true", help="recompute finished images / overwrite a run with other settings")
    o.add_argument("--fail-fast", action="store_true", help="stop at the first image that fails")
    o.add_argument("--quiet", action="store_true", help="no progress bars")
    from camscope.report.commands import add_explain_report_args, add_report_commands

    add_explain_report_args(ex)
    ex.set_defaults(func=_cmd_explain, method_registry=METHODS)
    add_report_commands(sub)

    de = sub.add_parser(
        "demo",
        help="explain scikit-image's public-domain demo photos end to end (needs camscope[demo])",
    )
    de.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    de.add_argument("--methods", default="gradcam,ablationcam,scorecam", help="as for explain")
    de.add_argument("--weights", dest="weights_file", metavar="FILE", help="local ResNet-50 state dict")
    de.add_argument("--smooth", default="eigen",
                    help="smoothed variant next to the plain maps (default: eigen; the full classic "
                    "study is 'eigen,aug', which costs Score-CAM 6x more)")
    de.add_argument("--no-report", dest="report", action="store_false", help="skip report.html")
    de.add_argument("--device", default=None)
    de.add_argument("--quiet", action="store_true")
    de.set_defaults(func=_cmd_demo)

    me = sub.add_parser("methods", help="list the registered CAM methods")
    me.add_argument("--markdown", action="store_true", help="print the README's method table")
    me.set_defaults(func=_cmd_methods)
    mo = sub.add_parser("models", help="list the classifiers --model takes: torchvision's, and timm's when installed")
    mo.add_argument("pattern", nargs="?", help="only names matching this pattern, e.g. 'vit_*'")
    mo.add_argument("--source", choices=("all", "torchvision", "timm"), default="all",
                    help="torchvision, timm (as timm/NAME; needs camscope[timm]) or all (default)")
    mo.set_defaults(func=_cmd_models)

    from camscope.extra_commands import add_extra_commands

    add_extra_commands(sub)
    return parser


def _split_methods(spec: str) -> list[str]:
    from camscope.methods.registry import method_names

    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if parts == ["all"]:
        return method_names()
    return parts


def _cmd_explain(args: argparse.Namespace) -> int:
    from PIL import Image

    from camscope.pipeline import ExplainOptions, run_explain

    if args.max_pixels > (Image.MAX_IMAGE_PIXELS or 0):
        # Pillow refuses outright above twice its own limit; the user asked for more, explicitly.
        Image.MAX_IMAGE_PIXELS = args.max_pixels

    opts = ExplainOptions(
        model=args.model,
        weights_tag=args.weights_tag,
        weights_file=args.weights_file,
        labels=args.labels,
        preprocess=args.preprocess,
        layer=args.layer,
        methods=_split_methods(args.methods),
        smoothing=args.smooth,
        target_class=args.target_class,
        top_k=args.top_k,
        device=args.device,
        batch_size=args.batch_size,
        images_per_batch=args.images_per_batch,
        max_pixels=args.max_pixels,
        precision=args.precision,
        compile=args.compile,
        freeze={"auto": None, "on": True, "off": False}[args.freeze],
        colormap=args.colormap,
        alpha=args.alpha,
        figures=args.figures,
        quiet=args.quiet,
        force=args.force,
        fail_fast=args.fail_fast,
        trust_checkpoint=args.trust_checkpoint,
        reshape=args.reshape,
        input_size=args.input_size,
        mean=args.mean,
        std=args.std,
        trust_remote_code=args.trust_remote_code,
    )
    from camscope.report.commands import check_report_options, report_after_explain

    boxes = check_report_options(boxes=args.boxes, steps=args.steps) if args.report else None
    res = run_explain(args.images, args.out, opts)
    msg = (
        f"{len(res.completed)} images explained, {len(res.skipped)} already complete, "
        f"{len(res.failed)} failed -> {res.out} ({res.seconds:.1f} s)"
    )
    logger.warning(msg) if res.failed else logger.info(msg)
    if args.report and res.loaded is not None and (res.completed or res.skipped):
        code = report_after_explain(
            res.out, res.loaded, boxes=boxes, steps=args.steps, seed=args.seed,
            road=args.road, embed=args.embed, progress=not args.quiet,
        )
        return max(res.exit_code, code)
    return res.exit_code


DEMO_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def _cmd_demo(args: argparse.Namespace) -> int:
    """Write scikit-image's demo photos under OUT/photos and run the classic study on them.

    ImageNet weights are used when they are cached or can be downloaded; when they cannot (no
    network), the demo says so and runs with random weights so that every step can still be
    seen — every output of such a run is marked "random (no weights)" in manifest.json.
    """
    from pathlib import Path

    from camscope.errors import UsageError, WeightsError
    from camscope.io.atomic import atomic_save
    from camscope.models import imagenet_categories, imagenet_wnids, load_model
    from camscope.pipeline import ExplainOptions, pick_device, run_explain

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
        methods=_split_methods(args.methods),
        smoothing=[args.smooth],
        weights_file=args.weights_file,
        device=args.device,
        quiet=args.quiet,
    )
    device = pick_device(args.device)
    try:
        loaded = load_model(
            "resnet50", weights_file=args.weights_file, device=device, progress=not args.quiet
        )
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
        from camscope.report.commands import report_after_explain

        return max(res.exit_code, report_after_explain(res.out, loaded, progress=not args.quiet))
    return res.exit_code


def _cmd_methods(args: argparse.Namespace) -> int:
    from camscope.methods.registry import METHODS, method_names

    method_names()
    if args.markdown:
        sys.stdout.write(methods_markdown() + "\n")
        return 0
    for spec in METHODS.values():
        sys.stdout.write(f"{spec.name:24s} {spec.title:38s} {spec.paper}\n")
    return 0


def methods_markdown() -> str:
    """The method table of the README, generated from the registry."""
    from camscope.methods.registry import METHODS, method_names

    method_names()
    lines = [
        "| `--methods` name | method | paper | weights (equation) | passes per image |",
        "|---|---|---|---|---|",
    ]
    for s in METHODS.values():
        passes = "1 fwd + 1 bwd to layer" if s.needs_gradients else (
            "1 fwd" if s.forward_passes == "0" else s.forward_passes
        )
        lines.append(f"| `{s.name}` | {s.title} | [{s.paper}]({s.url}) | {s.equation} | {passes} |")
    return "\n".join(lines)


def _cmd_models(args: argparse.Namespace) -> int:
    from camscope.models import list_models

    sys.stdout.write("\n".join(list_models(args.source, args.pattern)) + "\n")
    return 0


class _StderrHandler(logging.StreamHandler):
    """Writes to the *current* ``sys.stderr`` (so repeated in-process ``main()`` calls, e.g. under
    pytest's capture, never log to a stale or closed stream)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _configure_logging(verbose: bool) -> None:
    """Log camscope's own messages to stderr as ``camscope: ...`` (other libraries stay quiet)."""
    if any(getattr(h, "_camscope", False) for h in logger.handlers):
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("camscope: %(message)s"))
    handler._camscope = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except CamscopeError as exc:
        sys.stderr.write(f"camscope: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("camscope: interrupted; re-run the same command to resume\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
