"""The method registry: every CAM method is registered exactly once, here, with its metadata.

The CLI choices, the README method table and the parametrised tests all read ``METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from camscope.errors import UsageError

__all__ = ["MethodSpec", "METHODS", "register", "get_method", "method_names"]

WeightFn = Callable[..., Tensor]


@dataclass(frozen=True)
class MethodSpec:
    """A registered CAM method.

    ``fn(cap, rt)`` returns channel weights (R,K) or element weights (R,K,h,w); the engine forms
    ``w * A``, reduces over channels (``reduce="sum"``, or ``"pca"``: first principal component)
    and hands the result to ``core.postprocess.finalize``.
    """

    name: str
    title: str
    fn: WeightFn
    paper: str
    url: str
    equation: str
    needs_gradients: bool = False
    forward_passes: str = "0"
    reduce: str = "sum"
    aliases: tuple[str, ...] = ()


METHODS: dict[str, MethodSpec] = {}
_ALIASES: dict[str, str] = {}


def register(
    name: str,
    *,
    title: str,
    paper: str,
    url: str,
    equation: str,
    needs_gradients: bool = False,
    forward_passes: str = "0",
    reduce: str = "sum",
    aliases: tuple[str, ...] = (),
) -> Callable[[WeightFn], WeightFn]:
    """Decorator registering a weight function under ``name``."""
    if reduce not in ("sum", "pca"):
        raise ValueError(f"reduce must be 'sum' or 'pca', not {reduce!r}")

    def deco(fn: WeightFn) -> WeightFn:
        if name in METHODS or name in _ALIASES:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = MethodSpec(
            name, title, fn, paper, url, equation, needs_gradients, forward_passes, reduce, aliases
        )
        for alias in aliases:
            _ALIASES[alias] = name
        return fn

    return deco


_BUILTIN = ("gradient", "eigen", "perturbation")  # import order = table order


def _load_builtin() -> None:
    """Import the built-in method modules, which registers their methods."""
    import importlib

    for mod in _BUILTIN:
        importlib.import_module(f"camscope.methods.{mod}")


def method_names() -> list[str]:
    """All registered method names, in registration order."""
    _load_builtin()
    return list(METHODS)


def get_method(name: str) -> MethodSpec:
    """Look a method up by name or alias (case-insensitive)."""
    _load_builtin()
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in METHODS:
        raise UsageError(
            f"unknown method {name!r}; choose from: {', '.join(METHODS)}"
        )
    return METHODS[key]
