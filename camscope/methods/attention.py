"""Attention methods for vision transformers: rollout, Chefer et al.'s gradient rule, LeGrad.

Each runs the model once more on the capture's views with :func:`camscope.core.attention.
attention_capture` (every block's attention probabilities P_l, (V, heads, N, N), prefix tokens
included) and returns raw maps on the patch grid (R, h, w) (``output="map"``): the engine
finalises them (ReLU, upsampling, normalisation) like every other method. The map is the row of
the class token (token 0) over the patch tokens, prefix tokens dropped (as the reshape drops
them); a model without a prefix token (mean pooling of all tokens) uses the mean of all rows.
They apply to models with self-attention over all tokens (torchvision / timm / Hugging Face
ViT, DeiT, BEiT...); on a CNN or a windowed transformer (Swin) the engine refuses them in one
line naming the methods that can.

Not here: Chefer, Gur & Wolf's relevance propagation (CVPR 2021, "Transformer Interpretability
Beyond Attention Visualization"). It needs a layer-wise relevance (LRP) rule for every operation
of the network (linear layers, LayerNorm, GELU, the attention's two matrix products, the
residual adds), i.e. a re-implementation of each architecture with relevance-propagating layers
(their code ships one ViT written that way). camscope explains the user's own unmodified model
from captured tensors, so it ships the same authors' later gradient rule (ICCV 2021), which they
present as its generic replacement and which needs only P_l and dy/dP_l.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from camscope.core.attention import (
    attention_capture,
    attention_refusal,
    readout,
    readout_refusal,
    token_grid,
)
from camscope.core.capture import Capture
from camscope.core.runtime import Runtime
from camscope.methods.registry import register

__all__ = ["rollout_maps", "chefer_maps", "legrad_maps"]


def _grid(model: nn.Module, probs: Tensor, views: Tensor) -> tuple[int, tuple[int, int]]:
    prefix, grid = token_grid(model, probs.shape[-1], tuple(views.shape[-2:]))
    return prefix, grid


def _query_row(r: Tensor, prefix: int) -> Tensor:
    """(..., N, N) relevance -> (..., N - prefix): the class token's row over the patch keys (the
    mean of all rows without a prefix token)."""
    row = r[..., 0, :] if prefix > 0 else r.mean(dim=-2)
    return row[..., prefix:]


def _row_groups(cap: Capture) -> list[Tensor]:
    """Rows split into groups holding at most one row per view (one backward per group)."""
    groups: list[list[int]] = []
    count: dict[int, int] = {}
    for r, v in enumerate(cap.view_index.tolist()):
        j = count.get(v, 0)
        count[v] = j + 1
        if j == len(groups):
            groups.append([])
        groups[j].append(r)
    return [torch.tensor(g, device=cap.view_index.device) for g in groups]


def _forward(rt: Runtime, views: Tensor, *, grad: bool, blocks: bool = False):
    """Model logits on ``views`` with every block's attention recorded (in the graph if ``grad``)."""
    x = views.detach().clone().requires_grad_(grad)
    with torch.set_grad_enabled(grad), attention_capture(rt.model, blocks=blocks) as rec:
        logits = rt.model(x)
    if not rec.probs:
        from camscope.errors import UsageError

        raise UsageError(f"{type(rt.model).__name__}: no attention probabilities were recorded")
    return logits, rec


