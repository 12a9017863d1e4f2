"""Pixel-level methods from the input gradient: Guided Backprop, Guided Grad-CAM, FullGrad.

They run the whole model forward and backward once per row (``core.input_gradients``), return
maps at the input resolution (``output="map"``) and are drawn as pixel maps (``pixel_level``).
A colour image's gradient has 3 channels; as a map, a pixel's value is the largest absolute
value over them (Simonyan et al. 2014, Sec. 3.1: M_ij = max_c |w_h(i,j,c)|).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camscope.core.capture import Capture
from camscope.core.input_gradients import full_gradients
from camscope.core.postprocess import finalize
from camscope.core.runtime import Runtime
from camscope.methods.registry import register

#: Rows per forward-and-backward of the whole model.
ROWS_PER_PASS = {"cpu": 8, "cuda": 64}
#: pytorch-grad-cam's guard in its per-channel min-max scaling (FullGrad's psi).
_PSI_EPS = 1e-7


def guided_gradients(cap: Capture, rt: Runtime) -> Tensor:
    """(R,3,H,W) guided backpropagation gradients d y_c / d x of every row (Springenberg et al.
    2015): the ReLUs' backward passes only positive gradients at positive inputs."""
    return full_gradients(
        rt.model, cap.views, cap.view_index, cap.targets, guided=True, batch=rt.batch(ROWS_PER_PASS)
    ).input


def _colour_max(g: Tensor) -> Tensor:
    return g.abs().amax(dim=1)


@register(
    "guidedbackprop",
    title="Guided Backprop",
    paper="Springenberg et al., ICLR-W 2015",
    url="https://arxiv.org/abs/1412.6806",
    equation="R_l = [f_l > 0] [R_{l+1} > 0] R_{l+1} through every ReLU; L_ij = max_c |R_0[c,i,j]|",
    needs_gradients=False,
    forward_passes="1 fwd + 1 bwd (whole model)",
    output="map",
    pixel_level=True,
    aliases=("guided-backprop", "gbp"),
)
def guidedbackprop(cap: Capture, rt: Runtime) -> Tensor:
    """Guided Backprop (Springenberg et al. 2015): the input gradient with every ReLU's backward
    rectified (``core.input_gradients.guided_relu``), as a map of the largest absolute value over
    the colour channels. Class-discriminative only weakly (it is nearly the same for every class)."""
    return _colour_max(guided_gradients(cap, rt))


@register(
    "guidedgradcam",
    title="Guided Grad-CAM",
    paper="Selvaraju et al., ICCV 2017 (Sec. 3.1)",
    url="https://arxiv.org/abs/1610.02391",
    equation="L = Up(L_Grad-CAM) (elementwise) max_c |R_0[c]|, R_0: guided backprop",
    needs_gradients=True,
    forward_passes="1 fwd + 1 bwd (whole model)",
    output="map",
    pixel_level=True,
    aliases=("guided-gradcam",),
)
def guidedgradcam(cap: Capture, rt: Runtime) -> Tensor:
    """Guided Grad-CAM (Selvaraju et al. 2017, Sec. 3.1): the Grad-CAM map, upsampled to the input
    and normalised to [0,1] (``postprocess.finalize``), times the guided backpropagation map."""
    sal = (cap.gradients.mean(dim=(2, 3))[:, :, None, None] * cap.activations).sum(dim=1)
    gb = _colour_max(guided_gradients(cap, rt))
    return finalize(sal, tuple(gb.shape[-2:])) * gb


def _bias_layers(model: nn.Module) -> list[tuple[nn.Module, Tensor]]:
    """2-D convolutions and batch norms with a bias, and the bias they add (in eval mode, a
    batch norm adds beta - mu gamma / sqrt(var + eps); Srinivas & Fleuret's implementation)."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            out.append((m, m.bias.detach()))
        elif isinstance(m, nn.BatchNorm2d) and m.bias is not None and m.running_mean is not None:
            gamma = m.weight.detach() if m.weight is not None else torch.ones_like(m.running_mean)
            out.append((m, m.bias.detach() - m.running_mean * gamma / torch.sqrt(m.running_var + m.eps)))
    return out


def _fullgrad_applies(model: Any) -> str | None:
    if isinstance(model, nn.Module) and not _bias_layers(model):
        return "needs 2-D convolutions or batch norms with biases (FullGrad's bias-gradients)"
    return None


def _psi(t: Tensor) -> Tensor:
    """FullGrad's psi per channel of (R,C,h,w): |.| then min-max to [0,1] (with a 1e-7 guard)."""
    t = t.abs()
    t = t - t.amin(dim=(2, 3), keepdim=True)
    return t / (t.amax(dim=(2, 3), keepdim=True) + _PSI_EPS)


@register(
    "fullgrad",
    title="FullGrad",
    paper="Srinivas & Fleuret, NeurIPS 2019",
    url="https://arxiv.org/abs/1905.00780",
    equation="S = psi(grad_x f (elementwise) x) + sum_l sum_c psi(grad_b f (elementwise) b)_c, psi = Up(minmax(|.|)) (Eq. 5)",
    forward_passes="1 fwd + 1 bwd (whole model)",
    output="map",
    pixel_level=True,
    applies_to=_fullgrad_applies,
)
def fullgrad(cap: Capture, rt: Runtime) -> Tensor:
    """FullGrad (Srinivas & Fleuret 2019, Eq. 5): the input-gradient term plus, for every channel
    of every 2-D convolution / batch norm with a bias, the bias-gradient map |b_c d y / d z_c|,
    each scaled to [0,1] (psi) and upsampled to the input (bilinear; it is linear, so channels
    are summed before upsampling). The target layer is not used: FullGrad covers the network."""
    layers = _bias_layers(rt.model)
    bias_of = {id(m): b for m, b in layers}
    fg = full_gradients(
        rt.model, cap.views, cap.view_index, cap.targets, modules=[m for m, _ in layers],
        batch=rt.batch(ROWS_PER_PASS),
    )
    size = tuple(fg.inputs.shape[-2:])
    total = _psi(fg.input * fg.inputs).sum(dim=1)
    for module, grad in zip(fg.modules, fg.grads, strict=True):
        if grad.dim() != 4:
            continue
        term = _psi(grad * bias_of[id(module)][None, :, None, None].to(grad.dtype)).sum(dim=1)
        if tuple(term.shape[-2:]) != size:
            term = F.interpolate(term[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        total = total + term
    return total
