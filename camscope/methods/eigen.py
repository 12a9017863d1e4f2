"""Eigen-CAM: class-agnostic first principal component of the activations."""

from __future__ import annotations

import torch
from torch import Tensor

from camscope.core.capture import Capture
from camscope.core.runtime import Runtime
from camscope.methods.registry import register


@register(
    "eigencam",
    title="Eigen-CAM",
    paper="Muhammad & Yeasin, IJCNN 2020",
    url="https://arxiv.org/abs/2008.00299",
    equation="L = A V_1 : projection on the first principal component of A (Eq. 4-5)",
    reduce="pca",
)
def eigencam(cap: Capture, rt: Runtime) -> Tensor:
    """Eigen-CAM (Muhammad & Yeasin 2020): unit weights; the engine reduces by the first
    principal component (sign fixed to agree with the channel sum), which ignores the class."""
    a = cap.activations
    return torch.ones(a.shape[:2], dtype=a.dtype, device=a.device)
