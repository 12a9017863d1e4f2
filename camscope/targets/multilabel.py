"""Multi-label: the sigmoid probability sigma(y_c) of label c, each label on its own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from camscope.targets.classify import ClassLogit, _classifier_logits
from camscope.targets.registry import Target, Task, _take, register_target

DEFAULT_THRESHOLD = 0.5
DEFAULT_TOP_K = 10


@register_target(
    "multilabel", title="multi-label (sigmoid)", equation="s = sigmoid(y_c) = 1 / (1 + exp(-y_c))",
    task="multilabel",
)
class MultiLabel(ClassLogit):
    """The sigmoid probability of label ``c`` of a multi-label classifier (independent labels:
    no softmax, so explaining one label does not push the others down)."""

    def score(self, output: Any, index: Tensor | None = None) -> Tensor:
        return _take(torch.sigmoid(_classifier_logits(output)[:, self.label]), index)

    def probability(self, output: Any, index: Tensor | None = None) -> Tensor:
        return self.score(output, index)

    @classmethod
    def scores_at(cls, targets: Sequence[Target], output: Any, items: Tensor) -> Tensor:
        return torch.sigmoid(ClassLogit.scores_at(targets, output, items))

    @classmethod
    def score_columns(cls, targets: Sequence[Target], output: Any, probability: bool) -> Tensor:
        return torch.sigmoid(ClassLogit.score_columns(targets, output, False))

    @classmethod
    def select(cls, output: Any, items: list[int], task: Task, size: tuple[int, int]) -> list[list[Target]]:
        """Every label whose sigmoid is at least ``score_threshold`` (default 0.5), at most
        ``top_k`` (default 10) of them, most probable first; an image may have none."""
        probs = torch.sigmoid(_classifier_logits(output).detach()[items])
        threshold = DEFAULT_THRESHOLD if task.score_threshold is None else task.score_threshold
        k = min(task.top_k or DEFAULT_TOP_K, probs.shape[1])
        out: list[list[Target]] = []
        for row in probs:
            values, labels = row.topk(k)
            out.append([cls(int(c)) for v, c in zip(values.tolist(), labels.tolist(), strict=True) if v >= threshold])
        return out
