"""What an explained image writes: the registry of *output kinds* (``--outputs``) and
:func:`write_image`, the one writer of an image's files.

An output kind is one registration (its folder and suffix are its ``path``, its ``write`` makes
the file's bytes)::

    from camscope.run.outputs import OutputKind, register_output_kind
    from camscope.render.draw import colorize, png_bytes

    register_output_kind(OutputKind(
        "heatmaps", ".png", per="variant",
        path=lambda variant, stem: f"heatmaps/{variant}/{stem}.png",
        write=lambda job: png_bytes(Image.fromarray(colorize(job.map, job.colormap))),
    ))

after which ``--outputs maps,heatmaps`` (``ExplainOptions(outputs=...)``) writes it, the
manifest lists its files per image (key ``outputs``), and resuming checks it like the built-in
kinds. ``per="variant"``: one file per method variant and explained class; ``per="image"``: one
per explained class. The built-in kinds (``maps``, ``overlays``, ``figures``) keep the run
folder's historical places and record keys (:mod:`camscope.io.rundir`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from camscope.core.smoothing import Smoothing
from camscope.io.rundir import (
    BUILTIN_OUTPUT_KINDS,
    ClassScore,
    ExplainedTarget,
    ImageRecord,
    RunDir,
    figure_file,
    map_file,
    overlay_file,
    region_file,
    target_stem,
)
from camscope.methods import get_method
from camscope.models import LoadedModel, wnid_from_name
from camscope.names import parse_variant, variant_name
from camscope.render.comparison import figure_rows, figure_title
from camscope.render.draw import TargetRegion, comparison_figure, figure_png, overlay, png_bytes
from camscope.render.targets import target_caption, target_region
from camscope.run.records import Explained, PlannedImage

__all__ = ["OutputJob", "OutputKind", "OUTPUT_KINDS", "register_output_kind", "output_kind_names", "write_image"]


@dataclass(frozen=True)
class OutputJob:
    """Everything a writer may use for one file: the framed photo, the explained class and its
    label, the figure's title, the maps of every variant, and (``per="variant"``) the variant
    and its map."""

    photo: Image.Image
    """The part of the photo the maps cover."""
    rank: int
    cls: int
    label: str
    """``"tabby 93.1%"``: the explained class and its probability."""
    title: str
    """The comparison figure's title (photo, class, true class, random-weights warning)."""
    maps: Mapping[str, np.ndarray]
    """Variant name -> (k,H,W) maps in [0,1]."""
    methods: Sequence[str]
    variants: Sequence[Smoothing]
    alpha: float
    colormap: str
    variant: str | None = None
    map: np.ndarray | None = None
    """(H,W) in [0,1]: this variant's map for this class (``per="variant"`` only)."""
    region: TargetRegion | None = None
    """The target's box or mask outline (detections, segments), drawn on overlays and figures."""


@dataclass(frozen=True)
class OutputKind:
    """One kind of file an image writes (see the module docstring)."""

    name: str
    suffix: str
    per: Literal["variant", "image"]
    path: Callable[..., str]
    """``path(variant, stem)`` (``per="variant"``) or ``path(stem)`` -> the file, relative to
    the run folder. Two kinds never share a path."""
    write: Callable[[OutputJob], bytes]


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr, dtype=np.float32))
    return buf.getvalue()


def _overlay(job: OutputJob) -> bytes:
    assert job.map is not None and job.variant is not None
    pixel = get_method(parse_variant(job.variant)[0]).pixel_level  # input-gradient maps drawn as such
    return png_bytes(overlay(job.photo, job.map, alpha=job.alpha, colormap=job.colormap, pixel_level=pixel, region=job.region))


def _figure(job: OutputJob) -> bytes:
    rows = figure_rows(job.maps, job.rank, job.methods, job.variants, job.label)
    return figure_png(comparison_figure(job.photo, rows, suptitle=job.title, alpha=job.alpha, colormap=job.colormap,
                                        region=job.region))


