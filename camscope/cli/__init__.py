"""Command-line interface: ``camscope explain|demo|report|sanity|bench|methods|models``.

One module per command (each with ``register(subparsers)``); the options several commands share
are declared once in :mod:`camscope.cli.args`. Errors the user can fix are printed as one line
(``camscope: error: ...``) with exit code 2; a run in which some images failed exits with 1
after finishing the others.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from camscope.errors import CamscopeError

__all__ = ["main", "build_parser", "COMMAND_MODULES"]

logger = logging.getLogger("camscope")

COMMAND_MODULES = ("explain", "report", "sanity", "bench", "listings")
"""Modules of ``camscope.cli`` that register commands, in ``--help`` order."""


def build_parser() -> argparse.ArgumentParser:
    from camscope import __version__

    parser = argparse.ArgumentParser(
        prog="camscope",
        description="Explain what an image classifier looked at: class activation maps, measured.",
    )
    parser.add_argument("--version", action="version", version=f"camscope {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"camscope.cli.{name}").register(sub)
    return parser


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
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the command line as given (a benchmark prints it beside its table)
    _configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except CamscopeError as exc:
        sys.stderr.write(f"camscope: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("camscope: interrupted; re-run the same command to resume\n")
        return 130
