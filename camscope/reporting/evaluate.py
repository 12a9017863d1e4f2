"""Measure the saved maps of an ``explain`` run: ``DIR/metrics/<rel>.json`` per photo.

:func:`evaluate_run` is the local driver: every complete photo through one
:class:`~camscope.reporting.measure.PhotoMeasurer` (``camscope report --ray`` runs the same
measurer on workers). What is measured is :class:`~camscope.reporting.settings.MeasureSettings`:
the registered metrics it selects (:data:`camscope.metrics.METRICS`; by default the affordable
set: deletion/insertion, Average Drop / Increase in Confidence, ROAD, the pointing games with
boxes, concentration and agreement).

Cost of the default set (forward passes per map, batched): deletion + insertion
``2 * (steps + 1)`` (``steps=25``: 52), Average Drop/IC 2, ROAD ``2 * len(ROAD_FRACTIONS) + 2``
(12) plus 10 sparse linear solves (noisy linear imputation, CPU). Measured on a shared 2-core
CPU at 224x224, one torch thread: ResNet-50 ~10 s + ~3.7 s per map. Rebuilding from the cache
takes seconds (no model is built).

The pieces: settings (:mod:`.settings`), the cache (:mod:`.cache`), boxes (:mod:`.boxes`), the
lazy model and explainers (:mod:`.model`), one photo (:mod:`.measure`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from camscope.errors import UsageError
from camscope.io.rundir import Manifest, RunDir
from camscope.metrics.builtin import DEFAULT_STEPS, ROAD_FRACTIONS
from camscope.reporting.boxes import boxes_to_input_frame
from camscope.reporting.cache import RECORD_VERSION, load_image_metrics
from camscope.reporting.measure import Measured, PhotoMeasurer, map_properties
from camscope.reporting.settings import MeasureSettings, measure_settings

__all__ = [
    "DEFAULT_STEPS",
    "RECORD_VERSION",
    "ROAD_FRACTIONS",
    "EvaluationResult",
    "MeasureSettings",
    "Measured",
    "MetricCounts",
    "PhotoMeasurer",
    "add_measured",
    "boxes_to_input_frame",
    "check_measurable",
    "evaluate_run",
    "load_image_metrics",
    "log_measured",
    "map_properties",
    "measure_settings",
]

logger = logging.getLogger(__name__)


class MetricCounts(dict):
    """Maps counted per model-based metric. The group names of camscope 0.1 still read, with a
    ``DeprecationWarning``: ``["faithfulness"]`` (maps with faithfulness values computed: the
    most of any faithfulness metric other than ROAD) and ``["road"]`` (0 when ROAD was not
    measured)."""

    def __missing__(self, key: str) -> int:
        import warnings

        from camscope.metrics import METRICS

        if key not in ("faithfulness", "road"):
            raise KeyError(key)
        warnings.warn(
            f"EvaluationResult counts are per metric now ({', '.join(self) or 'none measured'}); "
            f"[{key!r}] is deprecated: use the metric names or .maps_computed / .maps_reused",
            DeprecationWarning, stacklevel=2,
        )
        if key == "road":
            return 0
        return max((n for name, n in self.items() if name != "road" and name in METRICS
                    and METRICS[name].category == "faithfulness"), default=0)


@dataclass
class EvaluationResult:
    """What :func:`evaluate_run` did."""

    out: Path
    images: dict[str, dict] = field(default_factory=dict)
    """rel -> the record written to ``DIR/metrics/<rel>.json``."""
    computed: dict[str, int] = field(default_factory=MetricCounts)
    """Per model-based metric, the number of maps whose values were computed in this call."""
    reused: dict[str, int] = field(default_factory=MetricCounts)
    """Per model-based metric, the number of maps whose values came from the cache."""
    problems: list[tuple[str, str]] = field(default_factory=list)
    """(rel, reason) for photos that could not be measured completely."""
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0

    @property
    def maps_computed(self) -> int:
        """Maps with at least one model-based value computed (the most of any metric)."""
        return max(self.computed.values(), default=0)

    @property
    def maps_reused(self) -> int:
        return max(self.reused.values(), default=0)


def evaluate_run(
    out_dir: str | Path,
    *,
    model: Any = None,
    weights_file: str | Path | None = None,
    boxes: str | Path | dict | None = None,
    device: str | torch.device | None = None,
    measure: MeasureSettings | None = None,
    trust_checkpoint: bool = False,
    progress: bool = False,
    masks: str | Path | dict | None = None,
    **options: Any,
) -> EvaluationResult:
    """Measure every complete photo of the explain run in ``out_dir``; write ``DIR/metrics/``.

    Args:
        model: a :class:`camscope.models.LoadedModel` or ``nn.Module`` to use (e.g. the one
            ``explain`` just used, or one that cannot be rebuilt by name); by default the model
            is rebuilt from the manifest with :func:`camscope.models.load_from_settings` — only
            if something must be computed.
        weights_file: local weights overriding the manifest's when rebuilding the model.
        boxes: ground truth (CSV, ImageNet/VOC XML file or folder; see
            :func:`camscope.metrics.load_boxes`) or an already loaded table.
        masks: ground-truth masks: a folder of one PNG per photo, named like it
            (:mod:`camscope.reporting.masks`). Runs of detectors and segmenters are measured
            against each target's own region (its box, its mask) as well.
        device: where to rebuild the model (default: CUDA when available). A given ``model``
            is used on its own device.
        measure: what to measure (:class:`MeasureSettings`); or its fields as ``options``
            (``metrics="faithfulness,complexity"``, ``steps=12``, ``road=False``...).
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out = Path(out_dir)
    measure = measure_settings(measure, options)
    manifest = RunDir(out).load()
    check_measurable(out, manifest)
    measurer = PhotoMeasurer(
        out, manifest, measure, model=model, weights_file=weights_file, boxes=boxes, device=device,
        trust_checkpoint=trust_checkpoint, progress=progress, masks=masks,
    )
    result = EvaluationResult(out)
    images = manifest.complete()
    for rel, rec in tqdm(images.items(), desc="measuring", unit="img", disable=not progress):
        add_measured(result, measurer.measure(rel, rec))
    result.seconds = time.perf_counter() - t0
    log_measured(result)
    return result


def check_measurable(out: Path, manifest: Manifest) -> None:
    """One-line error before any work for a run that wrote no maps."""
    images = {rel: rec for rel, rec in manifest.complete().items() if rec.targets}  # a photo with no target has no map
    if images and not any("maps" in rec.kinds() for rec in images.values()):
        kinds = ",".join(manifest.output_kinds or ()) or "without maps"
        raise UsageError(
            f"{out}: the run wrote no .npy maps (--outputs {kinds}) and the report measures them; "
            "re-run explain with --outputs including maps"
        )


def add_measured(result: EvaluationResult, measured: Measured) -> None:
    """Enter one measured photo in the run's result (a problem is logged on one line)."""
    if measured.problem:
        logger.warning("%s: %s", measured.rel, measured.problem)
        result.problems.append((measured.rel, measured.problem))
    for name, n in measured.computed.items():
        result.computed[name] = result.computed.get(name, 0) + n
    for name, n in measured.reused.items():
        result.reused[name] = result.reused.get(name, 0) + n
    result.images[measured.rel] = measured.record


def log_measured(result: EvaluationResult) -> None:
    logger.info(
        "measured %d photos in %.1f s (%d maps computed, %d from cache)",
        len(result.images), result.seconds, result.maps_computed, result.maps_reused,
    )
