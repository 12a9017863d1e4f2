"""The one place where raw CAM terms become maps: reduction, ReLU, upsampling, normalisation.

Every method returns weights; everything after that is shared so that methods differ only in how
they weight the activations (Selvaraju et al. 2017, Eq. 2: ``L = ReLU(sum_k w_k A_k)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from camscope.core.threads import torch_threads

__all__ = ["weighted_activations", "first_component", "finalize", "normalize", "upsample"]

_REL_EPS = 1e-6


def weighted_activations(weights: Tensor, activations: Tensor) -> Tensor:
    """Multiply activations (B,K,h,w) by channel weights (B,K) or element weights (B,K,h,w)."""
    if weights.dim() == 2:
        weights = weights[:, :, None, None]
    if weights.shape[:2] != activations.shape[:2]:
        raise ValueError(
            f"weights of shape {tuple(weights.shape)} do not match activations "
            f"{tuple(activations.shape)}"
        )
    return weights.to(activations.dtype) * activations


def first_component(weighted: Tensor, reference: Tensor | None = None) -> Tensor:
    """Project each image's weighted activations on their first principal component.

    Eigen-CAM (Muhammad & Yeasin 2020, Eq. 4-5): the (h*w, K) matrix of activation vectors is
    centred over positions and projected on the first right singular vector. A singular vector is
    defined up to sign, so the sign is chosen to make the projection correlate positively with
    ``reference`` (by default the channel sum, i.e. the unsmoothed map).

    Args:
        weighted: (B,K,h,w) weighted activations.
        reference: (B,h,w) maps the projection must agree with in sign.
    Returns:
        (B,h,w) projections.
    """
    b, k, h, w = weighted.shape
    x = weighted.reshape(b, k, h * w).transpose(1, 2).to(torch.float64)  # (B, hw, K)
    x = x - x.mean(dim=1, keepdim=True)
    if reference is None:
        reference = weighted.sum(dim=1)
    ref = reference.reshape(b, h * w).to(torch.float64)
    # The first principal direction from the smaller Gram matrix (same result as the SVD):
    # X X^T u = s^2 u gives the projection X v_1 = s_1 u_1; X^T X v = s^2 v gives it as X v_1.
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    with torch_threads(1):
        if h * w <= k:
            evals, evecs = torch.linalg.eigh(x @ x.transpose(1, 2))
            out = evecs[..., -1] * evals[..., -1].clamp_min(0).sqrt()[:, None]
        else:
            _, evecs = torch.linalg.eigh(x.transpose(1, 2) @ x)
            out = (x @ evecs[..., -1:])[..., 0]
    r = ref - ref.mean(dim=1, keepdim=True)
    sign = torch.where((out * r).sum(dim=1, keepdim=True) < 0, -1.0, 1.0).to(out.dtype)
    out = out * sign
    return out.reshape(b, h, w).to(weighted.dtype)


def normalize(maps: Tensor) -> Tensor:
    """Min-max normalise each map of a (B,H,W) batch to [0,1]; a constant map becomes all zeros.

    Scale-free: a map counts as constant when its range is negligible against its magnitude
    (rounding noise, ``_REL_EPS``), not when its values are small in absolute terms (the
    gradients of a random or saturated network can be ~1e-10)."""
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    tiny = torch.finfo(flat.dtype).tiny if flat.is_floating_point() else 0.0
    ok = (span > _REL_EPS * torch.maximum(hi.abs(), lo.abs())) & (span > tiny)
    safe = torch.where(ok, span, torch.ones_like(span))
    out = torch.where(ok, (flat - lo) / safe, torch.zeros_like(flat))
    return out.reshape(maps.shape)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling (align_corners=False) of (B,h,w) maps to ``size``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def finalize(saliency: Tensor, size: tuple[int, int]) -> Tensor:
    """ReLU -> bilinear upsampling to the input size -> per-map min-max normalisation.

    Returns float32 maps (B,H,W) in [0,1]. Non-finite values are treated as zero.
    """
    saliency = torch.nan_to_num(saliency.float(), nan=0.0, posinf=0.0, neginf=0.0)
    return normalize(upsample(torch.relu(saliency), size))
