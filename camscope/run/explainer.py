"""The ``explain`` run: a folder of photos -> per-method maps, overlays, figures, CSV, manifest.

Three parts, so that the same work runs in this process or on remote workers:

* :func:`plan_run` checks every argument, finds and names the images, loads the model and
  compares the settings with a manifest already in the folder (the resume check) — nothing is
  created under ``out`` before all of that has passed;
* :class:`Explainer` explains a batch of images and writes each image's files (maps, overlays,
  figure), returning one small :class:`Outcome` per image: the one code path for "explain one
  image and write its files";
* :func:`run_explain` (the local driver) streams the planned images through an ``Explainer``
  and records every outcome in ``manifest.json`` after each batch, so memory stays flat, an
  interrupted run loses nothing already written, and re-running the same command resumes.

One bad image is reported on one line, recorded in ``failures.csv`` and skipped. File names and
formats belong to :mod:`camscope.io.rundir`.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camscope.core.runtime import SpeedSettings
from camscope.errors import CamscopeError, ImageLoadError, UsageError
from camscope.io.rundir import (
    OUTPUT_KINDS,
    ClassScore,
    Failure,
    ImageRecord,
    Manifest,
    RunDir,
    RunSettings,
    figure_file,
    is_random_weights,
    map_file,
    output_stems,
    overlay_file,
    smoothing_label,
    target_stem,
    variant_name,
)
from camscope.models import ModelSpec

__all__ = [
    "ExplainOptions",
    "RunResult",
    "Plan",
    "Explainer",
    "Explained",
    "Outcome",
    "PlannedImage",
    "plan_run",
    "record_outcome",
    "run_explain",
    "write_image",
    "save_result",
    "figure_rows",
    "figure_title",
]

logger = logging.getLogger(__name__)


@dataclass
class ExplainOptions:
    """Settings of an explain run (the CLI flags of ``camscope explain``). ``model`` may be
    given as a name (``"resnet50"``) for a :class:`~camscope.models.ModelSpec` with defaults."""

    model: ModelSpec | str = field(default_factory=ModelSpec)
    layer: str | None = None
    reshape: str = "auto"
    methods: Sequence[str] = ("gradcam", "ablationcam", "scorecam")
    smoothing: Sequence[str] = ()
    target_class: str | None = None
    top_k: int = 1
    device: str | None = None
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    images_per_batch: int = 4
    colormap: str = "jet"
    alpha: float = 0.5
    max_pixels: int = 89_478_485
    outputs: Sequence[str] = OUTPUT_KINDS
    """What each image writes (``--outputs``): any of ``maps`` (``.npy``), ``overlays`` (PNG per
    map), ``figures`` (comparison figure)."""
    figures: bool = True
    """False drops ``figures`` from ``outputs`` (``--no-figures``); afterwards it says whether
    ``outputs`` holds ``figures``."""
    quiet: bool = False
    force: bool = False
    fail_fast: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.model, str):
            self.model = ModelSpec(self.model)
        if isinstance(self.outputs, str):
            self.outputs = [p.strip() for p in self.outputs.split(",") if p.strip()]
        wanted = set(self.outputs) - ({"figures"} if not self.figures else set())
        unknown = sorted(wanted - set(OUTPUT_KINDS))
        if unknown:
            raise UsageError(f"unknown --outputs {', '.join(map(repr, unknown))}; choose from: {', '.join(OUTPUT_KINDS)}")
        self.outputs = tuple(k for k in OUTPUT_KINDS if k in wanted)
        self.figures = "figures" in self.outputs

    @property
    def model_spec(self) -> ModelSpec:
        assert isinstance(self.model, ModelSpec)
        return self.model

    def check(self) -> None:
        """One-line errors for option values that cannot work (before any work starts)."""
        from camscope.render.draw import colorize

        if self.top_k < 1:
            raise UsageError(f"--top-k must be at least 1, not {self.top_k}")
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"--alpha must be in [0, 1], not {self.alpha}")
        if self.images_per_batch < 1:
            raise UsageError(f"--images-per-batch must be at least 1, not {self.images_per_batch}")
        if self.max_pixels < 1:
            raise UsageError(f"--max-pixels must be at least 1, not {self.max_pixels}")
        if not self.outputs:
            raise UsageError(f"--outputs must name at least one of: {', '.join(OUTPUT_KINDS)}")
        colorize(np.zeros((1, 1)), self.colormap)


@dataclass
class RunResult:
    out: Path
    loaded: Any = field(default=None, repr=False)
    completed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


# --------------------------------------------------------------------------------------------
# Explaining and writing one batch of images
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedImage:
    """An input image and the stem of its output files."""

    path: Path
    rel: str
    stem: str


@dataclass
class Explained:
    """One image's computed result, before its files are written."""

    photo: Any
    """The decoded PIL photo."""
    tensor: torch.Tensor
    """Its model input (3,H,W)."""
    probs: torch.Tensor | None = None
    targets: list[int] = field(default_factory=list)
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    """Variant name -> (k,H,W) maps in [0,1]."""


