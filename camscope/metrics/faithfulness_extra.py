"""Faithfulness beyond deletion curves: Faithfulness Correlation, Monotonicity, IROF, Infidelity.

A CAM is a per-pixel map; a "feature" is one pixel (its three channels together). The random
perturbations of Faithfulness Correlation and Infidelity do not depend on the map, so they are
drawn once per photo (``inputs.generator()``) and their forwards are shared by all M maps: one
set of forwards per photo instead of one per map. Forwards run in ``inputs.batch_size`` rows on
the image's device.

Baselines (``baseline`` parameter): ``"black"`` is black in pixel space (``-mean/std`` per
channel), ``"mean"`` is 0 in the normalised space (the dataset mean colour), ``"min"`` is the
image's minimum value (what Quantus 0.6 calls ``"black"``), or a number in the normalised space.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from camscope.errors import UsageError
from camscope.metrics._registered import flat, model_of, params_of, pixel_stats, scores
from camscope.metrics.inputs import MetricInputs
from camscope.metrics.registry import register_metric

__all__ = ["baseline_image", "faithfulness_correlation", "infidelity", "irof", "monotonicity"]


def baseline_image(inputs: MetricInputs, image: Tensor, spec: object) -> Tensor:
    """The (3,H,W) baseline an image's removed pixels take (see the module docstring)."""
    if spec == "black":
        mean, std = pixel_stats(inputs, image)
        return ((0.0 - mean) / std).expand_as(image).contiguous()
    if spec == "mean":
        return torch.zeros_like(image)
    if spec == "min":
        return torch.full_like(image, float(image.min()))
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return torch.full_like(image, float(spec))
    raise UsageError(f"baseline: expected 'black', 'mean', 'min' or a number, got {spec!r}")


def _pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of a (M,R) with b (R,) per row (NaN for a constant row)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean()
    den = a.norm(dim=1) * b.norm()
    return torch.where(den > 0, (a @ b) / den, torch.nan)


_FC = {"nr_runs": 100, "subset_size": 224, "baseline": "black", "score": "logit"}


