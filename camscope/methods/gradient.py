"""Gradient-based CAM methods: all computed from one capture (activations A, gradients dy_c/dA)."""

from __future__ import annotations

import torch
from torch import Tensor

from camscope.core.capture import Capture
from camscope.core.runtime import Runtime
from camscope.methods.registry import register

_EPS = 1e-7


@register(
    "gradcam",
    title="Grad-CAM",
    paper="Selvaraju et al., ICCV 2017",
    url="https://arxiv.org/abs/1610.02391",
    equation="w_k = mean_ij dy_c/dA_k[i,j] (Eq. 1); L = ReLU(sum_k w_k A_k) (Eq. 2)",
    needs_gradients=True,
)
def gradcam(cap: Capture, rt: Runtime) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017, Eq. 1): channel weight = spatial mean of the gradient."""
    return cap.gradients.mean(dim=(2, 3))


@register(
    "gradcampp",
    title="Grad-CAM++",
    paper="Chattopadhyay et al., WACV 2018",
    url="https://arxiv.org/abs/1710.11063",
    equation="w_k = sum_ij a_kij ReLU(g_kij), a = g^2 / (2 g^2 + sum_ab A_kab g^3) (Eq. 19)",
    needs_gradients=True,
    aliases=("gradcam++", "gradcamplusplus"),
)
def gradcampp(cap: Capture, rt: Runtime) -> Tensor:
    """Grad-CAM++ (Chattopadhyay et al. 2018, Eq. 19 with the exponential-score closed form).

    With y = exp(S), the second and third derivatives are powers of the first, so
    alpha_kij = g^2 / (2 g^2 + sum_ab A_kab g^3); alpha is 0 where the gradient is 0.
    """
    return gradcampp_weights(cap.gradients, cap.activations)


def gradcampp_weights(g: Tensor, a: Tensor, eps: float = 0.0) -> Tensor:
    """Grad-CAM++ channel weights (R,K) from gradients and activations (R,K,h,w); ``eps`` is
    added to alpha's denominator (pytorch-grad-cam: 1e-6)."""
    g2 = g * g
    denom = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g + eps
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), 0)
    return (alpha * torch.relu(g)).sum(dim=(2, 3))


@register(
    "xgradcam",
    title="XGrad-CAM",
    paper="Fu et al., BMVC 2020",
    url="https://arxiv.org/abs/2008.02312",
    equation="w_k = sum_ij (A_kij / sum_ab A_kab) dy_c/dA_kij (Eq. 9)",
    needs_gradients=True,
)
def xgradcam(cap: Capture, rt: Runtime) -> Tensor:
    """XGrad-CAM (Fu et al. 2020, Eq. 9): gradients weighted by normalised activations."""
    a = cap.activations
    return (cap.gradients * a).sum(dim=(2, 3)) / (a.sum(dim=(2, 3)) + _EPS)


@register(
    "hirescam",
    title="HiRes-CAM",
    paper="Draelos & Carin, 2020",
    url="https://arxiv.org/abs/2011.08891",
    equation="L = ReLU(sum_k dy_c/dA_k (elementwise) A_k) (Eq. 5)",
    needs_gradients=True,
)
def hirescam(cap: Capture, rt: Runtime) -> Tensor:
    """HiRes-CAM (Draelos & Carin 2020): element-wise gradient x activation, no spatial pooling."""
    return cap.gradients


@register(
    "layercam",
    title="Layer-CAM",
    paper="Jiang et al., IEEE TIP 2021",
    url="https://doi.org/10.1109/TIP.2021.3089943",
    equation="L = ReLU(sum_k ReLU(dy_c/dA_k) (elementwise) A_k) (Eq. 6-7)",
    needs_gradients=True,
)
def layercam(cap: Capture, rt: Runtime) -> Tensor:
    """Layer-CAM (Jiang et al. 2021, Eq. 6): element-wise weights = ReLU of the gradient."""
    return torch.relu(cap.gradients)
