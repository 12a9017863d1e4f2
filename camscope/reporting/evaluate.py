"""Measure the saved maps of an ``explain`` run: ``DIR/metrics/<rel>.json`` per photo.

Maps are never recomputed: they are read from ``DIR/<variant>/<stem>.npy``. For every photo,
explained class and variant (method, or method + smoothing) the record holds

* faithfulness (needs the model and the source photo): deletion and insertion AUC with their
  curves (Petsiuk et al. 2018, RISE), Average Drop and Increase in Confidence (Chattopadhyay et
  al. 2018, Grad-CAM++), ROAD most- and least-relevant-first (Rong et al. 2022);
* localisation when ground-truth boxes are given: pointing game (Zhang et al. 2016) and the
  energy-based pointing game (Wang et al. 2020, Score-CAM);
* map properties: top-5 %/10 % energy, normalised entropy, degenerate-map flag, peak position;

and per photo and class the agreement of every pair of variants (Spearman rank correlation and
IoU of the top-15 % regions).

Caching: model-based groups (faithfulness, ROAD) are stored with a key (SHA-1 of the map file,
class, settings) and reused when the key matches, so ``camscope report DIR`` re-renders without
a single forward pass; the model is only built when something has to be computed. Map-only
metrics are cheap and always recomputed. Localisation is recomputed when boxes are given and
kept from the cache otherwise.

Cost (forward passes per map, batched): deletion + insertion ``2 * (steps + 1)``
(``steps=25`` by default: 52), Average Drop/IC 2, ROAD ``2 * len(ROAD_FRACTIONS) + 2`` (12) plus
10 sparse linear solves (noisy linear imputation, CPU). Measured on a shared 2-core CPU at
224x224, one torch thread: ResNet-18 ~2.8 s deletion/insertion + ~2.4 s ROAD per map; ResNet-50
~10 s + ~3.7 s per map, so a 10-photo x 6-map ResNet-50 report takes ~15 minutes there (~10 with
``road=False`` or ``steps=12``). On a GPU the forwards are nearly free and ROAD's CPU solves
(~2 s per map) dominate. Rebuilding from the cache takes seconds (no model is built).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camscope.errors import CamscopeError, UsageError
from camscope.io.rundir import (
    ImageRecord,
    Manifest,
    RunDir,
    RunSettings,
    parse_variant,
    smoothing_label,
)
from camscope.models import pick_device

__all__ = [
    "DEFAULT_STEPS",
    "ROAD_FRACTIONS",
    "EvaluationResult",
    "MeasureSettings",
    "Measured",
    "PhotoMeasurer",
    "add_measured",
    "check_measurable",
    "evaluate_run",
    "boxes_to_input_frame",
    "map_properties",
    "load_image_metrics",
]

logger = logging.getLogger(__name__)

RECORD_VERSION = 1
DEFAULT_STEPS = 25
"""Deletion/insertion curve steps: ``ceil(H*W/25)`` pixels (4 %) switched per step."""
ROAD_FRACTIONS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
"""Fractions of removed pixels for ROAD (five points: half the cost of the paper's nine)."""
ROAD_NOISE = 0.01
TOP_Q = 0.15
"""Top-region fraction of the agreement IoU."""
POINTING_TOLERANCE = 15
"""Pointing-game tolerance in pixels of the model input (15 px as in Zhang et al.)."""
SCORE = "prob"

_REGIONS = (
    ("top-left", "top", "top-right"),
    ("left", "centre", "right"),
    ("bottom-left", "bottom", "bottom-right"),
)


@dataclass(frozen=True)
class MeasureSettings:
    """What ``camscope report`` measures, declared once (the CLI, ``build_report``,
    ``evaluate_run``, the photo measurer and its Ray workers take it).

    Attributes:
        steps: deletion/insertion steps (``2 * (steps + 1)`` forwards per map).
        seed: seed of ROAD's imputation noise (every other metric is deterministic).
        faithfulness: compute model-based metrics at all; False gives map-only metrics.
        road: compute ROAD (the costliest metric; CPU sparse solves).
        batch_size: images per forward of the metrics.
        recompute: recompute the model-based metrics even when cached (localisation without
            new boxes is still kept from the cache).
    """

    steps: int = DEFAULT_STEPS
    seed: int = 0
    faithfulness: bool = True
    road: bool = True
    batch_size: int = 64
    recompute: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise UsageError(f"--steps must be a positive integer, not {self.steps!r}")


def measure_settings(measure: MeasureSettings | None, options: dict[str, Any]) -> MeasureSettings:
    """``measure``, or its fields given as keyword ``options`` (not both)."""
    if measure is not None and options:
        raise TypeError(f"give measure= or its fields ({', '.join(options)}), not both")
    return measure or MeasureSettings(**options)


@dataclass
class EvaluationResult:
    """What :func:`evaluate_run` did."""

    out: Path
    images: dict[str, dict] = field(default_factory=dict)
    """rel -> the record written to ``DIR/metrics/<rel>.json``."""
    computed: dict[str, int] = field(default_factory=lambda: {"faithfulness": 0, "road": 0})
    """Number of maps whose model-based metrics were computed in this call, per group."""
    reused: dict[str, int] = field(default_factory=lambda: {"faithfulness": 0, "road": 0})
    """Number of maps whose model-based metrics came from the cache, per group."""
    problems: list[tuple[str, str]] = field(default_factory=list)
    """(rel, reason) for photos that could not be measured completely."""
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0


# ---------------------------------------------------------------------------------------------
# Reading a run
# ---------------------------------------------------------------------------------------------


def load_image_metrics(out_dir: str | Path, rel: str) -> dict | None:
    """The cached record of one photo, or None when absent, unreadable or of another version."""
    path = RunDir(out_dir).metrics_file(rel)
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        logger.warning("%s: unreadable cached metrics, recomputing (%s)", path, exc)
        return None
    if not isinstance(rec, dict) or rec.get("version") != RECORD_VERSION:
        return None
    return rec


# ---------------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------------


def boxes_to_input_frame(
    boxes: list, photo_size: tuple[int, int], preprocess: Any
) -> list[tuple[float, float, float, float]]:
    """Map boxes from the photo's frame to the model-input (= map) frame.

    ``photo_size`` is (width, height) of the loaded photo; a box whose ``size`` differs is first
    rescaled to it. ``classic`` preprocessing is a plain resize; ``weights`` preprocessing
    resizes the shorter side to ``resize`` and centre-crops ``size``, so the crop offset is
    subtracted (as :meth:`camscope.models.Preprocess.to_tensor` computes it). Boxes are clipped to
    the input; boxes entirely outside the crop are dropped.
    """
    w, h = photo_size
    H, W = preprocess.size
    if preprocess.mode == "classic":
        nw, nh, left, top = W, H, 0, 0
    else:
        r = preprocess.resize or min(preprocess.size)
        scale = r / min(h, w)
        nh, nw = max(round(h * scale), H), max(round(w * scale), W)
        top, left = (nh - H) // 2, (nw - W) // 2
    sx, sy = nw / w, nh / h
    out = []
    for b in boxes:
        fw, fh = b.size if getattr(b, "size", None) else (w, h)
        kx, ky = w / fw * sx, h / fh * sy
        x0, y0 = b[0] * kx - left, b[1] * ky - top
        x1, y1 = b[2] * kx - left, b[3] * ky - top
        x0, x1 = max(0.0, x0), min(float(W), x1)
        y0, y1 = max(0.0, y0), min(float(H), y1)
        if x1 > x0 and y1 > y0:
            out.append((round(x0, 4), round(y0, 4), round(x1, 4), round(y1, 4)))
    return out


def _boxes_for(table: dict, rel: str, source: str) -> list | None:
    from camscope.metrics import find_boxes

    found = find_boxes(table, rel)
    if found is None:
        found = find_boxes(table, source)
    return found


# ---------------------------------------------------------------------------------------------
# Map-only metrics
# ---------------------------------------------------------------------------------------------


def map_properties(sal: np.ndarray) -> dict[str, Any]:
    """Concentration, degenerate flag and peak of one map (no model needed).

    ``peak`` is the (row, column) of the maximum as fractions of the map size (the centroid of
    all maxima when there are ties) and ``region`` the cell of a 3x3 grid it falls in.
    """
    from camscope.metrics import concentration, is_degenerate

    sal = np.asarray(sal, dtype=np.float64)
    degenerate = is_degenerate(sal)
    props: dict[str, Any] = {"degenerate": degenerate}
    if degenerate == "non-finite":
        props.update(top5_energy=math.nan, top10_energy=math.nan, entropy=math.nan, peak=None, region=None)
        return props
    props.update(concentration(np.clip(sal, 0.0, None)))
    h, w = sal.shape
    ys, xs = np.nonzero(sal == sal.max())
    py, px = (float(ys.mean()) + 0.5) / h, (float(xs.mean()) + 0.5) / w
    props["peak"] = [round(py, 4), round(px, 4)]
    props["region"] = None if degenerate in ("empty", "constant") else _REGIONS[min(2, int(py * 3))][min(2, int(px * 3))]
    return props


# ---------------------------------------------------------------------------------------------
# Model-based metrics
# ---------------------------------------------------------------------------------------------


class _Model:
    """The model, built on first use (a fully cached report never builds it)."""

    def __init__(self, loaded: Any, settings: RunSettings, weights_file: Any, device: Any, trust: bool, progress: bool) -> None:
        self._loaded = loaded
        self._settings = settings
        self._weights_file = weights_file
        self._device = device
        self._trust = trust
        self._progress = progress

    def get(self) -> Any:
        if self._loaded is None:
            from camscope.models import load_from_settings

            logger.info("loading %s to measure the maps", self._settings.model)
            try:
                self._loaded = load_from_settings(
                    self._settings,
                    weights_file=self._weights_file,
                    device=pick_device(self._device),
                    trust_checkpoint=self._trust,
                    progress=self._progress,
                )
            except CamscopeError as exc:
                raise type(exc)(f"{exc} (or pass --no-faithfulness for map-only metrics)") from None
        return self._loaded

    @property
    def device(self) -> torch.device:
        model = self.get().model
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
        return torch.device("cpu")

    def forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        model = self.get().model
        return lambda x: model(x)


def _r(x: float) -> float:
    return round(float(x), 6) if math.isfinite(float(x)) else math.nan


def _faithfulness(
    forward: Callable, image: torch.Tensor, maps: dict[str, np.ndarray], target: int, preprocess: Any, steps: int, batch_size: int
) -> dict[str, dict]:
    """Deletion/insertion + Average Drop/IC for several maps of one image."""
    from camscope.metrics import average_drop_increase, deletion_insertion

    names = list(maps)
    stack = np.stack([maps[n] for n in names])
    adi = average_drop_increase(
        forward,
        image.unsqueeze(0).expand(len(names), -1, -1, -1),
        stack,
        [target] * len(names),
        score=SCORE,
        mean=preprocess.mean,
        std=preprocess.std,
        batch_size=batch_size,
    )
    out: dict[str, dict] = {}
    for i, name in enumerate(names):
        cr = deletion_insertion(forward, image, maps[name], target, steps=steps, batch_size=batch_size, score=SCORE)
        out[name] = {
            "deletion_auc": _r(cr.deletion_auc),
            "insertion_auc": _r(cr.insertion_auc),
            "average_drop": _r(100.0 * adi.per_image.drops[i]),
            "increase_in_confidence": 100.0 if bool(adi.per_image.increased[i]) else 0.0,
            "base_score": _r(adi.per_image.base_scores[i]),
            "explanation_score": _r(adi.per_image.explanation_scores[i]),
            "curves": {
                "fractions": [_r(v) for v in cr.fractions],
                "deletion": [_r(v) for v in cr.deletion_curve],
                "insertion": [_r(v) for v in cr.insertion_curve],
            },
        }
    return out


def _road(forward: Callable, image: torch.Tensor, sal: np.ndarray, target: int, seed: int, batch_size: int) -> dict:
    from camscope.metrics import road

    morf = road(forward, image, sal, target, fractions=ROAD_FRACTIONS, order="morf", noise=ROAD_NOISE, seed=seed, batch_size=batch_size, score=SCORE)
    lerf = road(forward, image, sal, target, fractions=ROAD_FRACTIONS, order="lerf", noise=ROAD_NOISE, seed=seed, batch_size=batch_size, score=SCORE)
    return {
        "road_morf": _r(morf.auc),
        "road_lerf": _r(lerf.auc),
        "road_curves": {
            "fractions": list(ROAD_FRACTIONS),
            "morf": [_r(v) for v in morf.scores],
            "lerf": [_r(v) for v in lerf.scores],
        },
    }


FAITH_KEYS = ("deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence", "base_score", "explanation_score", "curves")
ROAD_KEYS = ("road_morf", "road_lerf", "road_curves")
LOC_KEYS = ("pointing_game", "energy_pg")


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


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
    **options: Any,
) -> EvaluationResult:
    """Measure every complete photo of the explain run in ``out_dir``; write ``DIR/metrics/``.

    Args:
        model: a :class:`camscope.models.LoadedModel` or ``nn.Module`` to use (e.g. the one
            ``explain`` just used, or one that cannot be rebuilt by name); by default the model is rebuilt from the manifest with
            :func:`camscope.models.load_from_settings` — only if something must be computed.
        weights_file: local weights overriding the manifest's when rebuilding the model.
        boxes: ground truth (CSV, ImageNet/VOC XML file or folder; see
            :func:`camscope.metrics.load_boxes`) or an already loaded table.
        device: where to rebuild the model (default: CUDA when available). A given ``model``
            is used on its own device.
        measure: what to measure (:class:`MeasureSettings`); or its fields as ``options``
            (``steps=12, road=False``...).
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out = Path(out_dir)
    measure = measure_settings(measure, options)
    manifest = RunDir(out).load()
    check_measurable(out, manifest)
    measurer = PhotoMeasurer(
        out, manifest, measure, model=model, weights_file=weights_file, boxes=boxes, device=device,
        trust_checkpoint=trust_checkpoint, progress=progress,
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
    images = manifest.complete()
    if images and not any("maps" in rec.kinds() for rec in images.values()):
        kinds = ",".join(manifest.output_kinds or ()) or "without maps"
        raise UsageError(
            f"{out}: the run wrote no .npy maps (--outputs {kinds}) and the report measures them; "
            "re-run explain with --outputs including maps"
        )


@dataclass
class Measured:
    """One photo measured: its record (as written to ``DIR/metrics/<rel>.json``), the one-line
    problem if it could not be measured completely, and how many maps' model-based metrics
    were computed or reused per group."""

    rel: str
    record: dict
    problem: str | None = None
    computed: dict[str, int] = field(default_factory=dict)
    reused: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class PhotoMeasurer:
    """Measures the photos of one run and writes each one's ``DIR/metrics/<rel>.json``.

    Built once per process (the local loop, or one worker of ``camscope report --ray``): the
    one code path for "measure one photo". The model is built on first need only. ``boxes`` is
    a box file or an already loaded table; ``manifest`` needs its settings, methods and outputs
    (the images are passed to :meth:`measure` one by one).
    """

    def __init__(
        self,
        out_dir: str | Path,
        manifest: Manifest,
        measure: MeasureSettings,
        *,
        model: Any = None,
        weights_file: str | Path | None = None,
        boxes: str | Path | dict | None = None,
        device: str | torch.device | None = None,
        trust_checkpoint: bool = False,
        progress: bool = False,
    ) -> None:
        from camscope.metrics import load_boxes
        from camscope.models import LoadedModel, preprocess_from_description

        self.out = Path(out_dir)
        self.rundir = RunDir(self.out)
        self.manifest = manifest
        self.preprocess = preprocess_from_description(manifest.settings.preprocess)
        self.table = load_boxes(boxes) if isinstance(boxes, (str, Path)) else boxes
        if model is not None and not isinstance(model, LoadedModel):  # any nn.Module
            model = LoadedModel(model, manifest.settings.model, manifest.settings.weights, None, self.preprocess)
        self.provider = _Model(model, manifest.settings, weights_file, device, trust_checkpoint, progress)
        self.variants = list(manifest.outputs)
        m = measure
        self.options = {
            "faithfulness": m.faithfulness, "road": m.road, "steps": m.steps, "seed": m.seed,
            "batch_size": m.batch_size, "recompute": m.recompute,
            "faith_key": {"steps": m.steps, "score": SCORE, "delete": "zero", "insert": "blur", "adi": "pixel-space"},
            "road_key": {"fractions": list(ROAD_FRACTIONS), "noise": ROAD_NOISE, "seed": m.seed, "score": SCORE},
        }  # fmt: skip

    def measure(self, rel: str, rec: ImageRecord) -> Measured:
        """Measure one photo (reusing its cached metrics where they still hold) and write its
        record atomically."""
        from camscope.io.atomic import atomic_write_text

        t0 = time.perf_counter()
        counts = EvaluationResult(self.out)
        cached = load_image_metrics(self.out, rel)
        record, problem = _evaluate_image(
            self.out, rel, rec, cached, self.variants, self.manifest, self.preprocess, self.table, self.provider,
            counts, **self.options,
        )  # fmt: skip
        atomic_write_text(self.rundir.metrics_file(rel), json.dumps(record, indent=1, ensure_ascii=False, allow_nan=True) + "\n")
        return Measured(rel, record, problem, dict(counts.computed), dict(counts.reused), time.perf_counter() - t0)


def add_measured(result: EvaluationResult, measured: Measured) -> None:
    """Enter one measured photo in the run's result (a problem is logged on one line)."""
    if measured.problem:
        logger.warning("%s: %s", measured.rel, measured.problem)
        result.problems.append((measured.rel, measured.problem))
    for group, n in measured.computed.items():
        result.computed[group] = result.computed.get(group, 0) + n
    for group, n in measured.reused.items():
        result.reused[group] = result.reused.get(group, 0) + n
    result.images[measured.rel] = measured.record