@dataclass
class Outcome:
    """What became of one image: its record, or the one-line reason it failed."""

    item: Any
    record: ImageRecord | None = None
    reason: str | None = None
    seconds: float = 0.0


class Explainer:
    """Explains batches of images and writes each image's files into a run folder.

    Built once per process (the local run, or one remote worker): it owns the model's engine.
    ``layer``, ``target`` and ``k`` come from the plan, so that every process explains the same;
    the local run also hands over the plan's ``engine`` (the model is split once).
    """

    def __init__(
        self,
        opts: ExplainOptions,
        loaded: Any,
        rundir: RunDir,
        *,
        layer: str | None,
        target: int | None,
        k: int,
        engine: Any = None,
    ) -> None:
        self.opts = opts
        self.loaded = loaded
        self.rundir = rundir
        self.engine = engine or build_engine(opts, loaded, layer)
        self.methods = [m.name for m in self.engine.methods]
        self.variants = self.engine.variants
        self.target = target
        self.k = k
        self.device = _device_of(loaded.model)

    def explain(self, items: Sequence[PlannedImage]) -> Iterator[Outcome]:
        """Load, explain and write every image of ``items``; one :class:`Outcome` each (those that
        failed to load first). Exceptions of one image never escape: they become its reason."""
        prepared: list[tuple[Any, Explained]] = []
        for item in items:
            t0 = time.perf_counter()
            try:
                prepared.append((item, self._prepare(item)))
            except Exception as exc:  # any failure costs this image only
                reason = exc.reason if isinstance(exc, ImageLoadError) else None
                yield Outcome(item, reason=reason or _short(exc, "loading the image", "lower --max-pixels"), seconds=time.perf_counter() - t0)
        if not prepared:
            return
        t0 = time.perf_counter()
        done = list(self._compute(prepared))
        share = (time.perf_counter() - t0) / len(prepared)
        del prepared
        for i, (item, explained, error) in enumerate(done):
            done[i] = (item, None, None)  # each image's data is released once written
            t1 = time.perf_counter()
            if error is None:
                try:
                    record = write_image(self.rundir, item, explained, self.loaded, self.variants, self.methods, self.opts)
                except Exception as exc:
                    error = _short(exc, "writing the outputs")
            del explained
            seconds = share + time.perf_counter() - t1
            yield Outcome(item, record=None, reason=error, seconds=seconds) if error else Outcome(item, record, seconds=seconds)

    def _prepare(self, item: Any) -> Explained:
        from camscope.io.images import load_image

        photo = load_image(item.path, max_pixels=self.opts.max_pixels)
        return Explained(photo, self.loaded.preprocess.to_tensor(photo))

    def _compute(self, items: list[tuple[Any, Explained]]) -> Iterator[tuple[Any, Explained | None, str | None]]:
        """(item, explained, error) per image; a failing batch is retried image by image."""
        x = torch.stack([e.tensor for _, e in items]).to(self.device)
        targets = None if self.target is None else [[self.target]] * len(items)
        try:
            res, error = self.engine(x, targets, top_k=self.k), None
        except Exception as exc:  # out of memory, a model that raises on one input, ...
            res, error = None, _short(exc, "computing the maps")
        if res is None:  # outside the except block, so the traceback's tensors are already freed
            del x
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(items) == 1:
                yield items[0][0], None, error
                return
            for one in items:  # retried image by image: only the culprit fails
                yield from self._compute([one])
            return
        for i, (item, e) in enumerate(items):
            probs = res.probabilities[i]
            if not torch.isfinite(probs).all():
                yield item, None, "model output is not finite (NaN or inf scores)"
                continue
            maps = {name: m[i].numpy() for name, m in res.maps.items()}
            if any(not np.isfinite(m).all() for m in maps.values()):
                yield item, None, "a map is not finite (NaN or inf)"
                continue
            e.probs, e.targets, e.maps = probs, res.targets[i].tolist(), maps
            yield item, e, None


