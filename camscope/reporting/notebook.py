"""``camscope.evaluate(result, metrics=[...])``: the registered metrics on a :class:`CamResult`
in memory (a notebook), without a run folder.

Every map of the result (image x explained class x variant) is measured with the selected
metrics, each image's maps together, through the same contract as the report
(:func:`camscope.metrics.registry.call_metric`). The model comes from the result
(``camscope.explain`` keeps it) or is given; metrics that re-explain (needs ``"explain"``) get
one :class:`~camscope.engine.CamEngine` per variant with the result's layer and smoothing.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from camscope.errors import UsageError
from camscope.metrics import MetricInputs, MetricSpec, metrics_in
from camscope.metrics.registry import call_metric

if TYPE_CHECKING:
    from camscope.engine import CamResult

__all__ = ["MetricTable", "evaluate_result"]


@dataclass
class MetricTable:
    """The values of :func:`evaluate_result`: one row per image x class x variant.

    ``rows``: dicts with ``image`` (index), ``name`` (photo name when known), ``rank``,
    ``class``, ``variant`` and one entry per column of the measured metrics (NaN where
    undefined). ``columns``: (metric, column key) measured. ``means()`` / ``table[variant]``:
    the mean of each column per variant over images (first explained class). Displays as an
    HTML table in a notebook; ``to_pandas()`` when pandas is installed.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: list[tuple[str, str]] = field(default_factory=list)
    variants: list[str] = field(default_factory=list)

    def means(self, rank: int = 0) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for v in self.variants:
            rows = [r for r in self.rows if r["variant"] == v and r["rank"] == rank]
            out[v] = {}
            for _, key in self.columns:
                vals = [r[key] for r in rows if not math.isnan(r[key])]
                out[v][key] = float(np.mean(vals)) if vals else math.nan
        return out

    def __getitem__(self, variant: str) -> dict[str, float]:
        return self.means()[variant]

    def values(self, variant: str, key: str, rank: int = 0) -> list[float]:
        """Per image, the value of ``key`` for ``variant``."""
        return [r[key] for r in self.rows if r["variant"] == variant and r["rank"] == rank]

    def to_pandas(self) -> Any:
        import pandas as pd  # optional: only for users who want a DataFrame

        return pd.DataFrame(self.rows)

    def _repr_html_(self) -> str:
        means = self.means()
        head = "".join(f"<th>{html.escape(k)}</th>" for _, k in self.columns)
        body = "".join(
            f"<tr><td>{html.escape(v)}</td>"
            + "".join(f"<td>{'–' if math.isnan(means[v][k]) else f'{means[v][k]:.4f}'}</td>" for _, k in self.columns)
            + "</tr>"
            for v in self.variants
        )
        n = len({r["image"] for r in self.rows})
        return (f"<table><caption>mean over {n} images (first explained class)</caption>"
                f"<tr><th>variant</th>{head}</tr>{body}</table>")


def _forward(model: Any) -> Any:
    net = getattr(model, "model", model)
    return lambda x: net(x)


def evaluate_result(
    result: CamResult,
    metrics: str | Sequence[str] | None = None,
    *,
    model: Any = None,
    regions: Sequence[Any] | None = None,
    seed: int = 0,
    batch_size: int = 64,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> MetricTable:
    """Measure the maps of ``result`` with the registered metrics ``metrics`` (names,
    categories, ``"all"``; default: the report's default set).

    Args:
        model: the model (``nn.Module`` or ``LoadedModel``) when the result does not carry it.
        regions: per image a ground-truth region (an (H,W) bool mask or a list of boxes in the
            model input's frame) for the localisation metrics; None skips them.
        params: per metric, hyperparameters overriding its defaults.
    """
    from camscope.core.capture import model_state_guard
    from camscope.metrics import region_mask

    specs: list[MetricSpec] = metrics_in(metrics)
    loaded = model if model is not None else result.model
    net = getattr(loaded, "model", loaded)
    if result.inputs is None:
        raise UsageError("the result carries no model inputs (CamResult.inputs); explain the images again")
    if net is None and any(s.model_based for s in specs):
        names = ", ".join(s.name for s in specs if s.model_based)
        raise UsageError(f"metrics {names} need the model: pass model= (the result does not carry it)")
    if regions is not None and len(regions) != len(result):
        raise UsageError(f"regions: {len(regions)} given for {len(result)} images")
    over = dict(params or {})
    for name in over:
        if name not in {s.name for s in specs}:
            raise UsageError(f"parameters given for metric {name!r}, which is not selected")
    variants = list(result.maps)
    mean, std = result.normalization or ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    device = next((p.device for p in net.parameters()), torch.device("cpu")) if net is not None else torch.device("cpu")
    engines: dict[str, Any] = {}
    table = MetricTable(columns=[(s.name, c.key) for s in specs for c in s.columns], variants=variants)
    b, k = result.targets.shape[:2]
    h, w = result.inputs.shape[-2:]
    for i in range(b):
        region = None
        if regions is not None and regions[i] is not None:
            region = torch.from_numpy(np.asarray(region_mask(regions[i], (h, w)), dtype=bool))
        for r in range(k):
            target = int(result.targets[i, r])
            stack = torch.stack([result.maps[v][i, r].to(torch.float64) for v in variants])
            row_values: dict[str, list[float]] = {}
            for spec in specs:
                if "region" in spec.needs and region is None:
                    row_values.update({c.key: [math.nan] * len(variants) for c in spec.columns})
                    continue
                inputs = MetricInputs(target=target, mean=tuple(mean), std=tuple(std), region=region, seed=seed,
                                      batch_size=batch_size, params=spec.resolved(over.get(spec.name)))
                if spec.model_based:
                    inputs.image, inputs.forward = result.inputs[i].to(device), _forward(net)
                if "explain" in spec.needs:
                    inputs.explainers = [_explainer(engines, result, net, v, (h, w)) for v in variants]
                if spec.model_based:
                    with model_state_guard(net):
                        values = call_metric(spec, inputs, stack)
                else:
                    values = call_metric(spec, inputs, stack)
                row_values.update({c.key: values[c.key] for c in spec.columns})
            for j, v in enumerate(variants):
                table.rows.append({
                    "image": i, "name": result.names[i] if result.names else None, "rank": r, "class": target,
                    "variant": v, **{key: float(vals[j]) for key, vals in row_values.items()},
                })
    return table


def _explainer(engines: dict[str, Any], result: CamResult, net: Any, variant: str, size: tuple[int, int]) -> Any:
    if variant not in engines:
        from camscope.engine import CamEngine
        from camscope.io.rundir import parse_variant, smoothing_label
        from camscope.reporting.model import engine_explainer

        method, parts = parse_variant(variant)
        engine = CamEngine(net, result.layer, methods=[method], smoothing=[smoothing_label(parts)] if parts else None,
                           normalization=result.normalization, speed=result.speed, input_size=(1, 3, *size))
        engines[variant] = engine_explainer(engine, variant)
    return engines[variant]