@register_metric(
    "faithfulness_correlation", title="Faithfulness Correlation", category="faithfulness",
    direction="higher", paper="Bhatt et al., IJCAI 2020", url="https://arxiv.org/abs/2005.00631",
    equation="corr_S( sum_{i in S} a_i , f(x) - f(x_[x_S = baseline]) ),  |S| = subset_size",
    needs=("model",), cost="nr_runs forwards per photo (shared by all maps)", params=_FC,
    default=False,
)
def faithfulness_correlation(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
    """Pearson correlation, over ``nr_runs`` random pixel subsets S of size ``subset_size``,
    between the map's relevance in S and the score drop when S is set to the baseline (Bhatt et
    al. 2020, "Evaluating and aggregating feature-based model explanations", IJCAI, Def. 3).

    Defaults as Quantus (100 runs, 224 features, logit); Quantus draws features per channel
    element (3·H·W of them) from NumPy's global RNG, camscope draws pixels from the metric's seed.
    """
    p = params_of(inputs, _FC, "faithfulness_correlation")
    image, forward = model_of(inputs, "faithfulness_correlation")
    h, w = image.shape[-2:]
    n = h * w
    runs, size = int(p["nr_runs"]), int(p["subset_size"])
    if not 1 <= size <= n or runs < 2:
        raise UsageError(f"metric faithfulness_correlation: need 1 <= subset_size <= {n} and nr_runs >= 2")
    g = inputs.generator()
    subsets = torch.rand(runs, n, generator=g, device=image.device).argsort(dim=1)[:, :size]
    chosen = torch.zeros(runs, n, dtype=torch.bool, device=image.device)
    chosen.scatter_(1, subsets, True)
    base = baseline_image(inputs, image, p["baseline"])
    batch = torch.where(chosen.view(runs, 1, h, w), base.unsqueeze(0), image.unsqueeze(0))
    y = scores(forward, image.unsqueeze(0), inputs.target, p["score"], 1)[0]
    drops = y - scores(forward, batch, inputs.target, p["score"], inputs.batch_size)
    sums = flat(maps).to(image.device) @ chosen.to(torch.float64).T  # (M, runs)
    return {"faithfulness_correlation": _pearson_rows(sums, drops)}


_MONO = {"pixels_per_step": 224, "baseline": "black", "score": "prob"}


@register_metric(
    "monotonicity", title="Monotonicity (Arya et al.)", category="faithfulness", direction="higher",
    paper="Arya et al., arXiv 2019 (AIX360)", url="https://arxiv.org/abs/1909.03012",
    equation="1[f(x_{S_1}) <= f(x_{S_2}) <= ... <= f(x)],  S_k = the k*p least relevant pixels revealed on the baseline",
    keys=("monotonicity", "monotonicity_fraction"), needs=("model",),
    cost="ceil(H*W / pixels_per_step) forwards per map", params=_MONO, default=False,
)
def monotonicity(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
    """Arya et al. 2019 ("One explanation does not fit all", AIX360 monotonicity): start from the
    baseline image, reveal pixels in *increasing* order of relevance, ``pixels_per_step`` at a
    time; the map is monotonic (1) when the target's probability never decreases along the way.
    ``monotonicity_fraction``: the share of steps that do not decrease (a graded version).
    (Nguyen & Martinez 2020's Monotonicity *Correlation* is a different metric, not this one.)
    Ties: lower row-major index first. Quantus reveals ``features_in_step`` channel elements per
    step; with ``3 * pixels_per_step`` and a map without ties the two are the same curve.
    """
    p = params_of(inputs, _MONO, "monotonicity")
    image, forward = model_of(inputs, "monotonicity")
    h, w = image.shape[-2:]
    n = h * w
    step = int(p["pixels_per_step"])
    if not 1 <= step <= n:
        raise UsageError(f"metric monotonicity: pixels_per_step must be between 1 and {n}")
    n_steps = math.ceil(n / step)
    counts = torch.clamp(torch.arange(1, n_steps + 1, device=image.device) * step, max=n)
    base = baseline_image(inputs, image, p["baseline"])
    order = torch.sort(flat(maps).to(image.device), dim=1, stable=True).indices  # ascending
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=image.device).expand_as(order).contiguous())
    mono, frac = [], []
    for r in rank:
        curve_parts = []
        for c0 in range(0, n_steps, max(1, inputs.batch_size)):
            k = counts[c0 : c0 + inputs.batch_size]
            shown = (r.view(1, -1) < k.view(-1, 1)).view(-1, 1, h, w)
            curve_parts.append(scores(forward, torch.where(shown, image, base), inputs.target, p["score"], inputs.batch_size))
        curve = torch.cat(curve_parts)
        ok = torch.diff(curve) >= 0
        mono.append(ok.all().to(torch.float64))
        frac.append(ok.to(torch.float64).mean() if ok.numel() else torch.tensor(1.0, dtype=torch.float64, device=image.device))
    return {"monotonicity": torch.stack(mono), "monotonicity_fraction": torch.stack(frac)}


_IROF = {"score": "prob", "slic": None}


def _running_mean_removals(image: Tensor, segments: Tensor, order: Tensor) -> Tensor:
    """Images after removing segments ``order[:k]`` for k = 1..S, each newly removed segment set
    to the mean (over all values) of the image as it was just before (Quantus' ``"mean"``)."""
    cur = image.clone()
    out = []
    for s in order.tolist():
        value = cur.mean()
        cur = torch.where((segments == s).unsqueeze(0), value, cur)
        out.append(cur)
    return torch.stack(out)