def write_image(
    rundir: RunDir,
    item: Any,
    explained: Explained,
    loaded: Any,
    variants: Sequence[Any],
    methods: Sequence[str],
    opts: ExplainOptions,
) -> ImageRecord:
    """Write one image's maps, overlays and comparison figures (those of ``opts.outputs``);
    return its manifest record."""
    from camscope.methods import get_method
    from camscope.render.draw import comparison_figure, figure_png, overlay, png_bytes

    photo = loaded.preprocess.frame(explained.photo)
    probs = explained.probs
    assert probs is not None
    k = len(explained.targets)
    top = probs.topk(min(5, probs.numel()))
    top5 = [_score(loaded, int(c), float(p)) for p, c in zip(top.values, top.indices, strict=True)]
    truth = _true_class(item.path, item.rel, loaded)
    files: dict[str, list[str]] = {}
    figures: list[str] = []
    for rank, cls in enumerate(explained.targets):
        stem = target_stem(item.stem, rank, k)
        for variant in variants:
            for m in methods:
                name = variant_name(m, variant.parts)
                sal = explained.maps[name][rank]
                png, npy = overlay_file(name, stem), map_file(name, stem)
                if "maps" in opts.outputs:
                    rundir.write_map(npy, sal)
                if "overlays" in opts.outputs:
                    pixel = get_method(m).pixel_level
                    rundir.write_png(png, png_bytes(overlay(photo, sal, alpha=opts.alpha, colormap=opts.colormap, pixel_level=pixel)))
                listed = [f for f, kind in ((png, "overlays"), (npy, "maps")) if kind in opts.outputs]
                files.setdefault(name, []).extend(listed)
        if "figures" in opts.outputs:
            label = f"{_class_name(loaded, cls)} {float(probs[cls]):.1%}"
            rows = figure_rows(explained.maps, rank, methods, variants, label)
            title = figure_title(
                item.rel, label, None if truth is None else _class_name(loaded, truth), loaded.weights
            )
            fig = figure_file(stem)
            rundir.write_png(fig, figure_png(comparison_figure(photo, rows, suptitle=title, alpha=opts.alpha, colormap=opts.colormap)))
            figures.append(fig)
    return ImageRecord(
        source=str(item.path),
        size=tuple(explained.photo.size),
        top5=top5,
        targets=[_score(loaded, int(c), float(probs[c])) for c in explained.targets],
        true_class=truth,
        true_name=None if truth is None else _class_name(loaded, truth),
        correct=None if truth is None else bool(int(top.indices[0]) == truth),
        files=files,
        figures=figures,
    )


