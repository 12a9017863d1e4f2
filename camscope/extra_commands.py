"""CLI glue for ``camscope sanity`` and ``camscope bench synthetic``.

    camscope sanity IMAGES... --out DIR [--model resnet50 --weights FILE --layer L --methods M
                    --groups fc,layer4,... --n-images N --seed S --device D --quiet --check]
    camscope sanity --synthetic --out DIR [--n-images N ...]
    camscope bench synthetic [--n-scenes 200 --methods M --smooth S --out DIR --json FILE
                              --markdown --check]

Results (the summary lines, the table) go to stdout; diagnostics go through ``logging``.
Exit codes: 0 done (with ``--check``: and every method passed); 1 ``--check`` and some method
failed; 2 user error (raised as :class:`camscope.errors.CamscopeError`, printed by the CLI).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from camscope.errors import CamscopeError, UsageError

__all__ = ["add_extra_commands", "cmd_sanity", "cmd_bench_synthetic"]

logger = logging.getLogger(__name__)


def _split(spec: str | None) -> list[str] | None:
    if spec is None:
        return None
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    return parts or None


def _methods(spec: str) -> list[str]:
    from camscope.methods.registry import method_names

    parts = _split(spec) or []
    if parts == ["all"]:
        return method_names()
    return parts


def add_extra_commands(subparsers: Any) -> None:
    """Register ``sanity`` and ``bench synthetic`` on the CLI's subparsers."""
    from camscope.methods.registry import method_names

    names = ", ".join(method_names())

    # ---- camscope sanity -------------------------------------------------------------------
    sa = subparsers.add_parser(
        "sanity",
        help="model-parameter randomisation test (Adebayo et al. 2018): do the maps depend on the weights?",
        description="Cascading model-parameter randomisation (Adebayo et al. 2018, 'Sanity Checks "
        "for Saliency Maps'): re-initialise the model from the classifier down, recompute the maps "
        "for the originally predicted class and compare them with the originals (Spearman rank "
        "correlation, SSIM). A method whose maps barely change fails. Writes DIR/sanity.json, "
        "sanity.csv, sanity.png.",
    )
    sa.add_argument("images", nargs="*", help="image files and/or folders (not with --synthetic)")
    sa.add_argument("--out", required=True, help="output directory")
    sa.add_argument(
        "--synthetic",
        action="store_true",
        help="run offline on camscope's synthetic scenes and their small trained CNN (cached)",
    )
    from camscope.cli import _add_model_args

    _add_model_args(sa)
    g = sa.add_argument_group("test")
    g.add_argument(
        "--methods",
        default="gradcam,ablationcam,scorecam",
        help=f"comma-separated, or 'all' (choices: {names}; default: gradcam,ablationcam,scorecam)",
    )
    g.add_argument(
        "--groups",
        help="cascade steps, top first, comma-separated module names (default: the model's "
        "top-level blocks, e.g. fc,layer4,layer3,layer2,layer1,bn1,conv1 for a ResNet)",
    )
    g.add_argument("--n-images", type=int, default=8, help="images used (the first N found; default 8)")
    g.add_argument("--seed", type=int, default=0, help="seed of the re-initialisation (default 0)")
    g.add_argument("--batch-size", type=int, default=None, help="rows per forward of Score-/Ablation-CAM")
    g.add_argument("--cache-dir", help="--synthetic: model cache folder (default ~/.cache/camscope/synthetic)")
    g.add_argument("--check", action="store_true", help="exit with 1 when a method fails")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    sa.set_defaults(func=cmd_sanity)

    # ---- camscope bench synthetic ----------------------------------------------------------
    be = subparsers.add_parser("bench", help="built-in benchmarks (bench synthetic)")
    bsub = be.add_subparsers(dest="bench_command", required=True)
    bs = bsub.add_parser(
        "synthetic",
        help="localisation ground truth: pointing game and energy-in-mask on generated scenes",
        description="Train (or load the cached) small CNN on generated scenes with known object "
        "masks and report, per method, the pointing game (tolerance 0 px) and the share of map "
        "energy inside the object vs. the object's area. Works offline.",
    )
    bs.add_argument("--n-scenes", type=int, default=200, help="held-out scenes (default 200)")
    bs.add_argument("--model", dest="synthetic_model", choices=("cnn", "vit"), default="cnn",
                    help="the small CNN (default) or the small vision transformer, trained on the scenes")
    bs.add_argument("--layer", help="target layer (default: the model's: features / the last block's ln_1)")
    bs.add_argument("--methods", default="all", help=f"comma-separated, or 'all' (default; {names})")
    bs.add_argument(
        "--smooth",
        action="append",
        default=[],
        metavar="SPEC",
        help="add a smoothed variant: eigen, aug or 'eigen,aug' (repeatable)",
    )
    from camscope.bench_synthetic import DEFAULT_SEED

    bs.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of the held-out scenes (default {DEFAULT_SEED})")
    bs.add_argument("--out", help="write DIR/bench_synthetic.json and DIR/bench_synthetic.md")
    bs.add_argument("--json", dest="json_file", metavar="FILE", help="write the results as JSON")
    bs.add_argument("--markdown", action="store_true", help="print a markdown table instead of plain text")
    bs.add_argument("--cache-dir", help="model cache folder (default ~/.cache/camscope/synthetic)")
    bs.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")
    bs.add_argument("--batch-size", type=int, default=None, help="rows per forward of Score-/Ablation-CAM")
    bs.add_argument("--check", action="store_true", help="exit with 1 when a method misses the targets")
    bs.add_argument("--quiet", action="store_true", help="no progress bars")
    bs.set_defaults(func=cmd_bench_synthetic)


