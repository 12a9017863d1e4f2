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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from camscope.errors import UsageError
from camscope.metrics.inputs import MetricInputs

__all__ = [
    "CATEGORIES",
    "METRICS",
    "NEEDS",
    "UNITS",
    "Column",
    "MetricFn",
    "MetricSpec",
    "get_metric",
    "metric_names",
    "metrics_in",
    "metrics_markdown",
    "all_columns",
    "call_metric",
    "register_metric",
    "unregister_metric",
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

UNITS: tuple[str, ...] = ("", "fraction", "percent", "bool")
"""How a column's value reads: a plain number (3 decimals), a fraction shown as %, a value
already in %, or a yes/no flag (stored as 0/1, the per-photo record keeps a bool)."""


@dataclass(frozen=True)
class Column:
    """One value a metric returns: a column of ``metrics.csv`` and a row of the report's tables.

    Attributes:
        key: the returned key (unique across all metrics).
        title: the label in the report.
        direction: ``"higher"`` / ``"lower"`` is better.
        ranked: enters the ranking of its category (False for a derived value, such as the
            insertion - deletion gap, that would count a measurement twice).
        unit: one of ``UNITS``.
    """

    key: str
    title: str
    direction: str
    ranked: bool = True
    unit: str = ""

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "higher"


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
        default: measured by ``camscope report`` without ``--metrics``. False unless the
            registration says so: a new metric is opt-in (``--metrics NAME``, its category or
            ``all``), so that the default report keeps its cost.
        columns: one :class:`Column` per key (title, direction, ranked, unit).
        extras: per-map JSON values the function also returns (curves), kept in the per-photo
            record and not in ``metrics.csv``: a sequence of M JSON-ready values per extra key.
        seeded: the values depend on ``MetricInputs.seed`` (the seed is then part of the cache
            key and the report checks the ranking's stability across seeds).
        sweep: the main hyperparameter and the other values the report's stability check tries
            (``("steps", (12, 50))``); None: no sweep.
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
    default: bool = False
    columns: tuple[Column, ...] = ()
    extras: tuple[str, ...] = ()
    seeded: bool = False
    sweep: tuple[str, tuple[Any, ...]] | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "higher"

    @property
    def model_based(self) -> bool:
        """Needs the model (or re-explaining): costly, so its values are cached per map."""
        return bool(self.needs & {"model", "explain"})

    def resolved(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The registration's params with ``overrides`` applied (unknown names refused)."""
        overrides = dict(overrides or {})
        bad = sorted(set(overrides) - set(self.params))
        if bad:
            raise UsageError(
                f"metric {self.name!r} has no parameter {', '.join(map(repr, bad))}; "
                f"its parameters: {', '.join(self.params) or 'none'}"
            )
        return {**self.params, **overrides}


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
    default: bool = False,
    columns: Mapping[str, Mapping[str, Any]] | None = None,
    extras: tuple[str, ...] = (),
    seeded: bool = False,
    sweep: tuple[str, Sequence[Any]] | None = None,
) -> Callable[[MetricFn], MetricFn]:
    """Decorator registering a metric function under ``name``.

    ``columns`` optionally describes each key (``{"insertion_auc": {"title": "Insertion AUC",
    "direction": "higher"}}``: title, direction, ranked, unit); a key without an entry gets the
    metric's ``title`` (or the key) and ``direction``. See :class:`MetricSpec` for the rest.
    """
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, not {category!r}")
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction must be 'higher' or 'lower', not {direction!r}")
    bad = set(needs) - set(NEEDS)
    if bad:
        raise ValueError(f"unknown needs {sorted(bad)}; choose from {NEEDS}")

    all_keys = tuple(keys or (name,))
    info = dict(columns or {})
    unknown = sorted(set(info) - set(all_keys))
    if unknown:
        raise ValueError(f"columns {unknown} are not among the keys {all_keys}")
    cols = []
    for key in all_keys:
        c = dict(info.get(key) or {})
        c.setdefault("title", title if len(all_keys) == 1 else key)
        c.setdefault("direction", direction)
        if c["direction"] not in ("higher", "lower"):
            raise ValueError(f"{key}: direction must be 'higher' or 'lower', not {c['direction']!r}")
        if c.get("unit", "") not in UNITS:
            raise ValueError(f"{key}: unit must be one of {UNITS}, not {c['unit']!r}")
        cols.append(Column(key, **c))
    if sweep is not None and sweep[0] not in (params or {}):
        raise ValueError(f"sweep parameter {sweep[0]!r} is not among the params {sorted(params or {})}")

    def deco(fn: MetricFn) -> MetricFn:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        taken = {c.key: m.name for m in METRICS.values() for c in m.columns}
        clash = [k for k in all_keys if k in taken]
        if clash:
            raise ValueError(f"metric {name!r}: keys {clash} are already returned by {taken[clash[0]]!r}")
        METRICS[name] = MetricSpec(
            name, title, fn, category, direction, paper, url, equation, all_keys,
            frozenset(needs), cost, dict(params or {}), default, tuple(cols), tuple(extras), seeded,
            None if sweep is None else (sweep[0], tuple(sweep[1])),
        )
        return fn

    return deco


def unregister_metric(name: str) -> None:
    """Remove a registration (tests that register an example metric clean up with it)."""
    METRICS.pop(name, None)


def all_columns(specs: Sequence[MetricSpec] | None = None) -> list[tuple[MetricSpec, Column]]:
    """(metric, column) of every column of ``specs`` (default: every registered metric), in
    category order, then registration order."""
    specs = list(METRICS.values()) if specs is None else list(specs)
    order = {c: i for i, c in enumerate(CATEGORIES)}
    specs.sort(key=lambda m: order[m.category])
    return [(m, c) for m in specs for c in m.columns]


def metrics_markdown() -> str:
    """The README's metric table (``camscope metrics --markdown``), from the registry, by category."""
    order = {c: i for i, c in enumerate(CATEGORIES)}
    lines = [
        "| category | `--metrics` name | metric | paper | better | needs | cost per map | default |",
        "|---|---|---|---|---|---|---|:---:|",
    ]
    for m in sorted(METRICS.values(), key=lambda m: order[m.category]):
        needs = ", ".join(sorted(m.needs)) or "the maps"
        paper = f"[{m.paper}]({m.url})" if m.url else m.paper
        lines.append(
            f"| {m.category} | `{m.name}` | {m.title} | {paper} | {m.direction} | {needs} | {m.cost} | "
            f"{'yes' if m.default else ''} |"
        )
    return "\n".join(lines)


def call_metric(spec: MetricSpec, inputs: MetricInputs, maps: Tensor) -> dict[str, list[Any]]:
    """Run ``spec.fn`` on (M,H,W) ``maps`` and check what it returns against the registration:
    every key an (M,) tensor (or M numbers), every extra M values. Returns key -> M Python
    values (floats, NaN where undefined; extras as the function gave them)."""
    import torch

    m = int(maps.shape[0])
    out = spec.fn(inputs, maps)
    if not isinstance(out, Mapping):
        raise TypeError(f"metric {spec.name!r} returned {type(out).__name__}, not a dict of (M,) tensors")
    missing = [k for k in (*spec.keys, *spec.extras) if k not in out]
    if missing:
        raise ValueError(f"metric {spec.name!r} did not return {missing} (it declares keys {list(spec.keys)})")
    values: dict[str, list[Any]] = {}
    for k in spec.keys:
        v = torch.as_tensor(out[k]).detach().to("cpu", torch.float64).reshape(-1)
        if v.numel() != m:
            raise ValueError(f"metric {spec.name!r}: {k!r} has {v.numel()} values for {m} maps")
        values[k] = [float(x) for x in v.tolist()]
    for k in spec.extras:
        seq = list(out[k])
        if len(seq) != m:
            raise ValueError(f"metric {spec.name!r}: extra {k!r} has {len(seq)} values for {m} maps")
        values[k] = seq
    return values


def metric_names() -> list[str]:
    """All registered metric names, in registration order."""
    return list(METRICS)


def get_metric(name: str) -> MetricSpec:
    """Look a metric up by name (case-insensitive)."""
    key = name.strip().lower()
    if key not in METRICS:
        raise UsageError(
            f"--metrics: unknown metric or category {name!r}; choose from: all, default, "
            f"{', '.join(c for c in CATEGORIES if any(m.category == c for m in METRICS.values()))}, "
            f"{', '.join(METRICS)}"
        )
    return METRICS[key]


def metrics_in(selection: str | Sequence[str] | None) -> list[MetricSpec]:
    """The metrics a ``--metrics`` value selects: comma-separated names and categories (or a
    list of them), ``all``, or None / ``default`` for the default set; registration order."""
    if isinstance(selection, str):
        selection = selection.split(",")
    parts = [p.strip().lower() for p in selection or () if p.strip()]
    if not parts:
        parts = ["default"]
    chosen: dict[str, MetricSpec] = {}
    for part in parts:
        if part == "all":
            chosen.update(METRICS)
        elif part == "default":
            chosen.update({m.name: m for m in METRICS.values() if m.default})
        elif part in CATEGORIES:
            chosen.update({m.name: m for m in METRICS.values() if m.category == part})
        else:
            chosen[get_metric(part).name] = get_metric(part)
    return [m for m in METRICS.values() if m.name in chosen]
