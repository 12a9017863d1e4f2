"""Measure one photo of a run: every selected registered metric on its saved maps, reusing
the cached values that still hold; :class:`PhotoMeasurer` is the one code path for "measure one
photo" (the local loop and the Ray workers).

Maps are never recomputed: they are read from ``DIR/<variant>/<stem>.npy``. For every photo,
explained class and variant the record holds the values of the selected metrics (one key per
column of their registration, plus their extras such as curves), the map's properties
(degenerate flag, peak position) and, per photo and class, the agreement of every pair of
variants (Spearman rank correlation and IoU of the top-15 % regions).

Caching: values of metrics that need the model are stored with a key per metric
(:func:`~camscope.reporting.cache.metric_key`) and reused while the map file, the class and the
key match, so ``camscope report DIR`` re-renders without a forward pass and builds the model
only when something has to be computed. Map-only and region metrics are cheap and recomputed
(regions from the boxes given, else from the cached ones).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camscope.errors import CamscopeError
from camscope.io.rundir import ImageRecord, Manifest, RunDir, parse_variant, smoothing_label
from camscope.metrics import MetricInputs, MetricSpec
from camscope.metrics.registry import call_metric
from camscope.reporting.boxes import boxes_for, boxes_to_input_frame
from camscope.reporting.cache import RECORD_VERSION, file_sha1, load_image_metrics, metric_key
from camscope.reporting.masks import mask_for
from camscope.reporting.model import ModelProvider, as_loaded
from camscope.reporting.settings import STABILITY_SEEDS, MeasureSettings

__all__ = ["TOP_Q", "SCORE_ONLY_TASKS", "Measured", "PhotoMeasurer", "map_properties", "stability_settings"]

SCORE_ONLY_TASKS = ("segment", "detect", "embed", "zeroshot")
"""Tasks whose runs are measured without the model-based (faithfulness) metrics: these score
class logits of the rebuilt model, which a segmenter, detector or CLIP tower does not give."""

TOP_Q = 0.15
"""Top-region fraction of the agreement IoU."""

_REGIONS = (
    ("top-left", "top", "top-right"),
    ("left", "centre", "right"),
    ("bottom-left", "bottom", "bottom-right"),
)


def _r(x: float) -> float:
    return round(float(x), 6) if math.isfinite(float(x)) else math.nan


def map_properties(sal: np.ndarray) -> dict[str, Any]:
    """Degenerate flag and peak of one map (no model needed).

    ``peak`` is the (row, column) of the maximum as fractions of the map size (the centroid of
    all maxima when there are ties) and ``region`` the cell of a 3x3 grid it falls in.
    """
    from camscope.metrics import is_degenerate

    sal = np.asarray(sal, dtype=np.float64)
    degenerate = is_degenerate(sal)
    props: dict[str, Any] = {"degenerate": degenerate}
    if degenerate == "non-finite":
        props.update(peak=None, region=None)
        return props
    h, w = sal.shape
    ys, xs = np.nonzero(sal == sal.max())
    py, px = (float(ys.mean()) + 0.5) / h, (float(xs.mean()) + 0.5) / w
    props["peak"] = [round(py, 4), round(px, 4)]
    props["region"] = None if degenerate in ("empty", "constant") else _REGIONS[min(2, int(py * 3))][min(2, int(px * 3))]
    return props


def stability_settings(spec: MetricSpec, params: dict[str, Any], seed: int) -> list[tuple[str, dict[str, Any], int]]:
    """The other settings a metric is measured at for its stability: ``(label, params, seed)``
    for ``seed + 1 .. seed + STABILITY_SEEDS`` (seeded metrics) and each other value of its
    sweep parameter."""
    alts: list[tuple[str, dict[str, Any], int]] = []
    if spec.seeded:
        alts += [(f"seed={seed + d}", params, seed + d) for d in range(1, STABILITY_SEEDS + 1)]
    if spec.sweep is not None:
        name, values = spec.sweep
        alts += [(f"{name}={v}", {**params, name: v}, seed) for v in values if v != params.get(name)]
    return alts


@dataclass
class Measured:
    """One photo measured: its record (as written to ``DIR/metrics/<rel>.json``), the one-line
    problem if it could not be measured completely, and how many maps' model-based values were
    computed or reused, per metric."""

    rel: str
    record: dict
    problem: str | None = None
    computed: dict[str, int] = field(default_factory=dict)
    reused: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class PhotoMeasurer:
    """Measures the photos of one run and writes each one's ``DIR/metrics/<rel>.json``.

    Built once per process (the local loop, or one worker of ``camscope report --ray``). The
    model, and the engines that re-explain for ``"explain"`` metrics, are built on first need
    only. ``boxes`` is a box file or an already loaded table; ``manifest`` needs its settings,
    methods and outputs (the images are passed to :meth:`measure` one by one).
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
        masks: str | Path | dict | None = None,
    ) -> None:
        from camscope.metrics import load_boxes
        from camscope.models import preprocess_from_description
        from camscope.reporting.masks import load_mask_dir

        self.out = Path(out_dir)
        self.rundir = RunDir(self.out)
        self.manifest = manifest
        self.measure_settings = measure
        self.preprocess = preprocess_from_description(manifest.settings.preprocess)
        self.table = load_boxes(boxes) if isinstance(boxes, (str, Path)) else boxes
        self.masks = load_mask_dir(masks) if isinstance(masks, (str, Path)) else masks
        loaded = as_loaded(model, manifest.settings, self.preprocess)
        self.provider = ModelProvider(loaded, manifest.settings, weights_file, device, trust_checkpoint, progress)
        self.variants = list(manifest.outputs)
        self.specs = measure.selected()
        if manifest.settings.task in SCORE_ONLY_TASKS:  # no class logits to delete / insert pixels against
            self.specs = [spec for spec in self.specs if not spec.model_based]
        self.params = {m.name: measure.params_of(m) for m in self.specs}
        self.keys = {m.name: metric_key(m, self.params[m.name], measure.seed) for m in self.specs}

    def measure(self, rel: str, rec: ImageRecord) -> Measured:
        """Measure one photo (reusing its cached values where they still hold) and write its
        record atomically."""
        from camscope.io.atomic import atomic_write_text

        t0 = time.perf_counter()
        photo = _Photo(self, rel, rec)
        record = photo.run(load_image_metrics(self.out, rel))
        atomic_write_text(self.rundir.metrics_file(rel), json.dumps(record, indent=1, ensure_ascii=False, allow_nan=True) + "\n")
        problem = "; ".join(dict.fromkeys(photo.problems)) or None
        return Measured(rel, record, problem, photo.computed, photo.reused, time.perf_counter() - t0)