def figure_rows(
    maps: dict[str, Any], rank: int, methods: Sequence[str], variants: Sequence[Any], label: str
) -> list[list[Any]]:
    """The panels of a comparison figure: one row per smoothing variant, one panel per method,
    each titled with the method (and smoothing) and ``label`` (the explained class)."""
    from camscope.methods import get_method
    from camscope.render.draw import Panel

    rows = []
    for variant in variants:
        suffix = f" +{smoothing_label(variant.parts)}" if variant.parts else ""
        rows.append([
            Panel(
                f"{get_method(m).title}{suffix}\n{label}", maps[variant_name(m, variant.parts)][rank],
                pixel_level=get_method(m).pixel_level,
            )
            for m in methods
        ])
    return rows


def figure_title(rel: str, explained: str, truth: str | None, weights: str | None) -> str:
    """A comparison figure's title: the photo, the explained class, the true class when known,
    and a warning when the model has random weights."""
    title = f"{rel} | explained: {explained}"
    if truth is not None:
        title += f" | true: {truth}"
    if weights is not None and is_random_weights(weights):
        title += "\nRANDOM WEIGHTS: these maps say nothing about a trained model"
    return title


# --------------------------------------------------------------------------------------------
# Planning a run
# --------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """A checked run: its folder, its manifest (finished images kept), what is left to do, and
    what an :class:`Explainer` needs to explain it."""

    rundir: RunDir
    manifest: Manifest
    todo: list[Any]
    """Images to explain, each with ``.path``, ``.rel`` and ``.stem``."""
    skipped: list[str]
    """Images already complete (resumed)."""
    loaded: Any
    layer: str
    target: int | None
    k: int
    engine: Any = field(default=None, repr=False)
    """The :class:`~camscope.engine.CamEngine` the plan split the model with."""


def build_engine(opts: ExplainOptions, loaded: Any, layer: str | None) -> Any:
    """The engine of a run: ``opts``' methods, smoothing, speed and reshape on ``loaded``."""
    from camscope.engine import CamEngine
    from camscope.methods import get_method

    return CamEngine(
        loaded.model,
        layer,
        methods=list(dict.fromkeys(get_method(m).name for m in opts.methods)),
        smoothing=list(opts.smoothing),
        normalization=loaded.preprocess.normalization,
        speed=opts.speed,
        progress=not opts.quiet,
        reshape=opts.reshape,
        input_size=(1, 3, *loaded.preprocess.size),
    )


