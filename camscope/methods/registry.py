"""The method registry: every CAM method is registered exactly once, with its metadata.

The built-in methods register when ``camscope.methods`` is imported (which importing this
module does). The CLI choices, the README method table and the parametrised tests all read
``METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from camscope.errors import UsageError

__all__ = [
    "MethodSpec", "METHODS", "register", "get_method", "method_names", "methods_for", "methods_markdown",
]

WeightFn = Callable[..., Tensor]


@dataclass(frozen=True)
class MethodSpec:
    """A registered CAM method.

    ``fn(cap, rt)`` returns channel weights (R,K) or element weights (R,K,h,w); the engine forms
    ``w * A``, reduces over channels (``reduce="sum"``, or ``"pca"``: first principal component)
    and hands the result to ``core.postprocess.finalize``.

    ``output="map"``: ``fn`` returns raw maps (R,h,w) at any resolution (an attention method's
    token grid, a pixel-level map from the input gradient); the engine skips ``w * A`` and hands
    them to ``finalize`` (ReLU, upsampling, normalisation) as they are.

    ``applies_to(model)`` returns None when the method can explain ``model``, else the one-line
    reason it cannot (e.g. "needs attention blocks"); None (the default) means every model.

    ``pixel_level``: the maps have detail down to single pixels (from the input gradient); they
    are drawn without the overlay's smoothing colour wash (``render.overlay(pixel_level=True)``).
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
    output: str = "weights"
    applies_to: Callable[[Any], str | None] | None = None
    pixel_level: bool = False

    def passes(self) -> str:
        """Passes per image, as the method table prints them."""
        if self.forward_passes != "0":
            return self.forward_passes
        return "1 fwd + 1 bwd to layer" if self.needs_gradients else "1 fwd"

    def refusal(self, model: Any) -> str | None:
        """Why this method cannot explain ``model`` (one line), or None when it can."""
        return None if self.applies_to is None else self.applies_to(model)


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
    output: str = "weights",
    applies_to: Callable[[Any], str | None] | None = None,
    pixel_level: bool = False,
) -> Callable[[WeightFn], WeightFn]:
    """Decorator registering a weight function under ``name``."""
    if reduce not in ("sum", "pca"):
        raise ValueError(f"reduce must be 'sum' or 'pca', not {reduce!r}")
    if output not in ("weights", "map"):
        raise ValueError(f"output must be 'weights' or 'map', not {output!r}")

    def deco(fn: WeightFn) -> WeightFn:
        if name in METHODS or name in _ALIASES:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = MethodSpec(
            name, title, fn, paper, url, equation, needs_gradients, forward_passes, reduce, aliases,
            output, applies_to, pixel_level,
        )
        for alias in aliases:
            _ALIASES[alias] = name
        return fn

    return deco


def method_names() -> list[str]:
    """All registered method names, in registration order."""
    return list(METHODS)


def methods_for(model: Any = None) -> list[str]:
    """Names of the methods that can explain ``model`` (``applies_to`` says nothing against it),
    in registration order; without a model, those that apply to every model."""
    if model is None:
        return [n for n, s in METHODS.items() if s.applies_to is None]
    return [n for n, s in METHODS.items() if s.refusal(model) is None]


def get_method(name: str) -> MethodSpec:
    """Look a method up by name or alias (case-insensitive)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in METHODS:
        raise UsageError(f"unknown method {name!r}; choose from: {', '.join(METHODS)}")
    return METHODS[key]


def methods_markdown() -> str:
    """The method table of the README (``camscope methods --markdown``), from the registry."""
    lines = [
        "| `--methods` name | method | paper | weights (equation) | passes per image |",
        "|---|---|---|---|---|",
    ]
    for s in METHODS.values():
        lines.append(f"| `{s.name}` | {s.title} | [{s.paper}]({s.url}) | {s.equation} | {s.passes()} |")
    return "\n".join(lines)
