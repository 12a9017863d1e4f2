"""Class logit: the score of class c is its logit y_c (the default target of classifiers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from camscope.targets.registry import (
    Target,
    Task,
    _take,
    check_class,
    class_name,
    logits_of,
    register_target,
)


def _classifier_logits(output: Any) -> Tensor:
    logits = logits_of(output)
    if logits.dim() != 2:
        from camscope.errors import UsageError

        raise UsageError(f"class targets need (N, C) logits, the model gives shape {tuple(logits.shape)}; "
                         "use task='segment' for per-pixel logits")
    return logits


@register_target(
    "logit", title="class logit", equation="s = y_c (Grad-CAM's score)", task=("classify", "zeroshot"),
)
class ClassLogit(Target):
    """The logit ``y_c`` of class ``c`` (Selvaraju et al. 2017 differentiate it); as Score-CAM's
    probability, its softmax (Wang et al. 2020, Eq. 5)."""

    def __init__(self, label: int) -> None:
        self.label = int(label)

    def score(self, output: Any, index: Tensor | None = None) -> Tensor:
        return _take(_classifier_logits(output)[:, self.label], index)

    def probability(self, output: Any, index: Tensor | None = None) -> Tensor:
        return _take(torch.softmax(_classifier_logits(output), dim=1)[:, self.label], index)

    def name(self, categories: Sequence[str] | None = None) -> str:
        return class_name(self.label, categories)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "class": self.label}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label})"

    @classmethod
    def scores_at(cls, targets: Sequence[Target], output: Any, items: Tensor) -> Tensor:
        logits = _classifier_logits(output)
        labels = torch.tensor([t.label for t in targets], dtype=torch.long, device=logits.device)
        return logits[items.to(logits.device), labels]

    @classmethod
    def score_columns(cls, targets: Sequence[Target], output: Any, probability: bool) -> Tensor:
        logits = _classifier_logits(output)
        labels = torch.tensor([t.label for t in targets], dtype=torch.long, device=logits.device)
        if probability:
            return torch.softmax(logits, dim=1)[:, labels]
        return logits[:, labels]

    @classmethod
    def select(cls, output: Any, items: list[int], task: Task, size: tuple[int, int]) -> list[list[Target]]:
        """The ``top_k`` (default 1) highest logits of each image."""
        logits = _classifier_logits(output)
        k = min(task.top_k or 1, logits.shape[1])
        top = logits.detach()[items].topk(k, dim=1).indices.tolist()
        return [[cls(c) for c in row] for row in top]

    @classmethod
    def for_class(cls, label: int, output: Any, item: int, task: Task, size: tuple[int, int]) -> Target:
        check_class(label, _classifier_logits(output).shape[1])
        return cls(label)
