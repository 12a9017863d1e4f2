"""Contrast: y_c - y_d, "why c rather than d" (the score Finer-CAM builds on)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from camscope.errors import UsageError
from camscope.targets.classify import _classifier_logits
from camscope.targets.registry import Target, Task, _take, check_class, class_name, register_target


@register_target(
    "contrast", title="contrast of two classes", equation="s = y_c - y_d", task="contrast",
)
class Contrast(Target):
    """The difference of two logits, ``y_c - y_d``: the evidence for ``c`` that is not also
    evidence for ``d`` (Zhang et al., Finer-CAM, CVPR 2025, use it with a weight on ``d``)."""

    def __init__(self, label: int, other: int) -> None:
        self.label, self.other = int(label), int(other)

    def score(self, output: Any, index: Tensor | None = None) -> Tensor:
        logits = _classifier_logits(output)
        return _take(logits[:, self.label] - logits[:, self.other], index)

    def name(self, categories: Sequence[str] | None = None) -> str:
        return f"{class_name(self.label, categories)}-vs-{class_name(self.other, categories)}"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "class": self.label, "contrast": self.other}

    @classmethod
    def select(cls, output: Any, items: list[int], task: Task, size: tuple[int, int]) -> list[list[Target]]:
        """The ``top_k`` (default 1) predicted classes, each against ``task.contrast``
        (default: the next most likely class)."""
        logits = _classifier_logits(output).detach()[items]
        k = min(task.top_k or 1, logits.shape[1])
        out: list[list[Target]] = []
        for row in logits:
            order = row.topk(min(k + 1, row.shape[0])).indices.tolist()
            if task.contrast is not None:
                check_class(task.contrast, row.shape[0])
                out.append([cls(c, task.contrast) for c in order[:k] if c != task.contrast])
            else:
                if len(order) < 2:
                    raise UsageError("a contrast target needs a model with at least two classes")
                out.append([cls(order[0], order[1])])
        return out

    @classmethod
    def for_class(cls, label: int, output: Any, item: int, task: Task, size: tuple[int, int]) -> Target:
        n = _classifier_logits(output).shape[1]
        check_class(label, n)
        if task.contrast is None:
            raise UsageError("a contrast target needs the class to contrast with (contrast=, --contrast CLASS)")
        check_class(task.contrast, n)
        return cls(label, task.contrast)
