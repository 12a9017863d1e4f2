"""``camscope methods`` and ``camscope models``: what can be chosen."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    me = subparsers.add_parser("methods", help="list the registered CAM methods")
    me.add_argument("--markdown", action="store_true", help="print the README's method table")
    me.set_defaults(func=cmd_methods)
    mo = subparsers.add_parser("models", help="list the classifiers --model takes: torchvision's, and timm's when installed")
    mo.add_argument("pattern", nargs="?", help="only names matching this pattern, e.g. 'vit_*'")
    from camscope.models.registry import listing_sources

    sources = listing_sources()
    mo.add_argument("--source", choices=("all", *sources), default="all",
                    help=f"{', '.join(sources)} (with its prefix, e.g. timm/NAME; timm needs camscope[timm]) or all (default)")
    mo.set_defaults(func=cmd_models)


def cmd_methods(args: argparse.Namespace) -> int:
    from camscope.methods import METHODS, methods_markdown

    if args.markdown:
        sys.stdout.write(methods_markdown() + "\n")
        return 0
    for spec in METHODS.values():
        sys.stdout.write(f"{spec.name:24s} {spec.title:38s} {spec.paper}\n")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from camscope.models import list_models

    sys.stdout.write("\n".join(list_models(args.source, args.pattern)) + "\n")
    return 0