def plan_run(inputs: Sequence[str | Path], out: str | Path, opts: ExplainOptions, *, loaded: Any = None) -> Plan:
    """Check every argument, find and name the images, load the model and check the settings
    against a manifest already in ``out`` (the resume check). Creates nothing.

    ``loaded`` may carry an already built :class:`camscope.models.LoadedModel` (for any
    ``nn.Module``); otherwise the model is built from ``opts``.
    """
    from camscope.core.smoothing import parse_smoothing
    from camscope.io.images import find_images
    from camscope.methods import get_method
    from camscope.models import class_index, load_class_names, pick_device

    rundir = RunDir(out)
    methods = list(dict.fromkeys(get_method(m).name for m in opts.methods))
    variants = parse_smoothing(list(opts.smoothing))
    opts.check()
    device = pick_device(opts.device)
    images = find_images(inputs)
    if not images:
        raise UsageError(f"no images found in {', '.join(map(str, inputs))}")
    rundir.check_writable()
    if loaded is None:
        loaded = opts.model_spec.load(device, progress=not opts.quiet)
    elif opts.model_spec.labels and opts.model_spec.labels.strip().lower() == "imagenet":
        from camscope.models import imagenet_categories, imagenet_wnids

        loaded.categories, loaded.wnids = imagenet_categories(), imagenet_wnids()
    elif opts.model_spec.labels:
        loaded.categories = load_class_names(opts.model_spec.labels)
    task = loaded.info.get("task") if isinstance(getattr(loaded, "info", None), dict) else None
    if task in ("segment", "detect"):
        raise UsageError(f"{loaded.name} is a {'segmentation' if task == 'segment' else 'detection'} model: the "
                         f"command line explains classifiers only so far; use camscope.explain(model, photos, "
                         f"task={task!r}) from Python")
    if opts.layer:
        _check_layer(loaded, opts.layer, opts.reshape)
    engine = build_engine(opts, loaded, opts.layer)
    layer = engine.layer
    reshape = engine.resolve_reshape(loaded.preprocess.size)
    num_classes = _num_outputs(loaded, device)
    if loaded.categories is not None and len(loaded.categories) != num_classes:
        raise UsageError(
            f"the labels give {len(loaded.categories)} class names but the model has {num_classes} outputs"
        )
    target = None if opts.target_class is None else class_index(opts.target_class, loaded.categories, num_classes)
    k = 1 if target is not None else min(opts.top_k, num_classes)

    settings = RunSettings(
        model=loaded.name,
        weights=loaded.weights,
        layer=layer,
        methods=tuple(methods),
        smoothing=tuple(smoothing_label(v.parts) for v in variants if v.parts),
        preprocess=loaded.preprocess.describe(),
        target_class=opts.target_class,
        top_k=opts.top_k,
        precision=opts.speed.precision,
        colormap=opts.colormap,
        alpha=opts.alpha,
        reshape=_recorded_reshape(reshape),
    )
    previous = None if opts.force else rundir.read_manifest(hint="use --force or another --out")
    done: dict[str, ImageRecord] = {}
    if previous is not None:
        changed = settings.differences(previous.settings)
        if changed:
            raise UsageError(
                f"{out} holds a run with other settings ({', '.join(changed)}); "
                "pass --force to recompute into it, or choose another --out"
            )
        done = {rel: rec for rel, rec in previous.images.items() if rec.complete}
    manifest = Manifest(
        settings=settings,
        versions=_versions(),
        device=str(device),
        methods={m: _method_meta(m) for m in methods},
        outputs=[variant_name(m, v.parts) for v in variants for m in methods],
        images=dict(done),
        output_kinds=tuple(opts.outputs),
    )
    stems = output_stems([item.rel for item in images])
    todo, skipped = [], []
    for item in images:
        if rundir.is_complete(done.get(item.rel), opts.outputs):
            skipped.append(item.rel)
        else:
            todo.append(PlannedImage(item.path, item.rel, stems[item.rel]))
    return Plan(rundir, manifest, todo, skipped, loaded, layer, target, k, engine)


def run_explain(
    inputs: Sequence[str | Path],
    out: str | Path,
    opts: ExplainOptions | None = None,
    *,
    loaded: Any = None,
) -> RunResult:
    """Explain every image found in ``inputs`` and write the output tree under ``out``.

    Every argument is checked before any image is processed, and nothing is created under
    ``out`` until all checks have passed (a usage error leaves no trace). ``loaded`` may carry
    an already built :class:`camscope.models.LoadedModel` (for any ``nn.Module``); otherwise the
    model is built from ``opts``.
    """
    from tqdm.auto import tqdm

    opts = opts or ExplainOptions()
    t_start = time.perf_counter()
    plan = plan_run(inputs, out, opts, loaded=loaded)
    explainer = Explainer(
        opts, plan.loaded, plan.rundir, layer=plan.layer, target=plan.target, k=plan.k, engine=plan.engine
    )
    # ---- every check passed: only now is anything created under ``out`` ----------------------
    plan.rundir.create()
    manifest = plan.manifest
    result = RunResult(Path(out), plan.loaded, skipped=list(plan.skipped))
    if result.skipped:
        logger.info("resuming: %d images already complete", len(result.skipped))
    todo = plan.todo
    bar = tqdm(total=len(todo), desc="images", unit="img", disable=opts.quiet)
    try:
        for start in range(0, len(todo), opts.images_per_batch):
            for outcome in explainer.explain(todo[start : start + opts.images_per_batch]):
                record_outcome(manifest, outcome, result)
                bar.update(1)
                if outcome.reason is not None and opts.fail_fast:
                    left = len(todo) - len(result.completed) - len(result.failed)
                    logger.error("stopped at the first failure (--fail-fast); %d images not processed", left)
                    return result
            plan.rundir.write_manifest(manifest)
    finally:
        bar.close()
        manifest.seconds = round(time.perf_counter() - t_start, 3)
        plan.rundir.write_manifest(manifest)
        result.seconds = time.perf_counter() - t_start
    return result


