"""``camscope bench synthetic``: localisation ground truth on generated scenes.

    camscope bench synthetic [--n-scenes 200 --methods M --smooth S --out DIR --json FILE
                              --markdown --check]

Exit codes: 0 done (with ``--check``: and every method met the targets); 1 ``--check`` and some
method missed them; 2 user error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from camscope.cli.args import (
    add_device_arg,
    add_methods_arg,
    add_quiet_arg,
    add_smooth_arg,
    add_speed_args,
    speed_from_args,
)

__all__ = ["register"]

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    from camscope.studies.benchmark import DEFAULT_SEED

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
    add_methods_arg(bs, default="all")
    add_smooth_arg(bs)
    bs.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of the held-out scenes (default {DEFAULT_SEED})")
    bs.add_argument("--seeds", type=int, default=1, metavar="N",
                    help="train the model with seeds 0..N-1 and report each method's mean and "
                    "min-max over them (default 1: seed 0 alone); trained weights differ from "
                    "machine to machine, the spread is what a run elsewhere falls in")
    bs.add_argument("--out", help="write DIR/bench_synthetic.json and DIR/bench_synthetic.md")
    bs.add_argument("--json", dest="json_file", metavar="FILE", help="write the results as JSON")
    bs.add_argument("--markdown", action="store_true", help="print a markdown table instead of plain text")
    bs.add_argument("--cache-dir", help="model cache folder (default ~/.cache/camscope/synthetic)")
    add_device_arg(bs, default="cpu")
    add_speed_args(bs, batch_only=True)
    bs.add_argument("--check", action="store_true", help="exit with 1 when a method misses the targets")
    add_quiet_arg(bs)
    bs.set_defaults(func=cmd_bench_synthetic)


def cmd_bench_synthetic(args: argparse.Namespace) -> int:
    """``camscope bench synthetic``."""
    import shlex

    from camscope.errors import UsageError
    from camscope.models import pick_device
    from camscope.studies.benchmark import run_synthetic_benchmark, run_synthetic_seeds

    if args.seeds < 1:
        raise UsageError(f"--seeds must be at least 1, not {args.seeds}")
    run: Any = run_synthetic_benchmark
    extra: dict[str, Any] = {}
    if args.seeds > 1:
        run = run_synthetic_seeds
        extra = {"seeds": range(args.seeds), "command": "camscope " + shlex.join(args.argv or [])}
    table = run(
        **extra,
        n_scenes=args.n_scenes,
        seed=args.seed,
        methods=args.methods,
        smoothing=args.smoothing,
        cache_dir=args.cache_dir,
        device=pick_device(args.device),
        progress=not args.quiet,
        speed=speed_from_args(args),
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
