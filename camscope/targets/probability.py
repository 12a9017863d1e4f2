"""Class probability: the softmax probability p_c = softmax(y)_c of class c."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from camscope.targets.classify import ClassLogit, _classifier_logits
from camscope.targets.registry import Target, _take, register_target


@register_target(
    "probability", title="class probability (softmax)", equation="s = exp(y_c) / sum_j exp(y_j)",
    task="probability",
)
class ClassProbability(ClassLogit):
    """The softmax probability of class ``c``: its gradient also lowers the other classes'
    logits (pytorch-grad-cam's ``ClassifierOutputSoftmaxTarget``)."""

    def score(self, output: Any, index: Tensor | None = None) -> Tensor:
        return _take(torch.softmax(_classifier_logits(output), dim=1)[:, self.label], index)

    @classmethod
    def scores_at(cls, targets: Sequence[Target], output: Any, items: Tensor) -> Tensor:
        probs = torch.softmax(_classifier_logits(output), dim=1)
        labels = torch.tensor([t.label for t in targets], dtype=torch.long, device=probs.device)
        return probs[items.to(probs.device), labels]

    @classmethod
    def score_columns(cls, targets: Sequence[Target], output: Any, probability: bool) -> Tensor:
        probs = torch.softmax(_classifier_logits(output), dim=1)
        labels = torch.tensor([t.label for t in targets], dtype=torch.long, device=probs.device)
        return probs[:, labels]
