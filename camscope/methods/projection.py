"""Principal-component methods beside Eigen-CAM: Eigen-Grad-CAM and KPCA-CAM.

A principal component has no sign of its own; like Eigen-CAM, the sign is chosen to agree with
the channel sum of the same terms (pytorch-grad-cam leaves it to the SVD / the solver).
"""

from __future__ import annotations

import torch
from torch import Tensor

from camscope.core.capture import Capture
from camscope.core.runtime import Runtime
from camscope.methods.registry import register

#: KPCA-CAM's kernel: sigmoid k(a, b) = tanh(gamma <a, b> + coef0), gamma = 1 / K (scikit-learn's
#: and pytorch-grad-cam's defaults).
KPCA_COEF0 = 1.0


@register(
    "eigengradcam",
    title="Eigen-Grad-CAM",
    paper="as in pytorch-grad-cam's EigenGradCAM (Eigen-CAM of g*A)",
    url="https://github.com/jacobgil/pytorch-grad-cam",
    equation="L = (g (elementwise) A) V_1 : first principal component of the gradient-weighted activations",
    needs_gradients=True,
    reduce="pca",
    aliases=("eigen-grad-cam",),
)
def eigengradcam(cap: Capture, rt: Runtime) -> Tensor:
    """Eigen-Grad-CAM (pytorch-grad-cam): Eigen-CAM (Muhammad & Yeasin 2020, Eq. 4-5) of the
    element-wise products dy_c/dA * A, so the class enters; the engine takes the first principal
    component, signed to agree with the channel sum (i.e. with HiRes-CAM's map)."""
    return cap.gradients


def kernel_projection(acts: Tensor, gamma: float | None = None, coef0: float = KPCA_COEF0) -> Tensor:
    """(R,K,h,w) -> (R,h,w): projection of each position's centred activation vector on the
    first kernel principal component (Schoelkopf et al. 1998) with the sigmoid kernel, signed
    to correlate positively with the channel sum."""
    r, k, h, w = acts.shape
    x = acts.reshape(r, k, h * w).transpose(1, 2).to(torch.float64)  # (R, n, K)
    x = x - x.mean(dim=1, keepdim=True)
    x = torch.nan_to_num(x)
    g = 1.0 / k if gamma is None else gamma
    kern = torch.tanh(g * (x @ x.transpose(1, 2)) + coef0)
    n = h * w
    one = torch.full((n, n), 1.0 / n, dtype=kern.dtype, device=kern.device)
    kc = kern - one @ kern - kern @ one + one @ kern @ one
    evals, evecs = torch.linalg.eigh(kc)
    proj = evecs[..., -1] * evals[..., -1].clamp_min(0).sqrt()[:, None]  # (R, n)
    ref = acts.sum(dim=1).reshape(r, n).to(torch.float64)
    ref = ref - ref.mean(dim=1, keepdim=True)
    sign = torch.where((proj * ref).sum(dim=1, keepdim=True) < 0, -1.0, 1.0).to(proj.dtype)
    return (proj * sign).reshape(r, h, w).to(acts.dtype)


@register(
    "kpcacam",
    title="KPCA-CAM",
    paper="Karmani et al., 2024",
    url="https://arxiv.org/abs/2410.00267",
    equation="L = first kernel principal component of A's position vectors, k(a,b) = tanh(<a,b>/K + 1)",
    output="map",
    aliases=("kpca-cam",),
)
def kpcacam(cap: Capture, rt: Runtime) -> Tensor:
    """KPCA-CAM (Karmani et al. 2024): Eigen-CAM with kernel PCA (sigmoid kernel, scikit-learn's
    defaults as in pytorch-grad-cam): the (h*w, h*w) centred kernel matrix's top eigenvector
    times the square root of its eigenvalue. Class-agnostic, like Eigen-CAM."""
    return kernel_projection(cap.activations)
