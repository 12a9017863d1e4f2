"""Targets: what a CAM explains. A target turns the model's output into one score per image.

The model's output may be a tensor (classifier logits, an embedding, per-pixel logits), a dict
(torchvision segmenters: ``{"out": ...}``), a list of dicts (torchvision detectors: one
``{"boxes", "labels", "scores"}`` per image) or a Hugging Face ``ModelOutput``. A
:class:`Target` reads what it needs (:func:`logits_of`, :func:`detections_of`,
:func:`embedding_of`) and returns, for the images ``index`` of the batch, one score each.
Methods consume scores only: gradient methods differentiate the score, Ablation-CAM evaluates
it on the tail's output for ablated activations and Score-CAM on the full output for masked
inputs (:func:`score_matrix`).

Every kind of target is one file in this package and one ``@register_target`` registration;
the registration names the *task* whose default targets it makes (``select``): ``classify``
(the top-k class logits), ``segment``, ``detect``, ``embed``... A user's own target is any
callable ``fn(output) -> (N,) scores`` (wrapped by :class:`CallableTarget`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from camscope.errors import UsageError

__all__ = [
    "Target",
    "TargetKind",
    "Task",
    "TARGETS",
    "TASKS",
    "register_target",
    "get_target_kind",
    "target_names",
    "task_names",
    "logits_of",
    "detections_of",
    "embedding_of",
    "output_batch_size",
    "infer_task",
    "resolve_targets",
    "row_scores",
    "score_matrix",
    "CallableTarget",
    "targets_markdown",
]


# --------------------------------------------------------------------------- reading outputs


def logits_of(output: Any) -> Tensor:
    """The logits in a model output: the tensor itself, ``output["out"]`` (torchvision
    segmenters), ``output.logits`` / ``output["logits"]`` (Hugging Face), or the first element
    of a tuple. (N, C) for classifiers, (N, C, H, W) for segmenters."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        for key in ("out", "logits"):
            if key in output and isinstance(output[key], Tensor):
                return output[key]
    value = getattr(output, "logits", None)
    if isinstance(value, Tensor):
        return value
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise UsageError(f"the model's output ({_describe(output)}) holds no logits; use a target for its kind of output")


def detections_of(output: Any) -> list[Mapping[str, Tensor]]:
    """The per-image detections of a detector: a list of dicts with ``boxes`` (n,4, x0 y0 x1 y1
    in input pixels), ``labels`` (n,) and ``scores`` (n,), as torchvision detectors return."""
    if isinstance(output, (list, tuple)) and all(isinstance(d, Mapping) and "boxes" in d for d in output):
        return list(output)
    if _get(output, "pred_boxes") is not None and _get(output, "logits") is not None:
        raise UsageError(
            "the model's output is a set-prediction detector's (logits and normalised pred_boxes, "
            "e.g. DETR): load it with camscope.load_model('hf/...') or wrap it in "
            "camscope.models.hf_source.HuggingFaceDetector, which gives boxes in input pixels"
        )
    raise UsageError(f"the model's output ({_describe(output)}) is not a detector's list of boxes, labels and scores")


def _get(output: Any, key: str) -> Any:
    return output.get(key) if isinstance(output, Mapping) else getattr(output, key, None)


def embedding_of(output: Any) -> Tensor:
    """The (N, D) embedding in a model output: a 2-D tensor, or ``image_embeds`` /
    ``pooler_output`` / ``embedding`` of a dict or Hugging Face output."""
    if isinstance(output, Tensor) and output.dim() == 2:
        return output
    for key in ("image_embeds", "embeds", "embedding", "pooler_output"):
        value = output.get(key) if isinstance(output, Mapping) else getattr(output, key, None)
        if isinstance(value, Tensor):
            return value.flatten(1)
    raise UsageError(f"the model's output ({_describe(output)}) is not an (N, D) embedding")