def rollout_maps(probs: list[Tensor], prefix: int) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020, Eq. 1 with A = 0.5 W_att + 0.5 I):
    per block the head-averaged attention plus the identity of the residual, rows renormalised,
    multiplied from the first block on; returns the query row over the patch tokens (B, N - prefix).
    """
    n = probs[0].shape[-1]
    eye = torch.eye(n, device=probs[0].device, dtype=torch.float32)
    r = eye.expand(probs[0].shape[0], n, n)
    for p in probs:
        a = 0.5 * p.float().mean(dim=1) + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)
        r = a @ r
    return _query_row(r, prefix)


def chefer_maps(probs: list[Tensor], grads: list[Tensor], prefix: int) -> Tensor:
    """Chefer, Gur & Wolf's rule (ICCV 2021, Eq. 5-6): Ā_l = E_h[(∇A_l ⊙ A_l)^+],
    R <- R + Ā_l R from R = I, in block order; the query row over the patch tokens (B, N - prefix)."""
    n = probs[0].shape[-1]
    r = torch.eye(n, device=probs[0].device, dtype=torch.float32).expand(probs[0].shape[0], n, n)
    for p, g in zip(probs, grads, strict=True):
        a = (g.float() * p.float()).clamp_min(0).mean(dim=1)
        r = r + a @ r
    return _query_row(r, prefix)


def legrad_maps(grads: list[Tensor], prefix: int) -> Tensor:
    """LeGrad (Bousselham et al. 2024, Eq. 4-6): per block, the ReLU of d s^l / d A_l averaged over
    heads and queries, over the patch keys; averaged over blocks -> (B, N - prefix)."""
    per_layer = [g.float().clamp_min(0).mean(dim=(1, 2))[:, prefix:] for g in grads]
    return torch.stack(per_layer).mean(dim=0)


def _to_grid(rows: Tensor, grid: tuple[int, int]) -> Tensor:
    return rows.reshape(rows.shape[0], *grid)


@register(
    "rollout",
    title="Attention rollout",
    paper="Abnar & Zuidema, ACL 2020",
    url="https://arxiv.org/abs/2005.00928",
    equation="Ã_l = rownorm(0.5 mean_h A_l + 0.5 I); R = Ã_L ... Ã_1; map = R[cls, patches] (Eq. 1)",
    forward_passes="1 fwd",
    output="map",
    applies_to=attention_refusal,
    aliases=("attention-rollout",),
)
def rollout(cap: Capture, rt: Runtime) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): class-agnostic, one forward without gradients."""
    with torch.no_grad():
        _, rec = _forward(rt, cap.views, grad=False)
    prefix, grid = _grid(rt.model, rec.probs[0], cap.views)
    maps = _to_grid(rollout_maps(rec.probs, prefix), grid)  # (V, h, w)
    return maps[cap.view_index]


@register(
    "chefer",
    title="Chefer et al. (attention x gradient)",
    paper="Chefer, Gur & Wolf, ICCV 2021",
    url="https://arxiv.org/abs/2103.15679",
    equation="Ā_l = mean_h ReLU(dy_c/dA_l ⊙ A_l); R = I, R <- R + Ā_l R; map = R[cls, patches] (Eq. 5-6)",
    needs_gradients=False,
    forward_passes="1 fwd + 1 bwd (whole model)",
    output="map",
    applies_to=attention_refusal,
    aliases=("chefer2021", "generic-attention"),
)
def chefer(cap: Capture, rt: Runtime) -> Tensor:
    """Chefer, Gur & Wolf 2021 ("Generic Attention-model Explainability"), self-attention rule."""
    logits, rec = _forward(rt, cap.views, grad=True)
    prefix, grid = _grid(rt.model, rec.probs[0], cap.views)
    out = torch.empty(cap.targets.shape[0], *grid, device=cap.views.device)
    for rows in _row_groups(cap):
        views = cap.view_index[rows]
        score = logits[views, cap.targets[rows]].sum()
        grads = torch.autograd.grad(score, rec.probs, retain_graph=True)
        probs = [p[views] for p in rec.probs]
        out[rows] = _to_grid(chefer_maps(probs, [g[views] for g in grads], prefix), grid).detach()
    return out


@register(
    "legrad",
    title="LeGrad",
    paper="Bousselham et al., 2024",
    url="https://arxiv.org/abs/2404.03214",
    equation="s^l = head(norm(mean_tokens Z^l))_c; map = mean_l mean_{h,q} ReLU(ds^l/dA_l)[patches] (Eq. 4-6)",
    forward_passes="1 fwd + L bwd (to each block)",
    output="map",
    applies_to=readout_refusal,
)
def legrad(cap: Capture, rt: Runtime) -> Tensor:
    """LeGrad (Bousselham et al. 2024): every block's class score from its own tokens (the
    classifier on their mean, as the authors' code and torch-cam compute it), differentiated
    with respect to that block's attention probabilities."""
    _, rec = _forward(rt, cap.views, grad=True, blocks=True)
    if len(rec.blocks) != len(rec.probs):
        from camscope.errors import UsageError

        raise UsageError(f"LeGrad: {len(rec.probs)} attention calls but {len(rec.blocks)} block outputs")
    prefix, grid = _grid(rt.model, rec.probs[0], cap.views)
    with torch.enable_grad():
        scores = [readout(rt.model, z) for z in rec.blocks]
    out = torch.empty(cap.targets.shape[0], *grid, device=cap.views.device)
    for rows in _row_groups(cap):
        views = cap.view_index[rows]
        grads = []
        for s, p in zip(scores, rec.probs, strict=True):
            (g,) = torch.autograd.grad(s[views, cap.targets[rows]].sum(), p, retain_graph=True)
            grads.append(g[views])
        out[rows] = _to_grid(legrad_maps(grads, prefix), grid).detach()
    return out
