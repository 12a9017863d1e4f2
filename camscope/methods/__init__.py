"""CAM methods. Importing this package registers the built-in ones, in table order.

A method is a function ``fn(cap, rt) -> weights`` registered with ``@register(...)``
(:mod:`camscope.methods.registry`); see the README, "Adding a method".
"""

import importlib

from camscope.methods.registry import (
    METHODS,
    MethodSpec,
    get_method,
    method_names,
    methods_markdown,
    register,
)

BUILTIN_MODULES = (
    "gradient", "eigen", "perturbation",
    "gradient_variants", "projection", "score_family", "multilayer", "pixel", "baseline", "attention",
)
"""Modules of the built-in methods; their import order is the order of the method table."""

for _module in BUILTIN_MODULES:
    importlib.import_module(f"camscope.methods.{_module}")

__all__ = ["METHODS", "MethodSpec", "get_method", "method_names", "methods_markdown", "register", "BUILTIN_MODULES"]
