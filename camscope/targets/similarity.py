"""Embedding similarity: cosine similarity of the image's embedding to a concept embedding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from camscope.errors import UsageError
from camscope.targets.registry import Target, Task, _take, embedding_of, register_target


@register_target(
    "similarity", title="embedding similarity", equation="s = cos(e, c) = e.c / (norm(e) norm(c)) (e: image embedding, c: concept)",
    task="embed",
)
class Similarity(Target):
    """Cosine similarity of the image embedding ``e`` to a concept embedding ``c`` (a reference
    image's embedding, or a text prompt's through a CLIP model: see
    :func:`camscope.models.clip.concept_embedding`), as pytorch-grad-cam's
    ``SimilarityToConceptTarget``."""

    def __init__(self, concept: Tensor, concept_name: str = "concept") -> None:
        concept = torch.as_tensor(concept).detach().float().flatten()
        if not bool(concept.norm() > 0):
            raise UsageError(f"the concept embedding {concept_name!r} is all zeros")
        self.concept = concept
        self.concept_name = concept_name

    def score(self, output: Any, index: Tensor | None = None) -> Tensor:
        e = embedding_of(output)
        if e.shape[1] != self.concept.shape[0]:
            raise UsageError(f"the concept embedding has {self.concept.shape[0]} dimensions, the model's "
                             f"embedding {e.shape[1]}")
        c = self.concept.to(e.device, e.dtype)
        return _take(F.cosine_similarity(e, c[None], dim=1), index)

    def name(self, categories: Sequence[str] | None = None) -> str:
        return self.concept_name

    def __repr__(self) -> str:
        return f"Similarity({self.concept_name!r})"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "concept": self.concept_name, "dimensions": int(self.concept.shape[0])}

    @classmethod
    def select(cls, output: Any, items: list[int], task: Task, size: tuple[int, int]) -> list[list[Target]]:
        """One target per image: the task's concept."""
        if task.concept is None:
            raise UsageError("the embed task needs a concept: an embedding, a reference image, or a text prompt "
                             "with a CLIP model (concept=, --concept)")
        target = cls(task.concept, task.concept_name or "concept")
        return [[target] for _ in items]