OUTPUT_KINDS: dict[str, OutputKind] = {}
"""The registered output kinds, by name, in the order their files are written."""


def register_output_kind(kind: OutputKind) -> OutputKind:
    """Add an output kind (replacing one of the same name)."""
    if kind.per not in ("variant", "image"):
        raise ValueError(f"output kind {kind.name!r}: per must be 'variant' or 'image', not {kind.per!r}")
    OUTPUT_KINDS[kind.name] = kind
    return kind


def output_kind_names() -> tuple[str, ...]:
    """The ``--outputs`` choices, in writing order."""
    return tuple(OUTPUT_KINDS)


register_output_kind(OutputKind("maps", ".npy", "variant", map_file, lambda job: _npy(job.map)))
register_output_kind(OutputKind("overlays", ".png", "variant", overlay_file, _overlay))
register_output_kind(OutputKind("figures", ".png", "image", figure_file, _figure))
assert output_kind_names() == BUILTIN_OUTPUT_KINDS


def write_image(
    rundir: RunDir,
    item: PlannedImage,
    explained: Explained,
    loaded: LoadedModel,
    variants: Sequence[Smoothing],
    methods: Sequence[str],
    outputs: Sequence[str],
    *,
    alpha: float,
    colormap: str,
) -> ImageRecord:
    """Write one image's files of the ``outputs`` kinds (per explained target: each variant's
    files, then the image's; a segment target's region mask); return its manifest record.

    A classifier run names its files as it always did (``<stem>``, ``<stem>.topN``); a run of
    another task names each target (``<stem>__dog_03``), records it (:class:`ExplainedTarget`)
    and draws its box or mask outline on its overlays and figures."""
    photo = loaded.preprocess.frame(explained.photo)
    probs = explained.probs
    assert probs is not None
    task_run = explained.task is not None
    targets = explained.explained if task_run and explained.explained is not None else None
    k = len(targets) if targets is not None else len(explained.targets)
    top = probs.topk(min(5, probs.numel()))
    top5 = [] if task_run and explained.task not in CLASS_TASKS else [
        _score(loaded, int(c), float(p)) for p, c in zip(top.values, top.indices, strict=True)]
    truth = _true_class(item.path, item.rel, loaded)
    kinds = [OUTPUT_KINDS[name] for name in OUTPUT_KINDS if name in outputs]
    files: dict[str, list[str]] = {}
    figures: list[str] = []
    extra: dict[str, list[str]] = {}
    scores: list[ClassScore] = []
    records: list[ExplainedTarget] = []
    frame = (int(loaded.preprocess.size[0]), int(loaded.preprocess.size[1]))
    for rank in range(k):
        cls = int(explained.targets[rank]) if rank < len(explained.targets) else -1
        region = None
        if targets is None:
            stem = target_stem(item.stem, rank, k)
            label = f"{_class_name(loaded, cls)} {float(probs[cls]):.1%}"
            scores.append(_score(loaded, cls, float(probs[cls])))
        else:
            t = targets[rank]
            name = t.name(loaded.categories)
            stem = target_stem(item.stem, rank, k, name)
            score = explained.scores[rank] if rank < len(explained.scores) else float("nan")
            tprob = explained.probabilities[rank] if rank < len(explained.probabilities) else None
            label = target_caption(t, name, score, probs, tprob)
            region = target_region(t, frame)
            mask_rel = None
            if region is not None and region.mask is not None:
                mask_rel = region_file(stem)
                rundir.write_png(mask_rel, png_bytes(Image.fromarray((region.mask > 0).astype(np.uint8) * 255)))
            records.append(_explained_record(t, name, score, stem, mask_rel, explained.photo.size, loaded))
            scores.append(ClassScore(int(t.label), name, _target_prob(t, score, probs, tprob)))
        title = figure_title(item.rel, label, None if truth is None else _class_name(loaded, truth), loaded.weights)
        job = OutputJob(photo, rank, cls, label, title, explained.maps, methods, variants, alpha, colormap, region=region)
        for variant in variants:
            for m in methods:
                name = variant_name(m, variant.parts)
                one = _with_variant(job, name, explained.maps[name][rank])
                for kind in (kk for kk in kinds if kk.per == "variant"):
                    rel = kind.path(name, stem)
                    rundir.write_bytes(rel, kind.write(one))
                    if kind.name not in BUILTIN_OUTPUT_KINDS:
                        extra.setdefault(kind.name, []).append(rel)
                # the record lists an overlay before its map (the historical order)
                listed = [kk.path(name, stem) for kk in (OUTPUT_KINDS["overlays"], OUTPUT_KINDS["maps"]) if kk.name in outputs]
                files.setdefault(name, []).extend(listed)
        for kind in (kk for kk in kinds if kk.per == "image"):
            rel = kind.path(stem)
            rundir.write_bytes(rel, kind.write(job))
            (figures if kind.name == "figures" else extra.setdefault(kind.name, [])).append(rel)
    return ImageRecord(
        source=str(item.path),
        size=tuple(explained.photo.size),
        top5=top5,
        targets=scores,
        true_class=truth,
        true_name=None if truth is None else _class_name(loaded, truth),
        correct=None if truth is None or not top5 else bool(top5[0].index == truth),
        files=files,
        figures=figures,
        outputs=extra,
        explained=records if task_run else None,
    )


