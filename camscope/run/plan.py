"""Planning an explain run: :func:`plan_run` checks every argument, finds and names the images,
loads the model, splits it (:func:`build_engine`) and compares the settings with a manifest
already in the folder (the resume check) -- nothing is created under ``out`` before all of that
has passed."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from camscope.core.capture import model_state_guard
from camscope.core.layers import check_spatial_layer, default_layer
from camscope.core.reshape import Reshape
from camscope.core.smoothing import parse_smoothing
from camscope.engine import CamEngine
from camscope.errors import CamscopeError, UsageError
from camscope.io.images import find_images
from camscope.io.rundir import ImageRecord, Manifest, RunDir, output_stems
from camscope.methods import get_method, method_names
from camscope.methods.registry import methods_for
from camscope.models import LoadedModel, class_index, load_class_names, pick_device
from camscope.run.manifest import new_manifest, run_settings
from camscope.run.options import ExplainOptions
from camscope.run.records import PlannedImage
from camscope.run.tasks import TaskSetup, setup_task

logger = logging.getLogger(__name__)

__all__ = ["Plan", "plan_run", "build_engine", "device_of"]


@dataclass
class Plan:
    """A checked run: its folder, its manifest (finished images kept), what is left to do, and
    what an :class:`Explainer` needs to explain it."""

    rundir: RunDir
    manifest: Manifest
    todo: list[PlannedImage]
    """Images to explain."""
    skipped: list[str]
    """Images already complete (resumed)."""
    loaded: LoadedModel
    layer: str
    target: int | None
    k: int
    engine: CamEngine | None = field(default=None, repr=False)
    """The :class:`~camscope.engine.CamEngine` the plan split the model with."""
    task: TaskSetup | None = None
    """The checked task of a run other than a classifier's (:mod:`camscope.run.tasks`)."""
    methods: list[str] = field(default_factory=list)
    """The run's methods (``--methods all``: those that can explain the model)."""


def build_engine(opts: ExplainOptions, loaded: LoadedModel, layer: str | None) -> CamEngine:
    """The engine of a run: ``opts``' methods, smoothing, speed and reshape on ``loaded``."""
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


def plan_run(
    inputs: Sequence[str | Path], out: str | Path, opts: ExplainOptions, *, loaded: LoadedModel | None = None
) -> Plan:
    """Check every argument, find and name the images, load the model and check the settings
    against a manifest already in ``out`` (the resume check). Creates nothing.

    ``loaded`` may carry an already built :class:`camscope.models.LoadedModel` (for any
    ``nn.Module``); otherwise the model is built from ``opts``.
    """
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
    if methods == method_names():  # --methods all: every method that can explain this model
        fits = set(methods_for(loaded.model))
        left = [m for m in methods if m not in fits]
        if left:
            logger.info("--methods all on %s: %d methods; left out, as they cannot explain it: %s",
                        loaded.name, len(fits), ", ".join(left))
            methods = [m for m in methods if m in fits]
            opts = dataclasses.replace(opts, methods=methods)
    setup = setup_task(opts, loaded, [(item.rel, item.path) for item in images], device)
    if opts.layer:
        _check_layer(loaded, opts.layer, opts.reshape)
    engine = build_engine(opts, loaded, opts.layer)
    layer = engine.layer
    reshape = engine.resolve_reshape(loaded.preprocess.size)
    if setup is None:  # a classifier run
        num_classes = _num_outputs(loaded, device)
        if loaded.categories is not None and len(loaded.categories) != num_classes:
            raise UsageError(
                f"the labels give {len(loaded.categories)} class names but the model has {num_classes} outputs"
            )
        target = None if opts.target_class is None else class_index(opts.target_class, loaded.categories, num_classes)
        top_k = opts.top_k or 1
        k = 1 if target is not None else min(top_k, num_classes)
    else:
        target, top_k = None, setup.top_k
        k = top_k

    settings = run_settings(
        loaded, layer=layer, methods=methods, variants=variants, top_k=top_k, precision=opts.speed.precision,
        colormap=opts.colormap, alpha=opts.alpha, target_class=opts.target_class, reshape=_recorded_reshape(reshape),
        task=None if setup is None else setup.name, task_options=None if setup is None else (setup.options or None),
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
    manifest = new_manifest(
        settings, device=str(device), methods=methods, variants=[v.parts for v in variants],
        output_kinds=opts.outputs, images=dict(done),
    )
    stems = output_stems([item.rel for item in images])
    todo, skipped = [], []
    for item in images:
        if rundir.is_complete(done.get(item.rel), opts.outputs):
            skipped.append(item.rel)
        else:
            todo.append(PlannedImage(item.path, item.rel, stems[item.rel]))
    return Plan(rundir, manifest, todo, skipped, loaded, layer, target, k, engine, setup, methods)


def _recorded_reshape(reshape: Reshape) -> str | None:
    """How the layer's output became a map, for the settings: None when it already was a
    (N, C, h, w) map (so runs of CNNs keep their settings and resume)."""
    described = reshape.describe()
    return None if described == "none" else described


def _check_layer(loaded: LoadedModel, layer: str, reshape: str = "auto") -> None:
    """An explicit ``--layer`` must exist and output a feature map (or tokens / a channels-last
    map that ``--reshape`` turns into one) with more than 1x1 cells."""
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


def device_of(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters (the CPU for a model without any)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _num_outputs(loaded: LoadedModel, device: torch.device) -> int:
    if loaded.categories is not None:
        return len(loaded.categories)
    h, w = loaded.preprocess.size
    with model_state_guard(loaded.model), torch.inference_mode():
        return int(loaded.model(torch.zeros(1, 3, h, w, device=device)).shape[1])
