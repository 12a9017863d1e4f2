"""One capture serves every method: activations, gradients, logits and targets for a batch.

The network is split at the target layer (``core.split``): the head runs once without autograd;
the tail runs on activations that require grad, so the backward pass stops at the target layer
(``torch.autograd.grad`` with respect to the activations, never through the parameters). A split
that cannot be traced (hooks) does both in one forward (``LayerSplit.head_tail``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Capture", "capture", "model_state_guard"]

@dataclass(frozen=True)
class Capture:
    """Everything a CAM method may read, for R rows (one row = one view of an image and a class).

    Attributes:
        views: (V,3,H,W) model inputs (images, or augmented views of them).
        view_activations: (V,K,h,w) target-layer activations of each view.
        view_logits: (V,C) model outputs of each view.
        carry: values the tail needs besides the activations (see ``LayerSplit.tail``).
        view_index: (R,) the view of each row.
        targets: (R,) the target class of each row (-1 for a target without one).
        gradients: (R,K,h,w) d score / d A of each row's target, or None when no method needs them.
        view_output: the model's output for the views as it returned it (a tensor, a dict, a
            list of detection dicts...), detached.
        row_targets: the :class:`camscope.targets.Target` of each row.
        row_scores: (R,) each row's target score on its view.
    """

    views: Tensor
    view_activations: Tensor
    view_logits: Tensor
    carry: Any
    view_index: Tensor
    targets: Tensor
    gradients: Tensor | None = None
    view_output: Any = None
    row_targets: tuple[Any, ...] | None = None
    row_scores: Tensor | None = None

    @property
    def activations(self) -> Tensor:
        """(R,K,h,w) activations of each row."""
        return self.view_activations[self.view_index]

    @property
    def logits(self) -> Tensor:
        """(R,C) logits of each row's view."""
        return self.view_logits[self.view_index]

    @property
    def scores(self) -> Tensor:
        """(R,) target score of each row on its view (the logit y_c for class targets)."""
        if self.row_scores is not None:
            return self.row_scores
        return self.logits.gather(1, self.targets[:, None])[:, 0]

    def score_matrix(self, output: Any, rows: Tensor, *, probability: bool = False) -> Tensor:
        """Scores (n, len(rows)) of the targets of ``rows`` on each of the n images of
        ``output`` (the model's output for n perturbed copies of one view; rows of that view):
        what Ablation-CAM and Score-CAM read. ``probability``: Score-CAM's probability (the
        softmax for class targets)."""
        if self.row_targets is None:
            logits = torch.softmax(output, dim=1) if probability else output
            return logits[:, self.targets[rows]]
        from camscope.targets import score_matrix

        return score_matrix([self.row_targets[r] for r in rows.tolist()], output, probability=probability)

    def rows_by_view(self) -> Iterator[tuple[int, Tensor]]:
        """Yield (view, row indices) for every view that has rows."""
        views = self.view_index.tolist()
        groups: dict[int, list[int]] = {}
        for r, v in enumerate(views):
            groups.setdefault(v, []).append(r)
        for v, rows in groups.items():
            yield v, torch.tensor(rows, device=self.view_index.device)


