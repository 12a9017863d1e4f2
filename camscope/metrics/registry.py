"""The metric registry: every measurement of a map is registered once, with its metadata.

A metric is one function and one registration::

    @register_metric(
        "sparseness", title="Sparseness (Gini index)", category="complexity", direction="higher",
        paper="Chalasani et al., ICML 2020", url="https://arxiv.org/abs/1810.06583",
        equation="G = sum_i (2i - n - 1) a_(i) / (n sum_i a_(i))", keys=("sparseness",),
    )
    def sparseness(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
        ...

``fn`` follows :mod:`camscope.metrics.inputs`: (M,H,W) maps of one photo and target in, one (M,)
tensor per declared key out. The report, ``metrics.csv``, ``summary.json``, the findings, the
explorer and ``camscope.evaluate`` read ``METRICS``; nothing else lists metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from camscope.errors import UsageError
from camscope.metrics.inputs import MetricInputs

__all__ = [
    "CATEGORIES",
    "METRICS",
    "NEEDS",
    "MetricFn",
    "MetricSpec",
    "get_metric",
    "metric_names",
    "metrics_in",
    "register_metric",
]

MetricFn = Callable[[MetricInputs, Tensor], Mapping[str, Tensor]]

CATEGORIES: tuple[str, ...] = (
    "faithfulness",
    "robustness",
    "localisation",
    "complexity",
    "randomisation",
    "axiomatic",
    "agreement",
)
"""Quantus's six categories (Hedström et al., JMLR 2023), plus agreement between methods."""

NEEDS: tuple[str, ...] = ("model", "explain", "region")
"""What a metric may need besides the maps (see :class:`MetricInputs`)."""


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric.

    Attributes:
        name: registry name (``--metrics`` accepts it, its category, or ``all``).
        keys: the values ``fn`` returns (columns of ``metrics.csv``); the first is the one the
            report ranks methods by.
        direction: ``"higher"`` or ``"lower"`` is better (of the first key).
        needs: subset of ``NEEDS``.
        cost: what one map costs, in words (e.g. ``"2 (steps + 1) forwards"``).
        params: default hyperparameters (overridable; part of the cache key).
        default: measured by ``camscope report`` without ``--metrics``.
    """

    name: str
    title: str
    fn: MetricFn
    category: str
    direction: str
    paper: str
    url: str
    equation: str = ""
    keys: tuple[str, ...] = ()
    needs: frozenset[str] = frozenset()
    cost: str = "0 forwards"
    params: Mapping[str, Any] = field(default_factory=dict)
    default: bool = True

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "higher"


METRICS: dict[str, MetricSpec] = {}


def register_metric(
    name: str,
    *,
    title: str,
    category: str,
    direction: str,
    paper: str,
    url: str,
    equation: str = "",
    keys: tuple[str, ...] | None = None,
    needs: tuple[str, ...] = (),
    cost: str = "0 forwards",
    params: Mapping[str, Any] | None = None,
    default: bool = True,
) -> Callable[[MetricFn], MetricFn]:
    """Decorator registering a metric function under ``name``."""
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, not {category!r}")
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction must be 'higher' or 'lower', not {direction!r}")
    bad = set(needs) - set(NEEDS)
    if bad:
        raise ValueError(f"unknown needs {sorted(bad)}; choose from {NEEDS}")

    def deco(fn: MetricFn) -> MetricFn:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        METRICS[name] = MetricSpec(
            name, title, fn, category, direction, paper, url, equation, tuple(keys or (name,)),
            frozenset(needs), cost, dict(params or {}), default,
        )
        return fn

    return deco


def metric_names() -> list[str]:
    """All registered metric names, in registration order."""
    return list(METRICS)


def get_metric(name: str) -> MetricSpec:
    """Look a metric up by name (case-insensitive)."""
    key = name.strip().lower()
    if key not in METRICS:
        raise UsageError(f"unknown metric {name!r}; choose from: {', '.join(METRICS)}")
    return METRICS[key]


def metrics_in(selection: str | None) -> list[MetricSpec]:
    """The metrics a ``--metrics`` value selects: comma-separated names and categories,
    ``all``, or None / ``default`` for the default set."""
    if selection is None or selection.strip().lower() in ("", "default"):
        return [m for m in METRICS.values() if m.default]
    chosen: dict[str, MetricSpec] = {}
    for part in (p.strip().lower() for p in selection.split(",") if p.strip()):
        if part == "all":
            chosen.update(METRICS)
        elif part == "default":
            chosen.update({m.name: m for m in METRICS.values() if m.default})
        elif part in CATEGORIES:
            chosen.update({m.name: m for m in METRICS.values() if m.category == part})
        else:
            chosen[get_metric(part).name] = get_metric(part)
    return list(chosen.values())