def log_measured(result: EvaluationResult) -> None:
    logger.info(
        "measured %d photos in %.1f s (%d maps computed, %d from cache)",
        len(result.images), result.seconds, result.computed["faithfulness"], result.reused["faithfulness"],
    )


def _file_sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _evaluate_image(
    out: Path,
    rel: str,
    rec: ImageRecord,
    cached: dict | None,
    variants: list[str],
    manifest: Manifest,
    preprocess: Any,
    table: dict | None,
    provider: _Model,
    result: EvaluationResult,
    *,
    faithfulness: bool,
    road: bool,
    steps: int,
    seed: int,
    batch_size: int,
    recompute: bool,
    faith_key: dict,
    road_key: dict,
) -> tuple[dict, str | None]:
    from camscope.metrics import energy_pointing_game, pairwise_agreement, pointing_game

    problems: list[str] = []
    size = tuple(rec.size or ())
    H, W = preprocess.size
    record: dict[str, Any] = {
        "version": RECORD_VERSION,
        "rel": rel,
        "source": rec.source,
        "photo_size": list(size) if size else None,
        "input_size": [H, W],
        "top5": [t.to_json() for t in rec.top5],
        "true_class": rec.true_class,
        "true_name": rec.true_name,
        "correct": rec.correct,
        "boxes": None,
        "targets": [],
    }
    # ---- ground truth ------------------------------------------------------------------------
    if table is not None:
        found = _boxes_for(table, rel, rec.source)
        if found is not None and size:
            record["boxes"] = [list(b) for b in boxes_to_input_frame(found, size, preprocess)]
            if not record["boxes"]:
                problems.append("its boxes lie outside the region the model sees")
    elif cached is not None:
        record["boxes"] = cached.get("boxes")
    region = None
    if record["boxes"]:
        from camscope.metrics import boxes_to_mask

        region = boxes_to_mask(record["boxes"], (H, W))
        record["box_fraction"] = round(float(region.mean()), 6)

    image_tensor: list[torch.Tensor | None] = []  # loaded at most once, lazily

    def image() -> torch.Tensor | None:
        if not image_tensor:
            from camscope.io.images import load_image

            device = provider.device  # a model that cannot be built stops the report: one line
            try:
                photo = load_image(rec.source)
                image_tensor.append(preprocess.to_tensor(photo).to(device))
            except (CamscopeError, TypeError) as exc:
                problems.append(f"source photo unavailable for faithfulness metrics ({exc})")
                image_tensor.append(None)
        return image_tensor[0]

    targets = [t.to_json() for t in rec.targets]
    cached_targets = (cached or {}).get("targets") or []
    for rank, tg in enumerate(targets):
        old = cached_targets[rank]["variants"] if rank < len(cached_targets) and cached_targets[rank].get("class") == tg["class"] else {}
        entry: dict[str, Any] = {"rank": rank, "class": tg["class"], "name": tg.get("name"), "prob": tg.get("prob"), "variants": {}}
        maps: dict[str, np.ndarray] = {}
        for name in variants:
            npy = rec.file(name, rank, ".npy")
            if npy is None:
                problems.append(f"the manifest lists no {name} map")
                continue
            path = out / npy
            try:
                sal = np.load(path, allow_pickle=False).astype(np.float64)
            except (OSError, ValueError) as exc:
                problems.append(f"map {npy} unreadable ({getattr(exc, 'strerror', None) or exc})")
                continue
            if sal.ndim != 2:
                problems.append(f"map {npy} has shape {sal.shape}, not (H, W)")
                continue
            method, smoothing = parse_variant(name)
            v: dict[str, Any] = {
                "method": method,
                "smoothing": smoothing_label(smoothing),
                "label": manifest.label(name),
                "map_sha1": _file_sha1(path),
                "map_shape": list(sal.shape),
            }
            v.update(map_properties(sal))
            prev = old.get(name) or {}
            same_map = prev.get("map_sha1") == v["map_sha1"]
            if same_map and not recompute and prev.get("faithfulness_key") == faith_key:
                v.update({key: prev[key] for key in FAITH_KEYS if key in prev}, faithfulness_key=faith_key)
            if same_map and not recompute and prev.get("road_key") == road_key:
                v.update({key: prev[key] for key in ROAD_KEYS if key in prev}, road_key=road_key)
            if region is not None and sal.shape == (H, W) and v["degenerate"] != "non-finite":
                v["pointing_game"] = bool(pointing_game(sal, region, tolerance=POINTING_TOLERANCE))
                v["energy_pg"] = _r(energy_pointing_game(np.clip(sal, 0, None), region))
            elif table is None and same_map:
                v.update({key: prev[key] for key in LOC_KEYS if key in prev})
            entry["variants"][name] = v
            maps[name] = sal
        # ---- model-based metrics, batched per image ---------------------------------------
        usable = {n: m for n, m in maps.items() if m.shape == (H, W) and entry["variants"][n]["degenerate"] != "non-finite"}
        if len(usable) < len(maps):
            problems.append(f"maps of another size than the model input {H}x{W} or not finite: not measured")
        if faithfulness:
            need_f = [n for n in usable if "faithfulness_key" not in entry["variants"][n]]
            need_r = [n for n in usable if road and "road_key" not in entry["variants"][n]]
            result.reused["faithfulness"] += len(usable) - len(need_f)
            result.reused["road"] += (len(usable) - len(need_r)) if road else 0
            if need_f or need_r:
                x = image()
                if x is not None:
                    forward = provider.forward()
                    from camscope.core.capture import model_state_guard

                    with model_state_guard(provider.get().model):
                        if need_f:
                            res = _faithfulness(forward, x, {n: usable[n] for n in need_f}, int(tg["class"]), preprocess, steps, batch_size)
                            for n, vals in res.items():
                                entry["variants"][n].update(vals, faithfulness_key=faith_key)
                            result.computed["faithfulness"] += len(need_f)
                        for n in need_r:
                            entry["variants"][n].update(_road(forward, x, usable[n], int(tg["class"]), seed, batch_size), road_key=road_key)
                            result.computed["road"] += 1
        # ---- agreement between every pair of variants ------------------------------------
        agree = [n for n in maps if entry["variants"][n]["degenerate"] != "non-finite"]
        shapes = {maps[n].shape for n in agree}
        entry["agreement"] = []
        if len(shapes) == 1:
            entry["agreement"] = [
                {"a": a.method_a, "b": a.method_b, "spearman": _r(a.spearman), "top_iou": _r(a.top_iou)}
                for a in pairwise_agreement({n: maps[n] for n in agree}, q=TOP_Q)
            ]
        record["targets"].append(entry)
    problem = "; ".join(dict.fromkeys(problems)) or None
    return record, problem
