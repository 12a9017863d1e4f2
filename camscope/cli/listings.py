"""``camscope methods``, ``camscope metrics`` and ``camscope models``: what can be chosen."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    me = subparsers.add_parser("methods", help="list the registered CAM methods")
    me.add_argument("--markdown", action="store_true", help="print the README's method table")
    me.add_argument("--model", metavar="NAME",
                    help="only the methods that can explain this model (as --model of explain; built "
                    "with random weights, nothing downloaded), then the others with the reason")
    me.add_argument("--trust-remote-code", action="store_true",
                    help="Hugging Face models only: allow the model repository's own Python code to run")
    me.set_defaults(func=cmd_methods)
    mt = subparsers.add_parser("metrics", help="list the registered metrics of camscope report --metrics")
    mt.add_argument("--markdown", action="store_true", help="print the README's metric table")
    mt.set_defaults(func=cmd_metrics)
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
    if args.model is None:
        for spec in METHODS.values():
            sys.stdout.write(f"{spec.name:24s} {spec.title:38s} {spec.paper}\n")
        return 0
    import logging

    from camscope.models import load_model

    log = logging.getLogger("camscope")
    level = log.level
    log.setLevel(logging.ERROR)  # warnings about random weights do not matter here
    try:
        model = load_model(args.model, weights_tag="none", progress=False, trust_remote_code=args.trust_remote_code).model
    finally:
        log.setLevel(level)
    refused = {name: spec.refusal(model) for name, spec in METHODS.items()}
    for name, spec in METHODS.items():
        if refused[name] is None:
            sys.stdout.write(f"{spec.name:24s} {spec.title:38s} {spec.paper}\n")
    others = [(name, why) for name, why in refused.items() if why is not None]
    if others:
        sys.stdout.write(f"\nnot for {args.model}:\n")
        for name, why in others:
            sys.stdout.write(f"  {name:22s} {why}\n")
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from camscope.metrics.registry import CATEGORIES, METRICS, metrics_markdown

    if args.markdown:
        sys.stdout.write(metrics_markdown() + "\n")
        return 0
    order = {c: i for i, c in enumerate(CATEGORIES)}
    for m in sorted(METRICS.values(), key=lambda m: order[m.category]):
        mark = "*" if m.default else " "
        sys.stdout.write(f"{mark} {m.category:14s} {m.name:28s} {m.title:40s} {m.direction:6s} {m.cost}\n")
    sys.stdout.write("(* = in the default set of camscope report; --metrics NAME,CATEGORY,all selects)\n")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from camscope.models import list_models

    sys.stdout.write("\n".join(list_models(args.source, args.pattern)) + "\n")
    return 0