def output_batch_size(output: Any) -> int:
    """Number of images a model output describes."""
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], Mapping):
        return len(output)
    try:
        return int(logits_of(output).shape[0])
    except UsageError:
        return int(embedding_of(output).shape[0])


def _describe(output: Any) -> str:
    if isinstance(output, Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    if isinstance(output, Mapping):
        return f"a {type(output).__name__} with keys {', '.join(map(str, list(output)[:6]))}"
    if isinstance(output, (list, tuple)):
        return f"a {type(output).__name__} of {len(output)} {type(output[0]).__name__ if output else 'items'}"
    return f"a {type(output).__name__}"


def infer_task(output: Any) -> str:
    """The default task for a model output: ``detect`` for a list of box dicts, ``segment`` for
    per-pixel logits (N, C, H, W), else ``classify``."""
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], Mapping) and "boxes" in output[0]:
        return "detect"
    try:
        logits = logits_of(output)
    except UsageError:
        return "embed"
    return "segment" if logits.dim() == 4 else "classify"


# --------------------------------------------------------------------------- targets


class Target:
    """One thing to explain in one image: ``score(output, index)`` -> (len(index),) scores.

    ``index`` (a LongTensor, or None for every image) says which images of the batch the output
    describes are scored. ``probability`` is the score Score-CAM weighs masks by (the paper
    uses the softmax probability of a class; a target without one uses its score). ``spatial``
    targets (a box, a mask) are tied to the image's geometry, so augmented views cannot share
    them. ``label`` is the class index where the target has one, else -1.
    """

    kind: ClassVar[str] = "custom"
    spatial: ClassVar[bool] = False
    label: int = -1

    def score(self, output: Any, index: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def probability(self, output: Any, index: Tensor | None = None) -> Tensor:
        return self.score(output, index)

    def name(self, categories: Sequence[str] | None = None) -> str:
        """A short readable name (for file names and figures)."""
        return self.kind

    def describe(self) -> dict[str, Any]:
        """What the manifest records of this target."""
        return {"kind": self.kind}

    # vectorised scoring of several targets of this kind; the default loops.
    @classmethod
    def scores_at(cls, targets: Sequence[Target], output: Any, items: Tensor) -> Tensor:
        """Score of ``targets[i]`` on image ``items[i]``: (len(targets),)."""
        return torch.cat([t.score(output, items[i : i + 1]) for i, t in enumerate(targets)])

    @classmethod
    def score_columns(cls, targets: Sequence[Target], output: Any, probability: bool) -> Tensor:
        """Every target on every image of ``output``: (N, len(targets))."""
        fn = (lambda t: t.probability(output)) if probability else (lambda t: t.score(output))
        return torch.stack([fn(t) for t in targets], dim=1)


def class_name(label: int, categories: Sequence[str] | None) -> str:
    if categories is not None and 0 <= label < len(categories):
        return str(categories[label])
    return f"class {label}"


def _take(values: Tensor, index: Tensor | None) -> Tensor:
    return values if index is None else values[index.to(values.device)]


class CallableTarget(Target):
    """A user's own target: ``fn(output) -> (N,)`` scores, one per image of the batch (a scalar
    is accepted for a batch of one)."""

    kind = "custom"

    def __init__(self, fn: Callable[[Any], Tensor], name: str | None = None, spatial: bool = False) -> None:
        self.fn = fn
        self._name = name or getattr(fn, "__name__", type(fn).__name__)
        self.spatial = spatial  # type: ignore[misc]

    def score(self, output: Any, index: Tensor | None = None) -> Tensor:
        s = self.fn(output)
        if not isinstance(s, Tensor):
            raise UsageError(f"target {self._name!r} returned {type(s).__name__}, not a tensor of scores")
        s = s.reshape(-1) if s.dim() == 0 else s
        if s.dim() != 1:
            raise UsageError(f"target {self._name!r} returned shape {tuple(s.shape)}; return one score per image (N,)")
        return _take(s, index)

    def name(self, categories: Sequence[str] | None = None) -> str:
        return self._name

    def describe(self) -> dict[str, Any]:
        return {"kind": "custom", "name": self._name}


# --------------------------------------------------------------------------- tasks and the registry


@dataclass
class Task:
    """Which targets to explain when none are given, and the options of their kind.

    Attributes:
        name: ``classify``, ``probability``, ``multilabel``, ``contrast``, ``segment``,
            ``detect``, ``embed``, ``zeroshot`` (a registered task; None: from the output).
        top_k: at most this many targets per image (None: the kind's default).
        classes: classes to explain (indices), for every image (``--class``).
        contrast: the class ``d`` of contrast targets (``logit_c - logit_d``).
        score_threshold: detections / multi-label scores at or above it (None: kind's default).
        boxes: (x0, y0, x1, y1, label or None) boxes: detection targets matching them, or the
            region of a segment target.
        mask: a (H, W) region for segment targets (instead of the predicted mask).
        concept: the (D,) concept embedding of similarity targets.
        iou_threshold: least IoU of a detection matching a given box.
        background: segmentation class never chosen by default (None: none).
    """

    name: str | None = None
    top_k: int | None = None
    classes: Sequence[int] | None = None
    contrast: int | None = None
    score_threshold: float | None = None
    boxes: Sequence[Sequence[Any]] | None = None
    mask: Any = None
    concept: Tensor | None = None
    concept_name: str | None = None
    iou_threshold: float = 0.5
    background: int | None = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, task: str | Task | None) -> Task:
        if isinstance(task, Task):
            return task
        return cls(name=task)

    def kind(self, output: Any) -> TargetKind:
        name = self.name or infer_task(output)
        if name not in TASKS:
            raise UsageError(f"unknown task {name!r}; choose from: {', '.join(TASKS)}")
        return TARGETS[TASKS[name]]


