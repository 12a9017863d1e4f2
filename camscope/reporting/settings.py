"""What ``camscope report`` measures: :class:`MeasureSettings`, declared once (the CLI,
``build_report``, ``evaluate_run``, the photo measurer and its Ray workers take it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from camscope.errors import UsageError
from camscope.metrics import MetricSpec, metrics_in
from camscope.metrics.builtin import DEFAULT_STEPS

__all__ = ["DEFAULT_STEPS", "STABILITY_SEEDS", "MeasureSettings", "measure_settings"]

STABILITY_SEEDS = 2
"""Extra seeds (``seed + 1``, ``seed + 2``) a seeded metric is measured with for the stability check."""


@dataclass(frozen=True)
class MeasureSettings:
    """What to measure.

    Attributes:
        metrics: the ``--metrics`` selection: metric names and categories (comma-separated or a
            list), ``all``, or None for the default set (the registry's ``default=True`` metrics).
        steps: deletion/insertion steps (``2 * (steps + 1)`` forwards per map).
        seed: seed of every seeded metric (ROAD's imputation noise...).
        faithfulness: False drops every metric that needs the model (map-only metrics).
        road: False drops ROAD (the costliest default metric; CPU sparse solves).
        batch_size: images per forward of the metrics.
        recompute: recompute the model-based metrics even when cached.
        params: per metric, hyperparameters overriding its registration's defaults
            (``{"road": {"noise": 0.02}}``); part of each value's cache key.
        stability: also measure each selected metric at other seeds (seeded metrics) and at the
            other values of its main hyperparameter (its ``sweep``), for the report's rank
            agreement; costs that many more measurements.
    """

    metrics: str | Sequence[str] | None = None
    steps: int = DEFAULT_STEPS
    seed: int = 0
    faithfulness: bool = True
    road: bool = True
    batch_size: int = 64
    recompute: bool = False
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    stability: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise UsageError(f"--steps must be a positive integer, not {self.steps!r}")
        if not isinstance(self.metrics, (str, type(None))):
            object.__setattr__(self, "metrics", tuple(self.metrics))
        specs = {m.name: m for m in metrics_in(self.metrics)}  # unknown names: one line, now
        for name, over in self.params.items():
            if name not in specs:
                raise UsageError(f"parameters given for metric {name!r}, which is not selected")
            specs[name].resolved(over)

    def selected(self) -> list[MetricSpec]:
        """The metrics to measure, in registration order."""
        out = []
        for m in metrics_in(self.metrics):
            if not self.faithfulness and m.model_based:
                continue
            if not self.road and m.name == "road":
                continue
            out.append(m)
        return out

    def params_of(self, spec: MetricSpec) -> dict[str, Any]:
        """The metric's effective hyperparameters (``steps`` is deletion/insertion's)."""
        over = dict(self.params.get(spec.name) or {})
        if "steps" in spec.params and spec.name == "deletion_insertion":
            over.setdefault("steps", self.steps)
        return spec.resolved(over)


def measure_settings(measure: MeasureSettings | None, options: dict[str, Any]) -> MeasureSettings:
    """``measure``, or its fields given as keyword ``options`` (not both)."""
    if measure is not None and options:
        raise TypeError(f"give measure= or its fields ({', '.join(options)}), not both")
    return measure or MeasureSettings(**options)
