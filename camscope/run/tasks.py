"""The task of an explain run (``--task`` and the flags that choose its targets): checked
against the model once, before any work, into a :class:`TaskSetup` the explainer uses.

* ``classify`` (a classifier's default): the run is a classifier run as it always was (its file
  names, settings and ``predictions.csv`` unchanged); :func:`setup_task` returns None.
* ``segment`` (``--class``), ``detect`` (``--box``, ``--score-threshold``, ``--top-k``),
  ``embed`` (``--concept TEXT|IMAGE``), ``zeroshot`` (``--labels FILE``: the prompts),
  ``multilabel`` (``--score-threshold``), ``contrast`` (``--contrast CLASS``), ``probability``.

The default task comes from the model: torchvision segmenters and detectors name theirs, a CLIP
model is ``embed`` with ``--concept`` and ``zeroshot`` with ``--labels``, ``--contrast`` makes
``contrast``; otherwise ``classify``. A CLIP model is wrapped for its task
(:class:`~camscope.models.clip.ClipImageEncoder`, :class:`~camscope.models.clip.ClipZeroShot`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from camscope.core.capture import model_state_guard
from camscope.errors import UsageError
from camscope.io.images import IMAGE_EXTENSIONS
from camscope.models import LoadedModel, Preprocess, class_index
from camscope.targets import Detection, Task, infer_task, logits_of, task_names
from camscope.targets.registry import _describe

__all__ = ["TaskSetup", "setup_task", "parse_box", "photo_box_to_input", "input_box_to_photo", "CLASSIFY"]

CLASSIFY = "classify"

_BOX = re.compile(r"\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*(?::\s*(.+?)\s*)?")


@dataclass
class TaskSetup:
    """A checked task: its name, the :class:`~camscope.targets.Task` the engine gets, the
    ``--box`` boxes in photo pixels (converted per photo), and what the settings record."""

    name: str
    task: Task
    boxes: list[tuple[float, float, float, float, int | None]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    top_k: int = 1

    def targets_for(self, photo_sizes: Sequence[tuple[int, int]], pre: Preprocess) -> list[list[Any]] | None:
        """Explicit targets per image (the ``--box`` detections, in each input's pixels), or
        None for the task's own choice."""
        if not self.boxes:
            return None
        return [
            [Detection(photo_box_to_input(b[:4], size, pre), b[4], self.task.iou_threshold) for b in self.boxes]
            for size in photo_sizes
        ]


def parse_box(spec: str, categories: Sequence[str] | None) -> tuple[float, float, float, float, int | None]:
    """``--box x0,y0,x1,y1[:label]`` (photo pixels; label: a class index or name)."""
    m = _BOX.fullmatch(spec)
    if m is None:
        raise UsageError(f"--box {spec!r}: expected x0,y0,x1,y1 or x0,y0,x1,y1:label (photo pixels)")
    try:
        x0, y0, x1, y1 = (float(m.group(i)) for i in range(1, 5))
    except ValueError:
        raise UsageError(f"--box {spec!r}: expected four numbers x0,y0,x1,y1") from None
    if not (x0 < x1 and y0 < y1):
        raise UsageError(f"--box {spec!r} is empty: give x0,y0,x1,y1 with x0 < x1 and y0 < y1")
    label = None
    if m.group(5):
        n = len(categories) if categories is not None else 1 << 30
        try:
            label = class_index(m.group(5), categories, n)
        except UsageError as exc:
            raise UsageError(f"--box {spec!r}: {str(exc).removeprefix('--class ')}") from None
    return x0, y0, x1, y1, label


def _scale(pre: Preprocess, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """(sx, sy, left, top): input pixel = photo pixel * s - offset, for a photo of ``size`` (W, H)."""
    w, h = size
    H, W = pre.size
    if pre.mode == "classic":
        return W / w, H / h, 0.0, 0.0
    r = pre.resize or min(pre.size)
    scale = r / min(h, w)
    nh, nw = max(round(h * scale), H), max(round(w * scale), W)
    return nw / w, nh / h, float((nw - W) // 2), float((nh - H) // 2)


def photo_box_to_input(box: Sequence[float], size: tuple[int, int], pre: Preprocess) -> list[float]:
    """A box in the pixels of a photo of ``size`` (W, H) -> the model input's pixels."""
    sx, sy, left, top = _scale(pre, size)
    return [box[0] * sx - left, box[1] * sy - top, box[2] * sx - left, box[3] * sy - top]


def input_box_to_photo(box: Sequence[float], size: tuple[int, int], pre: Preprocess) -> tuple[float, float, float, float]:
    """A box in the model input's pixels -> the pixels of the photo of ``size`` (W, H)."""
    sx, sy, left, top = _scale(pre, size)
    return (round((box[0] + left) / sx, 2), round((box[1] + top) / sy, 2),
            round((box[2] + left) / sx, 2), round((box[3] + top) / sy, 2))


def _is_clip(model: Any) -> bool:
    from camscope.models.clip import is_clip

    return is_clip(model)


def _probe(loaded: LoadedModel, device: torch.device) -> Any:
    h, w = loaded.preprocess.size
    with model_state_guard(loaded.model), torch.inference_mode():
        return loaded.model(torch.zeros(1, 3, h, w, device=device))


def _refuse(flag: str, task: str, fits: str) -> UsageError:
    return UsageError(f"{flag} applies to {fits} only; this run's task is {task}")


def setup_task(opts: Any, loaded: LoadedModel, photos: Sequence[tuple[str, Path]], device: torch.device) -> TaskSetup | None:
    """Check the task flags of ``opts`` against the model (one probe forward on zeros), wrap a
    CLIP model for its task, and embed the concept; None for a classifier run. ``photos``:
    (relative name, path) of every input, whose sizes the ``--box`` boxes must fit."""
    name = opts.task
    if name is not None and name not in task_names():
        raise UsageError(f"unknown --task {name!r}; choose from: {', '.join(task_names())}")
    clip = _is_clip(loaded.model)
    if clip:
        name = _wrap_clip(opts, loaded, name)
    elif name == "zeroshot":
        raise UsageError(f"--task zeroshot needs a CLIP model (open_clip or transformers CLIPModel); {loaded.name} is not one")
    if name is None:
        info = loaded.info.get("task") if isinstance(getattr(loaded, "info", None), dict) else None
        name = info or ("contrast" if opts.contrast is not None else ("embed" if opts.concept is not None else None))
    plain = not (opts.target_boxes or opts.score_threshold is not None or opts.concept is not None)
    if name is None and plain:
        return None  # a classifier run, as it always was
    name = name or CLASSIFY
    output = _probe(loaded, device)
    kind = infer_task(output)
    what = f"{loaded.name}'s output is {_describe(output)}"
    if name == CLASSIFY and kind == "classify" and plain:
        return None  # --task classify given: the classifier run it always was
    if kind == "detect" and name != "detect":
        raise UsageError(f"--task {name} does not fit a detector ({what}); use --task detect")
    if kind == "segment" and name != "segment":
        raise UsageError(f"--task {name} does not fit a segmenter ({what}); use --task segment")
    if name == "detect" and kind != "detect":
        raise UsageError(f"--task detect needs a detector (a list of boxes, labels and scores per image); {what}")
    if name == "segment" and kind != "segment":
        raise UsageError(f"--task segment needs per-pixel logits (N, C, H, W); {what}")
    num_classes = None
    if kind in ("segment", "classify"):
        num_classes = int(logits_of(output).shape[1])
    categories = loaded.categories
    if categories is not None and num_classes is not None and name != "embed" and len(categories) != num_classes:
        raise UsageError(f"the labels give {len(categories)} class names but the model has {num_classes} outputs")
    # ---- flags that belong to other tasks: one line each --------------------------------------
    if opts.target_boxes and name != "detect":
        raise _refuse("--box", name, "--task detect")
    if opts.score_threshold is not None and name not in ("detect", "multilabel"):
        raise _refuse("--score-threshold", name, "--task detect and --task multilabel")
    if opts.concept is not None and name != "embed":
        raise _refuse("--concept", name, "--task embed")
    if opts.contrast is not None and name not in (CLASSIFY, "contrast"):
        raise _refuse("--contrast", name, "--task contrast")
    if opts.contrast is not None:
        name = "contrast"
    if opts.target_class is not None and name in ("detect", "embed"):
        hint = "--box x0,y0,x1,y1:label" if name == "detect" else "--concept TEXT|IMAGE"
        raise UsageError(f"--class applies to class and segment tasks; for --task {name} give {hint}")
    task = Task(name=name, top_k=opts.top_k, score_threshold=opts.score_threshold)
    options: dict[str, Any] = {}
    if opts.target_class is not None:
        assert num_classes is not None
        task.classes = [class_index(opts.target_class, categories, num_classes)]
    if opts.contrast is not None:
        assert num_classes is not None
        try:
            task.contrast = class_index(opts.contrast, categories, num_classes)
        except UsageError as exc:
            raise UsageError(str(exc).replace("--class", "--contrast", 1)) from None
        options["contrast"] = task.contrast
    if opts.score_threshold is not None:
        if not 0.0 <= opts.score_threshold <= 1.0:
            raise UsageError(f"--score-threshold must be in [0, 1], not {opts.score_threshold}")
        options["score_threshold"] = opts.score_threshold
    boxes = [parse_box(b, categories) for b in opts.target_boxes or ()]
    if boxes:
        _check_boxes_fit(boxes, list(opts.target_boxes), photos)
        options["boxes"] = list(opts.target_boxes)
    if name == "embed":
        _embed_concept(opts, loaded, task, device)
        from camscope.targets import embedding_of

        dims = int(embedding_of(output).shape[1])
        if task.concept is not None and int(task.concept.numel()) != dims:
            raise UsageError(f"--concept {opts.concept!r} embeds to {int(task.concept.numel())} dimensions, "
                             f"{loaded.name}'s image embedding has {dims}")
        options["concept"] = opts.concept  # as given: a prompt, or the reference image's path
    if name == "zeroshot":
        options["prompts"] = list(categories or ())
    from camscope.targets import TARGETS, TASKS

    default_k = {"detect": 10, "multilabel": 10}.get(name, 1)
    top_k = 1 if task.classes else (opts.top_k or default_k)
    if TARGETS[TASKS[name]].cls is Detection and boxes:
        top_k = len(boxes)
    return TaskSetup(name, task, boxes, options, num_classes, top_k)


def _wrap_clip(opts: Any, loaded: LoadedModel, name: str | None) -> str:
    """Wrap a CLIP model for its task (``embed``: the image tower; ``zeroshot``: logits over
    the ``--labels`` prompts); the task's name."""
    from camscope.models.clip import ClipImageEncoder, ClipZeroShot

    if name is None:
        if opts.concept is not None:
            name = "embed"
        elif loaded.categories is not None:
            name = "zeroshot"
        else:
            raise UsageError(f"{loaded.name} is a CLIP model: explain --task embed --concept TEXT|IMAGE, or "
                             "--task zeroshot --labels PROMPTS.txt (one prompt per line)")
    if name == "embed":
        loaded.model = ClipImageEncoder(loaded.model)
    elif name == "zeroshot":
        if not loaded.categories:
            raise UsageError("--task zeroshot needs its prompts: --labels FILE, one prompt per line")
        loaded.model = ClipZeroShot(loaded.model, list(loaded.categories))
    else:
        raise UsageError(f"{loaded.name} is a CLIP model: --task {name} does not fit it; use --task embed or zeroshot")
    return name


def _check_boxes_fit(boxes: list[tuple[Any, ...]], specs: list[str], photos: Sequence[tuple[str, Path]]) -> None:
    """Every ``--box`` must lie inside every photo (read from the file headers only)."""
    from PIL import Image

    for rel, path in photos:
        try:
            with Image.open(path) as im:
                w, h = im.size
        except Exception:  # an unreadable photo fails on its own later, with its reason
            continue
        for b, spec in zip(boxes, specs, strict=True):
            if b[0] < 0 or b[1] < 0 or b[2] > w or b[3] > h:
                raise UsageError(f"--box {spec}: outside photo {rel} ({w}x{h} pixels)")


def _embed_concept(opts: Any, loaded: LoadedModel, task: Task, device: torch.device) -> None:
    """``--concept``: a reference image file (embedded by the model) or a text prompt (embedded
    by the CLIP model's text tower)."""
    from camscope.models.clip import ClipImageEncoder, concept_embedding

    concept = opts.concept
    if concept is None:
        raise UsageError("--task embed needs a concept: --concept TEXT (with a CLIP model) or --concept IMAGE")
    path = Path(concept)
    looks_like_file = path.suffix.lower() in IMAGE_EXTENSIONS
    with model_state_guard(loaded.model):
        if path.is_file():
            from camscope.io.images import load_image

            x = loaded.preprocess.to_tensor(load_image(path)).to(device)
            task.concept = concept_embedding(x, loaded.model)
            task.concept_name = path.stem
        elif looks_like_file:
            raise UsageError(f"--concept {concept}: no such image file")
        else:
            if not isinstance(loaded.model, ClipImageEncoder):
                raise UsageError(f"--concept {concept!r} is text: embedding it needs a CLIP model (open_clip or "
                                 f"transformers CLIPModel), and {loaded.name} is not one; give a reference image instead")
            task.concept = concept_embedding(concept, loaded.model)
            task.concept_name = concept
