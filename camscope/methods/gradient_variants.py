"""Gradient CAM variants: Grad-CAM element-wise, Shapley-CAM, Finer-CAM, SmoothGrad-CAM++.

The first reads the capture only; the others need gradients of another score (a contrast, the
ReST target), second derivatives, or gradients at noisy inputs, all through the tail
(``core.input_gradients.tail_gradients``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from camscope.core.capture import Capture
from camscope.core.input_gradients import tail_gradients
from camscope.core.runtime import Runtime
from camscope.methods.registry import register

#: Finer-CAM: how many of the classes whose logits are closest to the target's are compared,
#: and the comparison strength alpha (the authors' defaults, as in pytorch-grad-cam).
FINER_REFERENCES = 3
FINER_ALPHA = 1.0
#: SmoothGrad-CAM++: noisy samples and the noise's standard deviation (in the model's normalised
#: input units), torch-cam's defaults; the noise comes from a generator seeded with SEED for
#: every view, so a map does not depend on the batch it was computed in.
SMOOTH_SAMPLES = 4
SMOOTH_STD = 0.3
SEED = 0


@register(
    "gradcam-elementwise",
    title="Grad-CAM element-wise",
    paper="as in pytorch-grad-cam's GradCAMElementWise",
    url="https://github.com/jacobgil/pytorch-grad-cam",
    equation="L = ReLU(sum_k ReLU(dy_c/dA_k (elementwise) A_k))",
    needs_gradients=True,
    aliases=("gradcamelementwise",),
)
def gradcam_elementwise(cap: Capture, rt: Runtime) -> Tensor:
    """Grad-CAM element-wise (pytorch-grad-cam): every product g * A is rectified before the
    channel sum, so negative evidence of one channel cannot cancel another's. As element weights:
    w = g [g A > 0], since w A = ReLU(g A)."""
    g = cap.gradients
    return g * (g * cap.activations > 0).to(g.dtype)


def _rest(targets: Tensor):
    """ReST target (Cai 2025, Sec. 4.3): y_c - CE(y, c) = y_c + log softmax(y)_c."""

    def score(logits: Tensor, rows: Tensor) -> Tensor:
        t = targets[rows][:, None]
        return (logits.gather(1, t) + torch.log_softmax(logits, dim=1).gather(1, t))[:, 0]

    return score


@register(
    "shapleycam",
    title="Shapley-CAM",
    paper="Cai, 2025 (CAMs as Shapley value-based explainers)",
    url="https://arxiv.org/abs/2501.06261",
    equation="w_k = mean_ij (g - H A / 2)_kij, g = dS/dA, H = d2S/dA2, S = y_c + log softmax(y)_c (ReST)",
    needs_gradients=True,
    forward_passes="1 bwd + 1 Hessian-vector product to layer",
    aliases=("shapley-cam",),
)
def shapleycam(cap: Capture, rt: Runtime) -> Tensor:
    """Shapley-CAM (Cai 2025, Eq. 12): the second-order Taylor estimate of each channel's Shapley
    value, w = mean(g - 0.5 H A) with the Hessian-vector product through the tail, for the ReST
    target the paper recommends (y_c minus the cross-entropy of class c). Where the tail is
    piecewise linear and the target a logit, H = 0 and it is Grad-CAM; ReST makes H non-zero."""
    g, hvp = tail_gradients(
        rt.split, cap.view_activations, cap.carry, cap.view_index, cap.targets, _rest(cap.targets),
        hessian_product=True,
    )
    assert hvp is not None
    return (g - 0.5 * hvp).mean(dim=(2, 3))


def finer_references(logits: Tensor, targets: Tensor, n: int = FINER_REFERENCES) -> Tensor:
    """(R, min(n, C-1)) the classes whose logits are closest to each row's target logit (the most
    similar classes, Finer-CAM Sec. 3.2), nearest first; the target itself is never one."""
    dist = (logits - logits.gather(1, targets[:, None])).abs()
    dist.scatter_(1, targets[:, None], float("inf"))
    return dist.topk(min(n, logits.shape[1] - 1), dim=1, largest=False).indices


@register(
    "finercam",
    title="Finer-CAM",
    paper="Zhang et al., CVPR 2025",
    url="https://arxiv.org/abs/2501.11309",
    equation="Grad-CAM of S = sum_j p_j (y_c - alpha y_j) / sum_j p_j over the 3 classes j with logits nearest y_c",
    needs_gradients=True,
    forward_passes="1 bwd to layer",
    aliases=("finer-cam",),
)
def finercam(cap: Capture, rt: Runtime) -> Tensor:
    """Finer-CAM (Zhang et al. 2025): Grad-CAM of the target's logit *compared with* the most
    similar classes (the 3 whose logits are nearest), each difference y_c - alpha y_j weighted by
    class j's softmax probability (the authors' FinerWeightedTarget in pytorch-grad-cam), so the
    map keeps what tells the class apart from its look-alikes. alpha = 1."""
    refs = finer_references(cap.logits, cap.targets)

    def score(logits: Tensor, rows: Tensor) -> Tensor:
        y_c = logits.gather(1, cap.targets[rows][:, None])
        p = torch.softmax(logits, dim=1).gather(1, refs[rows])
        y_j = logits.gather(1, refs[rows])
        return ((p * (y_c - FINER_ALPHA * y_j)).sum(dim=1)) / (p.sum(dim=1) + 1e-9)

    g, _ = tail_gradients(rt.split, cap.view_activations, cap.carry, cap.view_index, cap.targets, score)
    return g.mean(dim=(2, 3))


def smoothgradcampp_weights(
    cap: Capture, rt: Runtime, *, samples: int = SMOOTH_SAMPLES, std: float = SMOOTH_STD, seed: int = SEED,
    eps: float = 0.0,
) -> Tensor:
    """SmoothGrad-CAM++ channel weights (R,K); see :func:`smoothgradcampp`. ``eps`` is added to
    alpha's denominator (torch-cam: 1e-8, which moves the weights of channels with gradients
    ~1e-3 by ~1 %); by default alpha is 0 where the denominator is 0, as in Grad-CAM++."""
    d1 = torch.zeros_like(cap.activations)
    d2 = torch.zeros_like(d1)
    d3 = torch.zeros_like(d1)
    gen = torch.Generator(device=cap.views.device)
    noise = torch.empty((samples, *cap.views.shape), dtype=cap.views.dtype, device=cap.views.device)
    for v in range(cap.views.shape[0]):
        gen.manual_seed(seed)
        for i in range(samples):
            noise[i, v] = torch.normal(0.0, std, size=cap.views.shape[1:], generator=gen, device=cap.views.device)
    for i in range(samples):
        with torch.no_grad():
            acts, carry = rt.split.head(cap.views + noise[i])
        g, _ = tail_gradients(rt.split, acts.detach(), carry, cap.view_index, cap.targets)
        d1 += g
        d2 += g * g
        d3 += g * g * g
    d1, d2, d3 = d1 / samples, d2 / samples, d3 / samples
    denom = 2 * d2 + cap.activations.sum(dim=(2, 3), keepdim=True) * d3 + eps
    alpha = torch.where(denom != 0, d2 / torch.where(denom != 0, denom, torch.ones_like(denom)), 0)
    return (alpha * torch.relu(d1)).sum(dim=(2, 3))


@register(
    "smoothgradcampp",
    title="SmoothGrad-CAM++",
    paper="Omeiza et al., 2019",
    url="https://arxiv.org/abs/1908.01224",
    equation="Grad-CAM++ with D^n = (1/N) sum_i (dy_c/dA (x + e_i))^n, e_i ~ N(0, 0.3^2), N = 4 (Eq. 7-9)",
    needs_gradients=True,
    forward_passes="N fwd + N bwd to layer",
    aliases=("smoothgradcam++", "smooth-gradcampp"),
)
def smoothgradcampp(cap: Capture, rt: Runtime) -> Tensor:
    """SmoothGrad-CAM++ (Omeiza et al. 2019): Grad-CAM++'s alpha (Eq. 19 of Chattopadhyay et al.)
    from the first, second and third gradient powers averaged over N noisy copies of the input
    (SmoothGrad), with the clean activations: alpha = D2 / (2 D2 + sum_ab A_ab D3),
    w_k = sum_ij alpha ReLU(D1). torch-cam uses the last noisy sample's gradient in the ReLU
    instead of the average D1 (equal for N = 1)."""
    return smoothgradcampp_weights(cap, rt, samples=SMOOTH_SAMPLES, std=SMOOTH_STD, seed=SEED)