@dataclass(frozen=True)
class TargetKind:
    """A registered kind of target.

    ``select(output, items, task, size)`` makes the default targets of each image ``items[i]``
    of ``output`` (a list per image); ``for_class(label, output, item, task, size)`` the
    target of an explicitly requested class. ``size`` is the input's (H, W).
    """

    name: str
    title: str
    cls: type[Target]
    equation: str
    task: str | None
    select: Callable[..., list[list[Target]]] | None
    for_class: Callable[..., Target] | None


TARGETS: dict[str, TargetKind] = {}
TASKS: dict[str, str] = {}
"""task name -> the target kind that makes its default targets."""


def register_target(
    name: str, *, title: str, equation: str, task: str | tuple[str, ...] | None = None,
) -> Callable[[type[Target]], type[Target]]:
    """Class decorator registering a :class:`Target` subclass as kind ``name``; its classmethods
    ``select`` and ``for_class`` (when defined) make default and per-class targets."""

    def deco(cls: type[Target]) -> type[Target]:
        if name in TARGETS:
            raise ValueError(f"target {name!r} is registered twice")
        cls.kind = name
        tasks = (task,) if isinstance(task, str) else tuple(task or ())
        TARGETS[name] = TargetKind(
            name, title, cls, equation, tasks[0] if tasks else None,
            getattr(cls, "select", None), getattr(cls, "for_class", None),
        )
        for t in tasks:
            if t in TASKS:
                raise ValueError(f"task {t!r} is registered twice")
            TASKS[t] = name
        return cls

    return deco


def get_target_kind(name: str) -> TargetKind:
    key = name.strip().lower()
    if key in TASKS:
        key = TASKS[key]
    if key not in TARGETS:
        raise UsageError(f"unknown target {name!r}; choose from: {', '.join(TARGETS)}")
    return TARGETS[key]


def target_names() -> list[str]:
    return list(TARGETS)


def task_names() -> list[str]:
    return list(TASKS)


# --------------------------------------------------------------------------- resolving and scoring


TargetsArg = Any
"""None | a Target | a callable | per image: an int, a Target, a callable, or a list of those."""


