"""Perturbation CAM methods: Ablation-CAM and Score-CAM, computed exactly but without waste.

- Ablation-CAM runs only the network's *tail* (from the target layer on) on batches of ablated
  activations; channels that are zero everywhere need no forward (ablating them changes nothing).
- Score-CAM skips channels whose activation map is constant (the official implementation gives
  them no weight), batches the masked forwards and runs them under ``inference_mode`` and the
  optional reduced precision of the ``Runtime``; no per-channel host synchronisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from camscope.core.capture import Capture
from camscope.core.runtime import Runtime
from camscope.methods.registry import register

_PGC_EPS = 1e-8
#: Default rows per pass per device type. CPU values measured on ResNet-50 with
#: benchmarks/batch_sweep.py (2 cores): the tail at layer4 is cheap per row, so large batches
#: amortise its overhead. On CPU, Score-CAM's full forwards do not use FORWARD_BATCH unless
#: ``compile`` is set: their batch size is measured on the first batches of each run
#: (``Runtime.forward_slices``; it chose 4 at fp32 and 16 at bf16 on an AVX-512 CPU, 8 at fp32
#: on an AVX2 one). The CUDA values were NOT measured here (no GPU was available): they follow
#: the rule that only large batches fill a GPU; run benchmarks/batch_sweep.py on yours and pass
#: --batch-size to override.
TAIL_BATCH = {"cpu": 256, "cuda": 1024}
FORWARD_BATCH = {"cpu": 8, "cuda": 128}


def _progress(total: int, rt: Runtime, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ch", leave=False, disable=not rt.progress)


@register(
    "ablationcam",
    title="Ablation-CAM",
    paper="Desai & Ramaswamy, WACV 2020",
    url="https://openaccess.thecvf.com/content_WACV_2020/html/Desai_Ablation-CAM_Visual_Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.html",
    equation="w_k = (y_c - y_c^k) / y_c, y_c^k: score with channel k set to zero (Eq. 3)",
    forward_passes="K tails",
)
def ablationcam(cap: Capture, rt: Runtime) -> Tensor:
    """Ablation-CAM (Desai & Ramaswamy 2020, Eq. 3): w_k = (y_c - y_c^k) / y_c.

    y_c^k is the target logit when channel k of the target layer's output is set to zero; it is
    computed by the tail alone. A channel that is already zero everywhere gets w_k = 0 exactly.
    """
    acts = cap.view_activations
    _, k, h, w = acts.shape
    weights = torch.zeros(cap.targets.shape[0], k, device=acts.device)
    bs = rt.batch(TAIL_BATCH)
    live_per_view = {v: (acts[v].flatten(1) != 0).any(dim=1).nonzero()[:, 0] for v, _ in cap.rows_by_view()}
    bar = _progress(sum(len(x) for x in live_per_view.values()), rt, "ablation-cam")
    for v, rows in cap.rows_by_view():
        live = live_per_view[v]
        base = cap.scores[rows]  # (m,) the targets' scores on the view
        index = torch.full((bs,), v, dtype=torch.long, device=acts.device)
        drops = torch.empty(len(live), len(rows), device=acts.device)
        # One buffer of copies of A per view; each chunk zeroes one channel per row and puts the
        # values back afterwards, so only n*h*w numbers change per chunk, not n*K*h*w.
        buf = acts[v].expand(min(bs, len(live)), k, h, w).clone()
        for start in range(0, len(live), bs):
            chunk = live[start : start + bs]
            n = len(chunk)
            diag = (torch.arange(n, device=acts.device), chunk)
            buf[diag] = 0
            logits = rt.tail(buf[:n], cap.carry, index[:n])
            buf[diag] = acts[v, chunk]
            drops[start : start + n] = cap.score_matrix(logits, rows)
            bar.update(n)
        weights[rows[:, None], live[None, :]] = ((base[None, :] - drops) / base[None, :]).T
    bar.close()
    return weights


def _masked_scores(
    rt: Runtime,
    image: Tensor,
    acts: Tensor,
    scorer,
    *,
    probabilities: bool,
    pgc_masks: bool = False,
    bar=None,
) -> Tensor:
    """Scores of the targets for ``image`` masked by each normalised, upsampled channel of acts.

    ``scorer(output, probability=)`` gives the targets' scores (n, n_targets) from the model's
    output for n masked images (``Capture.score_matrix`` of the view's rows).
    Returns (n_channels, n_targets). Masks: min-max normalised bilinear upsampling of A_k
    (official Score-CAM: align_corners=False; ``pgc_masks``: pytorch-grad-cam's
    align_corners=True with its 1e-8 guard). Bilinear upsampling is linear, so channels whose
    maps are positive affine images of each other (A_j = a A_i + b, a > 0) have the same mask:
    each distinct mask is evaluated once.
    """
    size = image.shape[-2:]
    flat = acts.flatten(1).float()
    lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    key = torch.round((flat - lo) / (hi - lo).clamp_min(1e-30) * 2**20)
    _, first, inverse = _unique_rows(key)
    distinct = acts[first]
    out = None
    for rows in rt.forward_slices(len(first), FORWARD_BATCH, key=tuple(image.shape)):
        a = distinct[rows].float()
        up = F.interpolate(a[:, None], size=size, mode="bilinear", align_corners=pgc_masks)[:, 0]
        up_flat = up.flatten(1)
        lo_up = up_flat.min(dim=1).values[:, None, None]
        hi_up = up_flat.max(dim=1).values[:, None, None]
        span = hi_up - lo_up + _PGC_EPS if pgc_masks else (hi_up - lo_up)
        masks = (up - lo_up) / span
        scores = scorer(rt.forward(image[None] * masks[:, None]), probability=probabilities)
        if out is None:
            out = scores.new_empty(len(first), scores.shape[1])
        out[rows] = scores
        if bar is not None:
            bar.update(a.shape[0])
    if bar is not None:
        bar.update(acts.shape[0] - len(first))
    if out is None:  # no channel to mask
        return torch.empty(0, scorer.n_targets, device=image.device)
    return out[inverse]


def _scorer(cap: Capture, rows: Tensor):
    """The targets' scores of ``rows`` on a batch of model outputs (``Capture.score_matrix``)."""

    def score(output, probability: bool = False) -> Tensor:
        return cap.score_matrix(output, rows, probability=probability)

    score.n_targets = len(rows)  # type: ignore[attr-defined]
    return score


def _unique_rows(key: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(unique rows, index of each unique row's first occurrence, inverse map) of a 2-D tensor."""
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((len(uniq),), key.shape[0], dtype=torch.long, device=key.device)
    first = first.scatter_reduce(0, inverse, torch.arange(key.shape[0], device=key.device), "amin")
    return uniq, first, inverse


def _nonconstant(acts: Tensor) -> Tensor:
    flat = acts.flatten(1)
    return (flat.max(dim=1).values != flat.min(dim=1).values).nonzero()[:, 0]


@register(
    "scorecam",
    title="Score-CAM",
    paper="Wang et al., CVPR-W 2020",
    url="https://arxiv.org/abs/1910.01279",
    equation="w_k = softmax(f(X * s(Up(A_k))))_c, s = min-max normalisation (Eq. 5-8)",
    forward_passes="K full",
)
def scorecam(cap: Capture, rt: Runtime) -> Tensor:
    """Score-CAM (Wang et al. 2020, Eq. 5-8, as the official implementation computes it).

    w_k is the softmax probability of the target class for the input multiplied by the min-max
    normalised, bilinearly upsampled activation map of channel k; no softmax across channels.
    A constant channel has no mask and gets weight 0 (the official code skips it), so its
    forward pass is skipped too.
    """
    acts = cap.view_activations
    weights = torch.zeros(cap.targets.shape[0], acts.shape[1], device=acts.device)
    live = {v: _nonconstant(acts[v]) for v, _ in cap.rows_by_view()}
    bar = _progress(sum(len(x) for x in live.values()), rt, "score-cam")
    for v, rows in cap.rows_by_view():
        idx = live[v]
        scores = _masked_scores(
            rt, cap.views[v], acts[v, idx], _scorer(cap, rows), probabilities=True, bar=bar
        )
        weights[rows[:, None], idx[None, :]] = scores.T
    bar.close()
    return weights


@register(
    "scorecam-logit-softmax",
    title="Score-CAM (logit + channel softmax)",
    paper="as in pytorch-grad-cam's ScoreCAM (not the paper)",
    url="https://github.com/jacobgil/pytorch-grad-cam",
    equation="w = softmax_k(f(X * s(Up(A_k)))_c): target logit, softmax across channels",
    forward_passes="K full",
)
def scorecam_logit_softmax(cap: Capture, rt: Runtime) -> Tensor:
    """Score-CAM as pytorch-grad-cam computes it, to reproduce older results.

    The score is the target *logit* (not its probability) and the weights are a softmax across
    channels, so one channel with a large logit takes almost all the weight: maps collapse to
    one spot, or to the blank of a constant channel. Constant channels get a zero mask, whose
    input is all zeros: one forward pass serves all of them.
    """
    acts = cap.view_activations
    n_ch = acts.shape[1]
    scores = torch.empty(cap.targets.shape[0], n_ch, device=acts.device)
    live = {v: _nonconstant(acts[v]) for v, _ in cap.rows_by_view()}
    bar = _progress(sum(len(x) + 1 for x in live.values()), rt, "score-cam")
    for v, rows in cap.rows_by_view():
        idx = live[v]
        live_scores = _masked_scores(
            rt, cap.views[v], acts[v, idx], _scorer(cap, rows), probabilities=False, pgc_masks=True, bar=bar
        )
        zero_scores = cap.score_matrix(rt.forward(torch.zeros_like(cap.views[v : v + 1])), rows)[0]
        bar.update(1)
        s = zero_scores[:, None].expand(len(rows), n_ch).clone()
        s[:, idx] = live_scores.T
        scores[rows] = s
    bar.close()
    return torch.softmax(scores, dim=1)
