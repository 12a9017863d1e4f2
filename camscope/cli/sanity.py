"""``camscope sanity``: the model-parameter randomisation test (Adebayo et al. 2018).

    camscope sanity IMAGES... --out DIR [--model resnet50 --weights FILE --layer L --methods M
                    --groups fc,layer4,... --n-images N --seed S --device D --quiet --check]
    camscope sanity --synthetic --out DIR [--n-images N ...]

Results (the summary lines, the table) go to stdout; diagnostics go through ``logging``.
Exit codes: 0 done (with ``--check``: and every method passed); 1 ``--check`` and some method
failed; 2 user error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from camscope.cli.args import (
    add_methods_arg,
    add_model_args,
    add_quiet_arg,
    add_speed_args,
    model_from_args,
    speed_from_args,
)
from camscope.errors import CamscopeError, UsageError
from camscope.io.rundir import is_random_weights

__all__ = ["register"]

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
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
    add_model_args(sa)
    g = sa.add_argument_group("test")
    add_methods_arg(g)
    g.add_argument(
        "--groups",
        help="cascade steps, top first, comma-separated module names (default: the model's "
        "top-level blocks, e.g. fc,layer4,layer3,layer2,layer1,bn1,conv1 for a ResNet)",
    )
    g.add_argument("--n-images", type=int, default=8, help="images used (the first N found; default 8)")
    g.add_argument("--seed", type=int, default=0, help="seed of the re-initialisation (default 0)")
    add_speed_args(g, batch_only=True)
    g.add_argument("--cache-dir", help="--synthetic: model cache folder (default ~/.cache/camscope/synthetic)")
    g.add_argument("--check", action="store_true", help="exit with 1 when a method fails")
    add_quiet_arg(g)
    sa.set_defaults(func=cmd_sanity)


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

    from camscope.models import pick_device
    from camscope.studies.randomization import run_sanity

    if args.n_images < 1:
        raise UsageError(f"--n-images must be at least 1, not {args.n_images}")
    device = pick_device(args.device)
    groups = [p.strip() for p in (args.groups or "").split(",") if p.strip()] or None
    info: dict[str, Any] = {}
    if args.synthetic:
        from camscope.studies import synthetic as S

        if args.images:
            raise UsageError("--synthetic uses generated scenes; give no IMAGES with it")
        model = S.load_or_train(args.cache_dir, device=device, progress=not args.quiet)
        scenes = S.make_scenes(args.n_images, seed=4242)
        images = S.normalize(scenes.images)
        layer = args.layer or S.TARGET_LAYER
        info = {"model": f"SmallCNN v{S.VERSION} (synthetic scenes)", "images": "make_scenes seed 4242"}
    else:
        if not args.images:
            raise UsageError("give IMAGES (files or folders), or --synthetic")
        loaded = model_from_args(args).load(device, progress=not args.quiet)
        if is_random_weights(loaded.weights):
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
        methods=args.methods,
        groups=groups,
        seed=args.seed,
        progress=not args.quiet,
        speed=speed_from_args(args),
        reshape=args.reshape,
    )
    result.info = info
    paths = result.save(args.out)
    sys.stdout.write(result.text() + "\n")
    logger.info("sanity: wrote %s", ", ".join(str(p) for p in paths.values()))
    if args.check and not all(result.passed.values()):
        return 1
    return 0