def resolve_targets(
    targets: TargetsArg, task: str | Task | None, output: Any, items: Sequence[int], size: tuple[int, int],
    top_k: int | None = None,
) -> list[list[Target]]:
    """The targets of each image ``items[i]`` of ``output`` (the model's output on the batch).

    ``targets``: None (the task's defaults), one :class:`Target` or callable for every image, or
    one entry per image: a class index (the task's target of that class), a Target, a callable,
    or a list of those.
    """
    t = Task.parse(task)
    if top_k is not None and t.top_k is None:
        t = _replace(t, top_k=top_k)
    kind = t.kind(output)
    if targets is None:
        if t.classes is not None:
            return [[_for_class(kind, c, output, i, t, size) for c in t.classes] for i in items]
        if kind.select is None:
            raise UsageError(f"target {kind.name!r} has no default targets; give targets explicitly")
        return kind.select(output, list(items), t, size)
    if isinstance(targets, Target) or (callable(targets) and not isinstance(targets, (list, tuple))):
        return [[_one(targets, kind, output, i, t, size)] for i in items]
    per_image = list(targets)
    if len(per_image) != len(items):
        raise UsageError(f"{len(per_image)} target lists for {len(items)} images")
    out = []
    for entry, i in zip(per_image, items, strict=True):
        entries = entry if isinstance(entry, (list, tuple)) else [entry]
        out.append([_one(e, kind, output, i, t, size) for e in entries])
    return out


def _replace(task: Task, **changes: Any) -> Task:
    from dataclasses import replace

    return replace(task, **changes)


def _one(entry: Any, kind: TargetKind, output: Any, item: int, task: Task, size: tuple[int, int]) -> Target:
    if isinstance(entry, Target):
        return entry
    if isinstance(entry, (int, torch.Tensor)) and not callable(entry):
        return _for_class(kind, int(entry), output, item, task, size)
    if callable(entry):
        return CallableTarget(entry)
    raise UsageError(f"a target must be a class index, a camscope Target or a callable, not {type(entry).__name__}")


def _for_class(kind: TargetKind, label: int, output: Any, item: int, task: Task, size: tuple[int, int]) -> Target:
    if kind.for_class is None:
        raise UsageError(f"target {kind.name!r} takes no class; give Target objects")
    return kind.for_class(int(label), output, item, task, size)


def check_class(label: int, num_classes: int, what: str = "the model") -> None:
    """One line when ``label`` is not a class of a model with ``num_classes`` outputs."""
    if not 0 <= label < num_classes:
        raise UsageError(f"class {label} is out of range: {what} has {num_classes} classes (0..{num_classes - 1})")


def row_scores(targets: Sequence[Target], output: Any, items: Tensor) -> Tensor:
    """Score of ``targets[i]`` on image ``items[i]`` of ``output``: (len(targets),); targets of
    one kind are scored together."""
    kinds = {type(t) for t in targets}
    if len(kinds) == 1:
        return next(iter(kinds)).scores_at(targets, output, items)
    return torch.cat([t.score(output, items[i : i + 1]) for i, t in enumerate(targets)])


def score_matrix(targets: Sequence[Target], output: Any, *, probability: bool = False) -> Tensor:
    """Every target on every image of ``output``: (N, len(targets)); ``probability``: the
    targets' probability (Score-CAM) instead of their score."""
    kinds = {type(t) for t in targets}
    if len(kinds) == 1:
        return next(iter(kinds)).score_columns(targets, output, probability)
    return torch.stack([t.probability(output) if probability else t.score(output) for t in targets], dim=1)


def targets_markdown() -> str:
    """The README's table of target kinds, from the registry."""
    lines = ["| target | `task=` | score s (differentiated / evaluated by the methods) |", "|---|---|---|"]
    for k in TARGETS.values():
        tasks = ", ".join(f"`{t}`" for t, name in TASKS.items() if name == k.name) or "-"
        lines.append(f"| `{k.name}`: {k.title} | {tasks} | {k.equation} |")
    return "\n".join(lines)
