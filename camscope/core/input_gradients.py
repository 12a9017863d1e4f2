"""Gradients the capture does not hold, for the methods that need them.

* :func:`full_gradients`: one forward and backward of the *whole* model per row, giving the
  gradient at the input (pixel-level methods: Guided Backprop, FullGrad) and at the outputs of
  chosen modules (FullGrad's bias layers, the stages of a multi-layer fusion); optionally with
  guided backpropagation's rectified ReLU backward (:func:`guided_relu`).
* :func:`tail_gradients`: gradients at the target layer of a score other than the target logit
  (Finer-CAM's contrast, Shapley-CAM's ReST) and its Hessian-vector product, through the tail.

The model is never changed: forward hooks are removed and the function override is popped in
``finally``; tensor hooks live on this call's autograd graph only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["FullGradients", "full_gradients", "guided_relu", "tail_gradients", "ScoreFn"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]
"""``score(logits (n,C), rows (n,)) -> (n,)``: the scalar explained for each row."""

_RELUS = frozenset({F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_})


def _rectify(grad: Tensor) -> Tensor:
    return grad.clamp(min=0)


class _GuidedReLU(TorchFunctionMode):
    """Every ReLU call registers a hook on its output that clamps the incoming gradient at 0:
    with ReLU's own backward (times [x > 0]) this is guided backpropagation's rule."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        if func in _RELUS and isinstance(out, Tensor) and out.requires_grad:
            out.register_hook(_rectify)
        return out


@contextlib.contextmanager
def guided_relu() -> Iterator[None]:
    """Guided backpropagation inside the block (Springenberg et al. 2015, Eq. in Fig. 1):
    R_l = [f_l > 0] * [R_{l+1} > 0] * R_{l+1} for every ReLU, module (``nn.ReLU``, in place or
    not) or functional (``F.relu``, ``torch.relu``, ``Tensor.relu_``). The forward is unchanged;
    no module is replaced, and nothing stays after the block (a function mode, popped on exit)."""
    with _GuidedReLU():
        yield


@dataclass(frozen=True)
class FullGradients:
    """What :func:`full_gradients` returns, for R rows.

    Attributes:
        inputs: (R,3,H,W) the inputs of the rows (their views).
        input: (R,3,H,W) d score / d input.
        outputs: per recorded call, the module's output (R,...) (empty unless ``keep_outputs``).
        grads: per recorded call, d score / d that output (R,...), in call order.
        modules: per recorded call, the module that made it.
    """

    inputs: Tensor
    input: Tensor
    outputs: list[Tensor]
    grads: list[Tensor]
    modules: list[nn.Module]


@contextlib.contextmanager
def _recording(modules: Sequence[nn.Module], keep_outputs: bool) -> Iterator[tuple[list, list, list]]:
    """Forward hooks on ``modules``: each call's output is kept (optionally) and a tensor hook
    stores the gradient that reaches it (before any later in-place change of the output)."""
    outputs: list[Tensor] = []
    grads: list[Tensor | None] = []
    called: list[nn.Module] = []

    def hook(module: nn.Module, _inp: object, out: object) -> None:
        if not isinstance(out, Tensor) or not out.requires_grad:
            return
        i = len(grads)
        grads.append(None)
        called.append(module)
        if keep_outputs:
            outputs.append(out.detach().clone())

        def store(g: Tensor, i: int = i) -> None:
            grads[i] = g.detach()

        out.register_hook(store)

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield outputs, grads, called
    finally:
        for h in handles:
            h.remove()


def _logit(logits: Tensor, targets: Tensor) -> Tensor:
    return logits.gather(1, targets[:, None])[:, 0]