def save_result(
    result: Any,
    out: str | Path,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    figures: bool = True,
    force: bool = False,
) -> Path:
    """Write a :class:`~camscope.engine.CamResult` as the run folder ``camscope explain``
    writes (through :func:`write_image`), so that ``camscope report DIR`` reads it.

    Photos given from files keep their path as the source; photos and tensors given in memory
    are written to ``DIR/inputs/<name>.png`` (tensors de-normalised to 8 bits) and become the
    source, which the report's faithfulness metrics reload. Images already in a folder made
    with the same settings are replaced; other settings are refused unless ``force``.
    """
    from camscope.core.smoothing import Smoothing
    from camscope.io.rundir import PYTHON_MODEL
    from camscope.models import LoadedModel, Preprocess
    from camscope.render.draw import png_bytes

    rundir = RunDir(out)
    opts = ExplainOptions(alpha=alpha, colormap=colormap, figures=figures)
    opts.check()
    rundir.check_writable("save")
    loaded = result.model
    if loaded is None:  # a CamEngine result: the model is only known by its inputs
        h, w = result.inputs.shape[-2:]
        mean, std = result.normalization or ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        loaded = LoadedModel(None, "model", PYTHON_MODEL, None, Preprocess("classic", (int(h), int(w)), None, tuple(mean), tuple(std)))
    n, k = result.targets.shape
    names = result.names or [f"image{i}.png" for i in range(n)]
    sources = result.sources or [None] * n
    variants = [Smoothing.of(parts) for parts in result.smoothing]
    settings = RunSettings(
        model=loaded.name,
        weights=loaded.weights,
        layer=str(result.layer),
        methods=tuple(result.methods),
        smoothing=tuple(smoothing_label(v.parts) for v in variants if v.parts),
        preprocess=loaded.preprocess.describe(),
        top_k=int(k),
        precision=result.speed.precision if result.speed is not None else "fp32",
        colormap=colormap,
        alpha=alpha,
    )
    previous = None if force else rundir.read_manifest(hint="use force=True or another folder")
    if previous is not None and settings.differences(previous.settings):
        raise UsageError(
            f"{out} holds a run with other settings ({', '.join(settings.differences(previous.settings))}); "
            "pass force=True to write into it, or choose another folder"
        )
    rundir.create("save")
    manifest = Manifest(
        settings=settings,
        versions=_versions(),
        device=str(result.inputs.device) if result.inputs is not None else "cpu",
        methods={m: _method_meta(m) for m in result.methods},
        outputs=[variant_name(m, parts) for parts in result.smoothing for m in result.methods],
        output_kinds=tuple(opts.outputs),
        images={} if previous is None else dict(previous.images),
    )
    stems = output_stems(names)
    done = RunResult(Path(out), loaded)
    for i, name in enumerate(names):
        photo = result.photo(i) if result.photos is None else result.photos[i]
        source = sources[i]
        if source is None:  # kept in the folder, so that the report can reload it
            source_rel = f"inputs/{name}" if name.lower().endswith(".png") else f"inputs/{name}.png"
            rundir.write_png(source_rel, png_bytes(photo))
            source = str(rundir.path(source_rel).resolve())
        explained = Explained(
            photo,
            result.inputs[i] if result.inputs is not None else None,
            result.probabilities[i],
            result.targets[i].tolist(),
            {v: m[i].numpy() for v, m in result.maps.items()},
        )
        item = PlannedImage(Path(source), name, stems[name])
        record_outcome(manifest, Outcome(item, write_image(rundir, item, explained, loaded, variants, result.methods, opts)), done)
    rundir.write_manifest(manifest)
    logger.info("saved %d images -> %s", n, out)
    return Path(out)


