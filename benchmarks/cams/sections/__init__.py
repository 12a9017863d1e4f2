"""The benchmark's sections, one module each, registered with :func:`section`.

A section is a function ``run(bench)`` that measures with the shared
:class:`~cams.context.Bench`, appends its :class:`~cams.common.Table` s to ``bench.tables`` and
its headline numbers to ``bench.summary``; the entry point prints the tables after each section
and rewrites the reports. To add one, add a module here::

    from ..common import Table, Target
    from . import section

    @section("my-section", order=70, targets=[Target("my_key", "what it is", ">=", 2.0)])
    def my_section(bench):
        ...
        bench.summary["my_key"] = value

Every module of this package is imported by :func:`sections`, so nothing else needs changing
(new command-line options go to ``cams/cli.py``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..common import Target

if TYPE_CHECKING:
    from ..context import Bench


@dataclass(frozen=True)
class Section:
    name: str  # on the command line (--sections)
    run: Callable[[Bench], None]
    order: int  # place in the default run and in --help
    needs_photos: bool  # preprocessed photos (bench.photos) loaded and the model warmed up first
    targets: tuple[Target, ...]  # the targets this section measures, in the targets table


_REGISTRY: dict[str, Section] = {}


def section(
    name: str, *, order: int, needs_photos: bool = False, targets: Sequence[Target] = ()
) -> Callable[[Callable[[Bench], None]], Callable[[Bench], None]]:
    """Register ``run(bench)`` as the section ``name``."""

    def register(run: Callable[[Bench], None]) -> Callable[[Bench], None]:
        if name in _REGISTRY:
            raise ValueError(f"section {name!r} registered twice")
        _REGISTRY[name] = Section(name, run, order, needs_photos, tuple(targets))
        return run

    return register


def sections() -> dict[str, Section]:
    """Every section, in order (importing the modules of this package registers them)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return dict(sorted(_REGISTRY.items(), key=lambda kv: kv[1].order))