def full_gradients(
    model: nn.Module,
    views: Tensor,
    view_index: Tensor,
    targets: Tensor,
    *,
    modules: Sequence[nn.Module] = (),
    guided: bool = False,
    keep_outputs: bool = False,
    score: Callable[[Tensor, Tensor], Tensor] | None = None,
    batch: int = 16,
) -> FullGradients:
    """Gradients of each row's score through the whole model, at the input and at ``modules``.

    Row r explains ``views[view_index[r]]`` for class ``targets[r]``; the score is the target
    logit unless ``score(logits, targets) -> (n,)`` is given. Rows run ``batch`` at a time, all
    rows of a batch in one forward and one backward (rows are independent in eval mode).
    Modules called several times per forward give one entry per call, in call order.
    """
    score = score or _logit
    chunks: list[FullGradients] = []
    for start in range(0, targets.shape[0], batch):
        rows = slice(start, start + batch)
        x = views[view_index[rows]].detach().clone().requires_grad_(True)
        guide = guided_relu() if guided else contextlib.nullcontext()
        with torch.enable_grad(), _recording(modules, keep_outputs) as (outs, grads, called), guide:
            s = score(model(x), targets[rows])
            (gx,) = torch.autograd.grad(s.sum(), x)
        if any(g is None for g in grads):
            raise RuntimeError("a recorded module's output did not reach the score")
        chunks.append(FullGradients(x.detach(), gx, list(outs), list(grads), list(called)))  # type: ignore[arg-type]
    if len(chunks) == 1:
        return chunks[0]
    n = len(chunks[0].grads)
    if any(len(c.grads) != n for c in chunks):
        raise RuntimeError("the model called the recorded modules a different number of times per batch")
    return FullGradients(
        torch.cat([c.inputs for c in chunks]),
        torch.cat([c.input for c in chunks]),
        [torch.cat([c.outputs[i] for c in chunks]) for i in range(len(chunks[0].outputs))],
        [torch.cat([c.grads[i] for c in chunks]) for i in range(n)],
        chunks[0].modules,
    )


def tail_gradients(
    split: object,
    acts: Tensor,
    carry: object,
    view_index: Tensor,
    targets: Tensor,
    score: Callable[[Tensor, Tensor], Tensor] | None = None,
    *,
    hessian_product: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """d s_r / dA for every row r, through the tail only (``split.tail``), for activations
    ``acts`` (V,K,h,w) of the views; ``score(logits (n,C), rows (n,)) -> (n,)`` (default: the
    logit of ``targets[rows]``). With ``hessian_product``, also H_r A (H_r = d^2 s_r / dA^2, the
    Hessian-vector product with the activations themselves), else None.

    Rows are grouped so that no view appears twice in one backward: one backward (two with the
    Hessian product) per rank of target, as in :func:`camscope.core.capture.capture`.
    """
    score = score or (lambda logits, rows: _logit(logits, targets[rows]))
    views = view_index.tolist()
    slots: list[list[int]] = []  # slot j: the j-th row of every view
    seen: dict[int, int] = {}
    for r, v in enumerate(views):
        j = seen.get(v, 0)
        seen[v] = j + 1
        if j == len(slots):
            slots.append([])
        slots[j].append(r)
    grads = torch.empty((len(views), *acts.shape[1:]), dtype=acts.dtype, device=acts.device)
    hvps = torch.empty_like(grads) if hessian_product else None
    # Fused attention kernels have no double backward: the math one for the Hessian product.
    math_attention = contextlib.nullcontext()
    if hessian_product:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        math_attention = sdpa_kernel([SDPBackend.MATH])
    with torch.enable_grad(), math_attention:
        a = acts.detach().clone().requires_grad_(True)
        logits = split.tail(a, carry, None)  # type: ignore[attr-defined]
        for j, rows in enumerate(slots):
            r = torch.tensor(rows, device=acts.device)
            v = view_index[r]
            s = score(logits[v], r).sum()
            last = j == len(slots) - 1
            (g,) = torch.autograd.grad(s, a, retain_graph=hessian_product or not last, create_graph=hessian_product)
            grads[r] = g[v].detach()
            if hvps is not None:
                h = None
                if g.requires_grad:  # else the gradient is constant: a linear tail
                    (h,) = torch.autograd.grad(
                        g, a, grad_outputs=acts.detach(), retain_graph=not last, allow_unused=True
                    )
                hvps[r] = 0 if h is None else h[v].detach()
    return grads, hvps
