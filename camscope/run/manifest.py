"""The one place a run's :class:`~camscope.io.rundir.RunSettings` and
:class:`~camscope.io.rundir.Manifest` are built (for ``camscope explain`` and for
``CamResult.save``), and where an image's outcome is entered in the manifest."""

from __future__ import annotations

import logging
import platform
from collections.abc import Sequence

import numpy as np
import torch
import torchvision

import camscope
from camscope.core.smoothing import Smoothing
from camscope.io.rundir import Failure, ImageRecord, Manifest, RunSettings
from camscope.methods import get_method
from camscope.models import LoadedModel
from camscope.names import smoothing_label, variant_name
from camscope.run.options import RunResult
from camscope.run.records import Outcome

__all__ = ["run_settings", "new_manifest", "record_outcome", "versions"]

logger = logging.getLogger(__name__)


def run_settings(
    loaded: LoadedModel,
    *,
    layer: str,
    methods: Sequence[str],
    variants: Sequence[Smoothing],
    top_k: int,
    precision: str,
    colormap: str,
    alpha: float,
    target_class: str | None = None,
    reshape: str | None = None,
    task: str | None = None,
    task_options: dict | None = None,
) -> RunSettings:
    """The settings that determine a run's outputs (a resumed run must match them)."""
    return RunSettings(
        model=loaded.name,
        weights=loaded.weights,
        layer=layer,
        methods=tuple(methods),
        smoothing=tuple(smoothing_label(v.parts) for v in variants if v.parts),
        preprocess=loaded.preprocess.describe(),
        target_class=target_class,
        top_k=top_k,
        precision=precision,
        colormap=colormap,
        alpha=alpha,
        reshape=reshape,
        task=None if task in (None, "classify") else task,
        task_options=task_options or None,
    )


def new_manifest(
    settings: RunSettings,
    *,
    device: str,
    methods: Sequence[str],
    variants: Sequence[Sequence[str]],
    output_kinds: Sequence[str],
    images: dict[str, ImageRecord],
) -> Manifest:
    """A manifest for a run about to write: versions, device, each method's paper and equation,
    the variant names, the output kinds, and the images already complete."""
    return Manifest(
        settings=settings,
        versions=versions(),
        device=device,
        methods={m: _method_meta(m) for m in methods},
        outputs=[variant_name(m, parts) for parts in variants for m in methods],
        images=images,
        output_kinds=tuple(output_kinds),
    )


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


def versions() -> dict[str, str]:
    """The versions a manifest records."""
    return {
        "camscope": camscope.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _method_meta(name: str) -> dict[str, str]:
    spec = get_method(name)
    return {"title": spec.title, "paper": spec.paper, "equation": spec.equation}