@contextlib.contextmanager
def model_state_guard(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the duration; restore every module's training flag and
    every parameter's ``.grad`` afterwards, also when an exception escapes.

    ``.grad`` is set to None for the duration, so that a backward through the parameters (e.g.
    by a user-registered method) accumulates into new tensors, not into the caller's."""
    flags = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.grad = None
        yield model
    finally:
        for m, flag in flags:
            m.training = flag
        for p, g in grads:
            p.grad = g


def capture(
    split: Any,
    views: Tensor,
    *,
    targets_of_view: Sequence[Sequence[int]] | None = None,
    top_k: int = 1,
    plain_view_of: Sequence[int] | None = None,
    need_gradients: bool = True,
    resolve: Any = None,
) -> Capture:
    """Run one forward (and, if needed, one backward per target rank) for a batch of views.

    Args:
        split: a ``LayerSplit`` of the model at the target layer.
        views: (V,3,H,W) inputs.
        targets_of_view: explicit target classes per view; by default the ``top_k`` predicted
            classes of the view's plain view (``plain_view_of[v]``, itself by default).
        top_k: number of predicted classes explained when targets are not given.
        plain_view_of: for augmented views, the index of the un-augmented view of the same image:
            targets come from its prediction so that every view explains the same class.
        need_gradients: compute d y_c / d A for every row.
        resolve: ``resolve(output) -> targets of each view`` (lists of
            :class:`camscope.targets.Target`, any length, possibly empty) from the model's
            output on all views; replaces ``targets_of_view`` / ``top_k``
            (:func:`capture_targets`).
    """
    one_pass = None
    if need_gradients and hasattr(split, "head_tail"):  # the hook path: one forward, not two
        with torch.enable_grad():
            one_pass = split.head_tail(views)
    if one_pass is not None:
        acts, carry, a, logits = one_pass
    else:
        with torch.no_grad():
            acts, carry = split.head(views)
    if not isinstance(acts, torch.Tensor) or acts.dim() != 4:
        from camscope.errors import UsageError

        got = f"shape {tuple(acts.shape)}" if isinstance(acts, torch.Tensor) else f"a {type(acts).__name__}"
        raise UsageError(
            f"layer {split.layer!r} gives {got}, not a 4-D (N, C, h, w) feature map "
            f"(reshape {getattr(split, 'reshape', 'none')}); choose a convolutional stage or a "
            "transformer block's norm, or pass --reshape auto / tokens:HxW[:skip=T] / nhwc"
        )
    acts = acts.detach()
    if one_pass is None:
        with torch.enable_grad() if need_gradients else torch.no_grad():
            a = acts.clone().requires_grad_(need_gradients)
            logits = split.tail(a, carry, None)
    if resolve is not None:
        return capture_targets(views, acts, a, logits, carry, resolve, need_gradients)
    n_views = views.shape[0]
    if targets_of_view is None:
        plain = list(range(n_views)) if plain_view_of is None else list(plain_view_of)
        k = min(top_k, logits.shape[1])
        top = logits.detach().topk(k, dim=1).indices.tolist()
        targets_of_view = [top[plain[v]] for v in range(n_views)]
    ranks = len(targets_of_view[0])
    if any(len(t) != ranks for t in targets_of_view):
        raise ValueError("every view needs the same number of target classes")
    tv = torch.tensor(targets_of_view, dtype=torch.long, device=logits.device)  # (V, ranks)

    gradients = None
    if need_gradients:
        per_rank = []
        for j in range(ranks):
            score = logits.gather(1, tv[:, j : j + 1]).sum()
            (g,) = torch.autograd.grad(score, a, retain_graph=j < ranks - 1)
            per_rank.append(g)
        gradients = torch.stack(per_rank, dim=1).reshape(n_views * ranks, *acts.shape[1:])
    view_index = torch.arange(n_views, device=logits.device).repeat_interleave(ranks)
    return Capture(
        views=views,
        view_activations=acts,
        view_logits=logits.detach().float(),
        carry=carry,
        view_index=view_index,
        targets=tv.reshape(-1),
        gradients=None if gradients is None else gradients.detach(),
    )


def capture_targets(
    views: Tensor, acts: Tensor, a: Tensor, output: Any, carry: Any, resolve: Any, need_gradients: bool
) -> Capture:
    """The rows of a capture from targets: ``resolve(output)`` gives each view its targets;
    row ``(v, j)`` is view ``v``'s ``j``-th target, rows in view-major order. One backward per
    rank ``j`` (the sum of the ``j``-th targets' scores of every view that has one): views do
    not interact, so each view's gradient is its own target's."""
    from camscope.targets import row_scores

    per_view = resolve(_detach(output))
    n_views = views.shape[0]
    if len(per_view) != n_views:
        raise ValueError(f"{len(per_view)} target lists for {n_views} views")
    ranks = max((len(t) for t in per_view), default=0)
    device = acts.device
    rows = [(v, j) for v, ts in enumerate(per_view) for j in range(len(ts))]
    row_targets = tuple(per_view[v][j] for v, j in rows)
    scores = torch.zeros(len(rows), device=device)
    gradients = None
    if need_gradients:
        per_rank = []
        for j in range(ranks):
            views_j = [v for v, ts in enumerate(per_view) if len(ts) > j]
            s = row_scores([per_view[v][j] for v in views_j], output, torch.tensor(views_j, device=device))
            if s.requires_grad:
                (g,) = torch.autograd.grad(s.sum(), a, retain_graph=j < ranks - 1)
            else:  # e.g. no detection matched: the score is a constant 0
                g = torch.zeros_like(acts)
            per_rank.append(g)
        if rows:
            stacked = torch.stack(per_rank, dim=1)
            vi = torch.tensor([v for v, _ in rows], device=device)
            ji = torch.tensor([j for _, j in rows], device=device)
            gradients = stacked[vi, ji].detach()
        else:
            gradients = acts.new_zeros(0, *acts.shape[1:])
    out = _detach(output)
    with torch.no_grad():
        if rows:
            scores = row_scores(list(row_targets), out, torch.tensor([v for v, _ in rows], device=device)).float()
    logits = _logits_or_empty(out, n_views)
    return Capture(
        views=views,
        view_activations=acts,
        view_logits=logits,
        carry=carry,
        view_index=torch.tensor([v for v, _ in rows], dtype=torch.long, device=device),
        targets=torch.tensor([getattr(t, "label", -1) for t in row_targets], dtype=torch.long, device=device),
        gradients=gradients,
        view_output=out,
        row_targets=row_targets,
        row_scores=scores.detach(),
    )


def _detach(value: Any) -> Any:
    """A model output with every tensor detached (floating ones as float32); dicts, lists,
    tuples and Hugging Face outputs (dicts) keep their keys."""
    if isinstance(value, torch.Tensor):
        return value.detach().float() if value.is_floating_point() else value.detach()
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_detach(v) for v in value)
    return value


def _logits_or_empty(output: Any, n_views: int) -> Tensor:
    """(V, C) classifier logits when the output has them, else (V, 0)."""
    from camscope.errors import UsageError
    from camscope.targets import logits_of

    try:
        logits = logits_of(output)
    except UsageError:
        logits = None
    if logits is None or logits.dim() != 2 or logits.shape[0] != n_views:
        return torch.zeros(n_views, 0)
    return logits.float()