# --------------------------------------------------------------------------------------------


def _load_images(paths: list[str], loaded: Any, n: int) -> tuple[Any, list[str]]:
    """Stack up to ``n`` usable images (bad ones skipped with a one-line message)."""
    import torch

    from camscope.io.images import find_images, load_image

    found = find_images(paths)
    if not found:
        raise UsageError(f"no images found in {', '.join(paths)}")
    tensors, names = [], []
    for item in found:
        if len(tensors) >= n:
            break
        try:
            tensors.append(loaded.preprocess.to_tensor(load_image(item.path)))
            names.append(item.rel)
        except CamscopeError as exc:
            logger.warning("skipped %s", exc)
    if not tensors:
        raise UsageError("none of the images could be loaded")
    return torch.stack(tensors), names


def cmd_sanity(args: argparse.Namespace) -> int:
    """``camscope sanity``."""
    import torch

    from camscope.pipeline import pick_device
    from camscope.sanity import run_sanity

    if args.n_images < 1:
        raise UsageError(f"--n-images must be at least 1, not {args.n_images}")
    device = pick_device(args.device)
    methods = _methods(args.methods)
    groups = _split(args.groups)
    info: dict[str, Any] = {}
    if args.synthetic:
        from camscope import synthetic as S

        if args.images:
            raise UsageError("--synthetic uses generated scenes; give no IMAGES with it")
        model = S.load_or_train(args.cache_dir, device=device, progress=not args.quiet)
        scenes = S.make_scenes(args.n_images, seed=4242)
        images = S.normalize(scenes.images)
        layer = args.layer or S.TARGET_LAYER
        info = {"model": f"SmallCNN v{S.VERSION} (synthetic scenes)", "images": "make_scenes seed 4242"}
    else:
        from camscope.models import load_model

        if not args.images:
            raise UsageError("give IMAGES (files or folders), or --synthetic")
        loaded = load_model(
            args.model,
            weights_tag=args.weights_tag,
            weights_file=args.weights_file,
            preprocess=args.preprocess,
            device=device,
            trust_checkpoint=args.trust_checkpoint,
            progress=not args.quiet,
            input_size=args.input_size,
            mean=args.mean,
            std=args.std,
            trust_remote_code=args.trust_remote_code,
        )
        if loaded.weights.startswith("random"):
            logger.warning(
                "the model has random weights: the randomisation test compares a random model "
                "with random models and says nothing; pass --weights FILE or a weights tag"
            )
        images, names = _load_images(args.images, loaded, args.n_images)
        model, layer = loaded.model, args.layer
        info = {"model": loaded.name, "weights": loaded.weights, "images": names}
    with torch.no_grad():
        images = images.to(device)
    result = run_sanity(
        model,
        images,
        layer=layer,
        methods=methods,
        groups=groups,
        seed=args.seed,
        progress=not args.quiet,
        batch_size=args.batch_size,
        reshape=args.reshape,
    )
    result.info = info
    paths = result.save(args.out)
    sys.stdout.write(result.text() + "\n")
    logger.info("sanity: wrote %s", ", ".join(str(p) for p in paths.values()))
    if args.check and not all(result.passed.values()):
        return 1
    return 0


def cmd_bench_synthetic(args: argparse.Namespace) -> int:
    """``camscope bench synthetic``."""
    from camscope.bench_synthetic import run_synthetic_benchmark
    from camscope.pipeline import pick_device

    table = run_synthetic_benchmark(
        n_scenes=args.n_scenes,
        seed=args.seed,
        methods=_methods(args.methods),
        smoothing=args.smooth,
        cache_dir=args.cache_dir,
        device=pick_device(args.device),
        progress=not args.quiet,
        batch_size=args.batch_size,
        model_kind=args.synthetic_model,
        layer=args.layer,
    )
    sys.stdout.write(table.to_markdown() if args.markdown else table.to_text())
    if args.out:
        paths = table.save(args.out)
        logger.info("bench synthetic: wrote %s", ", ".join(str(p) for p in paths.values()))
    if args.json_file:
        table.save_json(Path(args.json_file))
    if args.check and not table.all_passed:
        return 1
    return 0