class _Photo:
    """The measurement of one photo: state shared by its targets (the image, loaded at most once)."""

    def __init__(self, m: PhotoMeasurer, rel: str, rec: ImageRecord) -> None:
        self.m = m
        self.rel = rel
        self.rec = rec
        self.problems: list[str] = []
        self.computed = {s.name: 0 for s in m.specs if s.model_based}
        self.reused = dict(self.computed)
        self._image: list[torch.Tensor | None] = []

    def image(self) -> torch.Tensor | None:
        if not self._image:
            from camscope.io.images import load_image

            device = self.m.provider.device  # a model that cannot be built stops the report: one line
            try:
                self._image.append(self.m.preprocess.to_tensor(load_image(self.rec.source)).to(device))
            except (CamscopeError, TypeError) as exc:
                self.problems.append(f"source photo unavailable for the model-based metrics ({exc})")
                self._image.append(None)
        return self._image[0]

    def run(self, cached: dict | None) -> dict:
        rec, m = self.rec, self.m
        size = tuple(rec.size or ())
        H, W = m.preprocess.size
        record: dict[str, Any] = {
            "version": RECORD_VERSION,
            "rel": self.rel,
            "source": rec.source,
            "photo_size": list(size) if size else None,
            "input_size": [H, W],
            "top5": [t.to_json() for t in rec.top5],
            "true_class": rec.true_class,
            "true_name": rec.true_name,
            "correct": rec.correct,
            "boxes": None,
            "metrics": {s.name: {"params": m.params[s.name], "seed": m.measure_settings.seed if s.seeded else None}
                        for s in m.specs},
            "targets": [],
        }
        if m.table is not None:
            found = boxes_for(m.table, self.rel, rec.source)
            if found is not None and size:
                record["boxes"] = [list(b) for b in boxes_to_input_frame(found, size, m.preprocess)]
                if not record["boxes"]:
                    self.problems.append("its boxes lie outside the region the model sees")
        elif cached is not None:
            record["boxes"] = cached.get("boxes")
        region, truth = None, None
        if record["boxes"]:
            from camscope.metrics import boxes_to_mask

            region, truth = boxes_to_mask(record["boxes"], (H, W)), "the ground-truth boxes"
            record["box_fraction"] = round(float(region.mean()), 6)
        if m.masks is not None and region is None:
            region = self._truth_mask(size)
            if region is not None:
                truth = "the ground-truth mask"
                record["mask"] = str(mask_for(m.masks, self.rel))
                record["box_fraction"] = round(float(region.mean()), 6)
        cached_targets = (cached or {}).get("targets") or []
        for rank, tg in enumerate(rec.targets):
            old = {}
            if rank < len(cached_targets) and cached_targets[rank].get("class") == tg.index:
                old = cached_targets[rank].get("variants") or {}
            own = self._own(rank, (H, W))
            used, source = (region, truth) if region is not None else (own[0], own[1]) if own else (None, None)
            entry = self._target(rank, tg.to_json(), old, used)
            if used is not None:
                entry["region"] = {"source": source, "fraction": round(float(used.mean()), 6)}
            if own is not None and region is not None:  # ground truth measured above; the own region too
                entry["own_region"] = self._own_values(entry, own)
            record["targets"].append(entry)
        return record

    def _truth_mask(self, size: tuple[int, ...]) -> np.ndarray | None:
        """The ``--masks`` mask of this photo in the input's frame (a problem when missing or
        of another size than the photo)."""
        from camscope.reporting.masks import mask_to_input_frame

        path = mask_for(self.m.masks, self.rel)
        if path is None:
            self.problems.append("no ground-truth mask for it in --masks (named like the photo, .png)")
            return None
        if not size:
            return None
        try:
            return mask_to_input_frame(path, (int(size[0]), int(size[1])), self.m.preprocess)
        except ValueError as exc:
            self.problems.append(str(exc))
            return None

    def _own(self, rank: int, shape: tuple[int, int]) -> tuple[np.ndarray, str] | None:
        """The target's own region (a task run's detection box or segment mask)."""
        from camscope.reporting.masks import own_region

        explained = self.rec.explained
        if not explained or rank >= len(explained):
            return None
        try:
            return own_region(explained[rank], self.m.out, shape)
        except ValueError as exc:
            self.problems.append(str(exc))
            return None

    def _own_values(self, entry: dict, own: tuple[np.ndarray, str]) -> dict:
        """The region metrics of every map against the target's own region (when ground truth
        took the main columns): ``{"source", "fraction", "variants": {name: {key: value}}}``."""
        m = self.m
        region, source = own
        out: dict[str, Any] = {"source": source, "fraction": round(float(region.mean()), 6), "variants": {}}
        H, W = m.preprocess.size
        names = [n for n, v in entry["variants"].items() if v.get("map_shape") == [H, W] and v.get("degenerate") != "non-finite"]
        if not names:
            return out
        stack = torch.from_numpy(np.stack([np.load(m.out / self.rec.file(n, entry["rank"], ".npy"), allow_pickle=False)
                                           .astype(np.float64) for n in names]))
        for spec in m.specs:
            if "region" not in spec.needs or spec.model_based:
                continue
            inputs = MetricInputs(target=int(entry["class"]), mean=tuple(m.preprocess.mean), std=tuple(m.preprocess.std),
                                  seed=m.measure_settings.seed, batch_size=m.measure_settings.batch_size,
                                  region=torch.from_numpy(np.asarray(region, dtype=bool)))
            inputs.params = m.params[spec.name]
            try:
                values = call_metric(spec, inputs, stack)
            except (CamscopeError, ValueError):
                continue
            for i, n in enumerate(names):
                for k in spec.keys:
                    x = values[k][i]
                    col = next(c for c in spec.columns if c.key == k)
                    out["variants"].setdefault(n, {})[k] = (bool(x) if math.isfinite(x) else None) if col.unit == "bool" else _r(x)
        return out

    def _target(self, rank: int, tg: dict, old: dict, region: np.ndarray | None) -> dict:
        from camscope.metrics import pairwise_agreement

        m = self.m
        H, W = m.preprocess.size
        entry: dict[str, Any] = {"rank": rank, "class": tg["class"], "name": tg.get("name"), "prob": tg.get("prob"), "variants": {}}
        maps: dict[str, np.ndarray] = {}
        for name in m.variants:
            npy = self.rec.file(name, rank, ".npy")
            if npy is None:
                self.problems.append(f"the manifest lists no {name} map")
                continue
            path = m.out / npy
            try:
                sal = np.load(path, allow_pickle=False).astype(np.float64)
            except (OSError, ValueError) as exc:
                self.problems.append(f"map {npy} unreadable ({getattr(exc, 'strerror', None) or exc})")
                continue
            if sal.ndim != 2:
                self.problems.append(f"map {npy} has shape {sal.shape}, not (H, W)")
                continue
            method, smoothing = parse_variant(name)
            v: dict[str, Any] = {
                "method": method,
                "smoothing": smoothing_label(smoothing),
                "label": m.manifest.label(name),
                "map_sha1": file_sha1(path),
                "map_shape": list(sal.shape),
            }
            v.update(map_properties(sal))
            entry["variants"][name] = v
            maps[name] = sal
        usable = [n for n, s in maps.items() if s.shape == (H, W) and entry["variants"][n]["degenerate"] != "non-finite"]
        if len(usable) < len(maps):
            self.problems.append(f"maps of another size than the model input {H}x{W} or not finite: not measured")
        for spec in m.specs:
            self._metric(spec, entry, old, usable, maps, int(tg["class"]), region)
        # ---- agreement between every pair of variants -------------------------------------
        agree = [n for n in maps if entry["variants"][n]["degenerate"] != "non-finite"]
        entry["agreement"] = []
        if len({maps[n].shape for n in agree}) == 1:
            entry["agreement"] = [
                {"a": a.method_a, "b": a.method_b, "spearman": _r(a.spearman), "top_iou": _r(a.top_iou)}
                for a in pairwise_agreement({n: maps[n] for n in agree}, q=TOP_Q)
            ]
        return entry

    def _metric(
        self, spec: MetricSpec, entry: dict, old: dict, usable: list[str], maps: dict[str, np.ndarray],
        target: int, region: np.ndarray | None,
    ) -> None:
        m = self.m
        if not usable or ("region" in spec.needs and region is None):
            return
        key = m.keys[spec.name]
        stability = m.measure_settings.stability
        variants = entry["variants"]
        todo, alt_todo = [], []
        for n in usable:
            prev = old.get(n) or {}
            fresh = (spec.model_based and not m.measure_settings.recompute and prev.get("map_sha1") == variants[n]["map_sha1"]
                     and (prev.get("measured") or {}).get(spec.name) == key)
            if fresh:
                variants[n].update({k: prev[k] for k in (*spec.keys, *spec.extras) if k in prev})
                variants[n].setdefault("measured", {})[spec.name] = key
                kept = (prev.get("stability") or {}).get(spec.name)
                if kept:
                    variants[n].setdefault("stability", {})[spec.name] = kept
                elif stability:
                    alt_todo.append(n)
                self.reused[spec.name] += 1
            else:
                todo.append(n)
        if not todo and not alt_todo:
            return
        inputs = self._inputs(spec, target, region, todo or alt_todo)
        if inputs is None:
            return
        params, seed = m.params[spec.name], m.measure_settings.seed
        if todo:
            values = self._call(spec, inputs, todo, maps, params, seed)
            if values is None:
                return
            for i, n in enumerate(todo):
                for k in spec.keys:
                    x = values[k][i]
                    col = next(c for c in spec.columns if c.key == k)
                    variants[n][k] = (bool(x) if math.isfinite(x) else None) if col.unit == "bool" else _r(x)
                for k in spec.extras:
                    variants[n][k] = values[k][i]
                variants[n].setdefault("measured", {})[spec.name] = key
            if spec.model_based:
                self.computed[spec.name] += len(todo)
        if stability:
            names = todo + alt_todo
            for label, alt_params, alt_seed in stability_settings(spec, params, seed):
                vals = self._call(spec, inputs, names, maps, alt_params, alt_seed)
                if vals is None:
                    return
                for i, n in enumerate(names):
                    st = variants[n].setdefault("stability", {}).setdefault(spec.name, {})
                    st[label] = {k: _r(vals[k][i]) for k in spec.keys}

    def _inputs(self, spec: MetricSpec, target: int, region: np.ndarray | None, names: list[str]) -> MetricInputs | None:
        m = self.m
        inputs = MetricInputs(
            target=target, mean=tuple(m.preprocess.mean), std=tuple(m.preprocess.std), seed=m.measure_settings.seed,
            batch_size=m.measure_settings.batch_size,
            region=None if region is None else torch.from_numpy(np.asarray(region, dtype=bool)),
        )
        if spec.needs & {"model", "explain"}:
            x = self.image()
            if x is None:
                return None
            inputs.image, inputs.forward = x, m.provider.forward()
        return inputs

    def _call(
        self, spec: MetricSpec, inputs: MetricInputs, names: Sequence[str], maps: dict[str, np.ndarray],
        params: dict[str, Any], seed: int,
    ) -> dict[str, list[Any]] | None:
        from camscope.core.capture import model_state_guard

        m = self.m
        inputs.params, inputs.seed = params, seed
        stack = torch.from_numpy(np.stack([maps[n] for n in names]))
        if "explain" in spec.needs:
            inputs.explainers = m.provider.explainers(names, tuple(m.preprocess.size), m.preprocess.normalization)
        try:
            if spec.model_based:
                with model_state_guard(m.provider.get().model):
                    return call_metric(spec, inputs, stack)
            return call_metric(spec, inputs, stack)
        except (CamscopeError, ValueError) as exc:
            self.problems.append(f"metric {spec.name} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            return None
