"""Targets: what a CAM explains (see :mod:`camscope.targets.registry`). Importing this package
registers the built-in kinds, in table order."""

import importlib

from camscope.targets.registry import (
    TARGETS,
    TASKS,
    CallableTarget,
    Target,
    TargetKind,
    Task,
    detections_of,
    embedding_of,
    get_target_kind,
    infer_task,
    logits_of,
    register_target,
    resolve_targets,
    row_scores,
    score_matrix,
    target_names,
    targets_markdown,
    task_names,
)

BUILTIN_MODULES = ("classify", "probability", "multilabel", "contrast", "segmentation", "detection", "similarity")

for _module in BUILTIN_MODULES:
    importlib.import_module(f"camscope.targets.{_module}")

from camscope.targets.classify import ClassLogit  # noqa: E402
from camscope.targets.contrast import Contrast  # noqa: E402
from camscope.targets.detection import Detection  # noqa: E402
from camscope.targets.multilabel import MultiLabel  # noqa: E402
from camscope.targets.probability import ClassProbability  # noqa: E402
from camscope.targets.segmentation import SegmentRegion  # noqa: E402
from camscope.targets.similarity import Similarity  # noqa: E402

__all__ = [
    "TARGETS", "TASKS", "Target", "TargetKind", "Task", "CallableTarget", "register_target", "get_target_kind",
    "target_names", "task_names", "resolve_targets", "row_scores", "score_matrix", "logits_of", "detections_of",
    "embedding_of", "infer_task", "targets_markdown", "ClassLogit", "ClassProbability", "MultiLabel", "Contrast", "SegmentRegion",
    "Detection", "Similarity", "BUILTIN_MODULES",
]
