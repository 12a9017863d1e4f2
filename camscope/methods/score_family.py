"""The Score-CAM family of torch-cam: SS-CAM (smoothed) and IS-CAM (integrated).

Both score the input multiplied by each channel's normalised, upsampled activation map, like
Score-CAM, but average the target logit over N variations of the mask and take a softmax across
channels of the averaged increase over the unmasked score (torch-cam's formulation, which the
equations below state; the official Score-CAM in ``perturbation.py`` uses the probability and
no channel softmax). K * N full forwards per view, batched like Score-CAM's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from camscope.core.capture import Capture
from camscope.core.runtime import Runtime
from camscope.methods.perturbation import FORWARD_BATCH, _progress
from camscope.methods.registry import register

#: torch-cam's defaults: SS-CAM 35 noisy masks with noise std 2 (on masks in [0,1]); IS-CAM 10
#: integration steps. The noise comes from a generator seeded with SEED for every view.
SS_SAMPLES = 35
SS_STD = 2.0
IS_STEPS = 10
SEED = 0
_EPS = 1e-8


def unit_masks(acts: Tensor, size: tuple[int, int]) -> Tensor:
    """(K,h,w) -> (K,H,W): each channel min-max normalised (a 1e-8 guard: a constant channel
    gives a zero mask), then bilinearly upsampled (align_corners=False), as torch-cam."""
    a = acts.float()
    a = a - a.amin(dim=(1, 2), keepdim=True)
    a = a / (a.amax(dim=(1, 2), keepdim=True) + _EPS)
    return F.interpolate(a[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _family_weights(cap: Capture, rt: Runtime, inputs_of, steps: int, desc: str) -> Tensor:
    """softmax_k((1/N) sum_i (y_c(inputs_of(v, i)[k]) - y_c(x))) per row; ``inputs_of(v, i)``
    gives the K masked inputs of view v at step i."""
    acts = cap.view_activations
    n_ch = acts.shape[1]
    weights = torch.zeros(cap.targets.shape[0], n_ch, device=acts.device)
    groups = list(cap.rows_by_view())
    bar = _progress(len(groups) * steps * n_ch, rt, desc)
    for v, rows in groups:
        targets = cap.targets[rows]
        base = cap.view_logits[v, targets]
        acc = torch.zeros(n_ch, len(rows), device=acts.device)
        for make in inputs_of(v):
            for s in rt.forward_slices(n_ch, FORWARD_BATCH, key=(desc, *cap.views.shape[1:])):
                acc[s] += rt.forward(make(s))[:, targets] - base
                bar.update(s.stop - s.start)
        weights[rows] = torch.softmax(acc.T / steps, dim=1)
    bar.close()
    return weights


def sscam_weights(cap: Capture, rt: Runtime, *, samples: int = SS_SAMPLES, std: float = SS_STD, seed: int = SEED) -> Tensor:
    """SS-CAM channel weights (R,K); see :func:`sscam`."""
    size = tuple(cap.views.shape[-2:])
    gen = torch.Generator(device=cap.views.device)

    def inputs_of(v: int):
        masks = unit_masks(cap.view_activations[v], size)
        x = cap.views[v]
        gen.manual_seed(seed)
        for _ in range(samples):
            noisy = masks + torch.normal(0.0, std, size=masks.shape, generator=gen, device=masks.device)
            yield lambda s, noisy=noisy: noisy[s, None] * x[None]

    return _family_weights(cap, rt, inputs_of, samples, "ss-cam")


@register(
    "sscam",
    title="SS-CAM",
    paper="Wang et al., 2020 (Smoothed Score-CAM)",
    url="https://arxiv.org/abs/2006.14255",
    equation="w = softmax_k((1/N) sum_i y_c(X (elementwise) (M_k + e_i)) - y_c(X)), M_k = Up(minmax(A_k)), e_i ~ N(0, 2^2), N = 35",
    forward_passes="35 K full",
    aliases=("ss-cam",),
)
def sscam(cap: Capture, rt: Runtime) -> Tensor:
    """SS-CAM (Wang et al. 2020, smoothing the masks): Score-CAM's masked-input scores averaged
    over N masks with Gaussian noise added, as torch-cam computes it (logit increase over the
    unmasked input, softmax across channels). Very slow: 35 forwards per channel."""
    return sscam_weights(cap, rt, samples=SS_SAMPLES, std=SS_STD, seed=SEED)


def iscam_weights(cap: Capture, rt: Runtime, *, steps: int = IS_STEPS) -> Tensor:
    """IS-CAM channel weights (R,K); see :func:`iscam`."""
    size = tuple(cap.views.shape[-2:])

    def inputs_of(v: int):
        masked = unit_masks(cap.view_activations[v], size)[:, None] * cap.views[v][None]
        coeff = 0.0
        for i in range(steps):
            coeff += (i + 1) / steps
            yield lambda s, c=coeff: c * masked[s]

    return _family_weights(cap, rt, inputs_of, steps, "is-cam")


@register(
    "iscam",
    title="IS-CAM",
    paper="Naidu et al., 2020 (Integrated Score-CAM)",
    url="https://arxiv.org/abs/2010.03023",
    equation="w = softmax_k((1/N) sum_i y_c(c_i X (elementwise) M_k) - y_c(X)), c_i = sum_{j<=i} j/N, N = 10",
    forward_passes="10 K full",
    aliases=("is-cam",),
)
def iscam(cap: Capture, rt: Runtime) -> Tensor:
    """IS-CAM (Naidu et al. 2020): Score-CAM's masked-input score integrated over N scaled copies
    of the masked input, as torch-cam computes it (the scale after step i is sum_{j<=i} j/N; logit
    increase over the unmasked input, softmax across channels)."""
    return iscam_weights(cap, rt, steps=IS_STEPS)