@register_metric(
    "irof", title="IROF (Iterative Removal of Features)", category="faithfulness", direction="higher",
    paper="Rieger & Hansen, arXiv 2020", url="https://arxiv.org/abs/2003.08747",
    equation="IROF = 1 - (1/S) trapz_k f(x with the k most relevant superpixels removed) / f(x),  k = 1..S",
    needs=("model",), cost="S forwards per map (S SLIC superpixels, ~100)", params=_IROF,
    default=False,
)
def irof(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
    """Area over the curve of the target's probability, relative to the photo's, while SLIC
    superpixels are removed in decreasing order of mean relevance (Rieger & Hansen 2020, "IROF: a
    low resource evaluation metric for explanation methods", ICLR workshop). Removed superpixels
    take the mean value of the image as it stands before each removal (Quantus 0.6's ``"mean"``).

    Superpixels: ``skimage.segmentation.slic`` with its defaults (``slic``: extra keyword
    arguments) on the photo in pixel space (``x * std + mean``; Quantus segments the normalised
    tensor — the same when mean 0 and std 1). Quantus returns S - trapz(curve, dx=1); camscope
    divides by S (a value in [0, 1] for a curve in [0, 1], comparable across photos).
    """
    p = params_of(inputs, _IROF, "irof")
    image, forward = model_of(inputs, "irof")
    try:
        from skimage.segmentation import slic  # optional: scikit-image, only for IROF's superpixels
    except ImportError:
        raise UsageError("metric irof: superpixels need scikit-image (pip install scikit-image)") from None
    mean, std = pixel_stats(inputs, image)
    pixels = (image * std + mean).permute(1, 2, 0).detach().to("cpu", torch.float64).numpy()
    segments = torch.as_tensor(slic(pixels, start_label=0, **(p["slic"] or {})), device=image.device)
    n_seg = int(segments.max()) + 1
    seg_flat = segments.reshape(-1)
    a = flat(maps).to(image.device)
    counts = torch.bincount(seg_flat, minlength=n_seg).to(torch.float64)
    seg_mean = torch.zeros(a.shape[0], n_seg, dtype=torch.float64, device=image.device)
    seg_mean.index_add_(1, seg_flat, a)
    seg_mean = seg_mean / counts.clamp_min(1)
    y = scores(forward, image.unsqueeze(0), inputs.target, p["score"], 1)[0]
    values = []
    for m in range(a.shape[0]):
        order = torch.sort(seg_mean[m], descending=True, stable=True).indices
        batch = _running_mean_removals(image, segments, order)
        curve = scores(forward, batch, inputs.target, p["score"], inputs.batch_size) / y
        auc = torch.trapezoid(curve)  # dx = 1 per superpixel; 0 for a single point, as np.trapz
        values.append((n_seg - auc) / n_seg)
    return {"irof": torch.stack(values)}


_INFD = {"n_samples": 64, "noise_std": 0.1, "score": "logit", "normalize": True}


@register_metric(
    "infidelity", title="Infidelity", category="faithfulness", direction="lower",
    paper="Yeh et al., NeurIPS 2019", url="https://arxiv.org/abs/1901.09392",
    equation="INFD = E_I[(beta I^T a - (f(x) - f(x - I)))^2],  I ~ N(0, noise_std^2),  beta* = E[I^T a dF] / E[(I^T a)^2]",
    needs=("model",), cost="n_samples forwards per photo (shared by all maps)", params=_INFD,
    default=False,
)
def infidelity(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
    """Expected squared error between the map's linear prediction of a perturbation's effect and
    the actual score change (Yeh et al. 2019, "On the (in)fidelity and sensitivity of
    explanations", NeurIPS, Def. 2.1) with Gaussian noise perturbations I (the paper's noisy
    baseline; the map is applied to every channel: I^T a = sum_{c,h,w} I_chw a_hw).

    ``normalize=True`` (default) scales the map by the optimal beta first (Yeh et al. Sec. 2.3;
    Captum's ``normalize``), which makes the value independent of the map's scale — needed for
    min-max-normalised CAMs. Quantus 0.6 replaces square patches by a baseline instead of noise.
    """
    p = params_of(inputs, _INFD, "infidelity")
    image, forward = model_of(inputs, "infidelity")
    k = int(p["n_samples"])
    if k < 1:
        raise UsageError("metric infidelity: n_samples must be >= 1")
    g = inputs.generator()
    noise = torch.randn((k, *image.shape), generator=g, device=image.device, dtype=image.dtype) * float(p["noise_std"])
    y = scores(forward, image.unsqueeze(0), inputs.target, p["score"], 1)[0]
    delta = y - scores(forward, image.unsqueeze(0) - noise, inputs.target, p["score"], inputs.batch_size)  # (K,)
    proj = noise.to(torch.float64).sum(dim=1).reshape(k, -1) @ flat(maps).to(image.device).T  # (K, M)
    if p["normalize"]:
        den = (proj * proj).mean(dim=0)
        beta = torch.where(den > 0, (proj * delta.view(-1, 1)).mean(dim=0) / den, torch.zeros_like(den))
        proj = proj * beta
    return {"infidelity": ((proj - delta.view(-1, 1)) ** 2).mean(dim=0)}
