"""Old module paths of camscope, kept importable for a release with a ``DeprecationWarning``.

The modules below moved into packages (the run, rendering, scale-out, studies, the model split).
Importing an old path returns the new module itself (the same object, so ``isinstance`` checks
and monkeypatching agree) and warns once, naming the new path. No file stays at the old path:
the finder answers only for these exact names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED: dict[str, str] = {
    "camscope.pipeline": "camscope.run",
    "camscope.distributed": "camscope.scale",
    "camscope.display": "camscope.render.notebook",
    "camscope.smoothing": "camscope.core.smoothing",
    "camscope.synthetic": "camscope.studies.synthetic",
    "camscope.synthetic_vit": "camscope.studies.synthetic_vit",
    "camscope.bench_synthetic": "camscope.studies.benchmark",
    "camscope.sanity": "camscope.studies.randomization",
    "camscope.core.tail": "camscope.core.split",
    "camscope.core.engine": "camscope.engine",
}
"""Old module path -> the module (or package) that now holds its public names."""


class _MovedModuleLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} is deprecated; import {new} instead", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """The new module is already executed."""


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedModuleLoader())


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())