def record_outcome(manifest: Manifest, outcome: Outcome, result: RunResult) -> None:
    """Enter one image's outcome in the manifest (and the run's result lists); a failure is
    logged on one line."""
    item = outcome.item
    if outcome.record is not None:
        manifest.images[item.rel] = outcome.record
        manifest.failures.pop(item.rel, None)
        result.completed.append(item.rel)
        return
    reason = outcome.reason or "unknown failure"
    logger.error("%s: %s", item.path, reason)
    result.failed.append((str(item.path), reason))
    manifest.failures[item.rel] = Failure(str(item.path), reason)
    manifest.images.pop(item.rel, None)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import torchvision

    import camscope

    return {
        "camscope": camscope.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _recorded_reshape(reshape: Any) -> str | None:
    """How the layer's output became a map, for the settings: None when it already was a
    (N, C, h, w) map (so runs of CNNs keep their settings and resume)."""
    described = reshape.describe()
    return None if described == "none" else described


def _check_layer(loaded: Any, layer: str, reshape: str = "auto") -> None:
    """An explicit ``--layer`` must exist and output a feature map (or tokens / a channels-last
    map that ``--reshape`` turns into one) with more than 1x1 cells."""
    from camscope.core.layers import check_spatial_layer, default_layer

    h, w = loaded.preprocess.size
    shape = check_spatial_layer(loaded.model, layer, (1, 3, h, w), reshape)
    if shape[2] * shape[3] <= 1:
        try:
            hint = f" such as {default_layer(loaded.model, input_size=(1, 3, h, w))!r}"
        except CamscopeError:
            hint = ""
        raise UsageError(
            f"layer {layer!r} outputs shape {tuple(shape)}: a {shape[2]}x{shape[3]} map has no "
            f"spatial extent to explain; choose an earlier convolutional layer{hint}"
        )


def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _num_outputs(loaded: Any, device: torch.device) -> int:
    if loaded.categories is not None:
        return len(loaded.categories)
    from camscope.core.capture import model_state_guard

    h, w = loaded.preprocess.size
    with model_state_guard(loaded.model), torch.inference_mode():
        return int(loaded.model(torch.zeros(1, 3, h, w, device=device)).shape[1])


def _method_meta(name: str) -> dict[str, str]:
    from camscope.methods import get_method

    spec = get_method(name)
    return {"title": spec.title, "paper": spec.paper, "equation": spec.equation}


def _true_class(path: Path, rel: str, loaded: Any) -> int | None:
    from camscope.models import wnid_from_name

    if loaded.wnids is None:
        return None
    wnid = wnid_from_name(path.name) or wnid_from_name(rel)
    if wnid is None or wnid not in loaded.wnids:
        return None
    return loaded.wnids.index(wnid)


def _class_name(loaded: Any, idx: int) -> str:
    if loaded.categories is not None and 0 <= idx < len(loaded.categories):
        return loaded.categories[idx]
    return f"class {idx}"


def _score(loaded: Any, idx: int, prob: float) -> ClassScore:
    return ClassScore(idx, _class_name(loaded, idx), round(prob, 6))


def _short(exc: BaseException, during: str, oom_hint: str = "try a smaller --batch-size or --images-per-batch") -> str:
    """One-line reason for an unexpected exception raised while ``during`` one image."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    if isinstance(exc, MemoryError) or "out of memory" in first.lower():
        return f"out of memory while {during} ({oom_hint}; see docs/limits.md)"
    return f"{type(exc).__name__} while {during}: {first[:200]}"