CLASS_TASKS = ("classify", "probability", "multilabel", "contrast", "zeroshot")
"""Tasks whose model output is class logits (their record keeps the top-5 classes)."""


def _target_prob(target: Any, score: float, probs: Any, prob: float | None = None) -> float:
    """The ``prob`` a task run records of a target: the softmax probability of its class for
    class logits, a detection's confidence, a segment's mean softmax probability over its
    region, a label's sigmoid, else its score (a cosine...)."""
    kind = getattr(target, "kind", "custom")
    label = int(getattr(target, "label", -1))
    if kind in ("logit", "probability", "contrast") and 0 <= label < probs.numel():
        return round(float(probs[label]), 6)
    found = getattr(target, "detected_score", None)
    if found is not None:
        return round(float(found), 6)
    if prob is not None and math.isfinite(prob):
        return round(float(prob), 6)
    return round(float(score), 6)


def _explained_record(
    target: Any, name: str, score: float, stem: str, mask: str | None, photo_size: tuple[int, int], loaded: LoadedModel,
) -> ExplainedTarget:
    from camscope.run.tasks import input_box_to_photo

    details = dict(target.describe())
    kind = str(details.pop("kind", getattr(target, "kind", "custom")))
    details.pop("class", None)
    if "score" in details:  # a detection's confidence on the photo (``score`` is the explained score)
        details["confidence"] = details.pop("score")
    box = details.get("box")
    box_photo = None if box is None else input_box_to_photo(box, photo_size, loaded.preprocess)
    return ExplainedTarget(kind, name, int(getattr(target, "label", -1)), round(float(score), 6), stem, details, box_photo, mask)


def _with_variant(job: OutputJob, variant: str, saliency: np.ndarray) -> OutputJob:
    return replace(job, variant=variant, map=saliency)


def _true_class(path: Path, rel: str, loaded: LoadedModel) -> int | None:
    if loaded.wnids is None:
        return None
    wnid = wnid_from_name(path.name) or wnid_from_name(rel)
    if wnid is None or wnid not in loaded.wnids:
        return None
    return loaded.wnids.index(wnid)


def _class_name(loaded: LoadedModel, idx: int) -> str:
    if loaded.categories is not None and 0 <= idx < len(loaded.categories):
        return loaded.categories[idx]
    return f"class {idx}"


def _score(loaded: LoadedModel, idx: int, prob: float) -> ClassScore:
    return ClassScore(idx, _class_name(loaded, idx), round(prob, 6))
