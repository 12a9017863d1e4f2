"""Naive, straightforward reference implementations of every registered CAM method.

Not registered and not used by the library: tests and benchmarks compare the fast methods with
these. Everything here runs the *full* model, one image at a time and (for the perturbation
methods) one forward pass per channel, with plain forward hooks on the target layer, exactly as
the papers / official implementations describe the computation:

- gradients: one full forward + backward per image and class, the target layer's output kept in
  the graph by a forward hook;
- Ablation-CAM: one full forward per channel with a hook that zeroes channel ``k`` of the layer
  output (no tail, no skipping of dead channels);
- Score-CAM (official): one full forward per non-constant channel, mask = min-max normalised
  bilinear (``align_corners=False``) upsampling of ``A_k``, weight = softmax probability;
- Score-CAM as pytorch-grad-cam: one full forward per channel *including* constant ones, masks
  upsampled with ``align_corners=True`` and normalised with its ``1e-8`` guard, weights = softmax
  across channels of the target logits.

The map of every method is ``normalise(upsample(ReLU(sum_k w_k A_k)))`` (Eigen-CAM and the eigen
variant: the first principal component instead of the channel sum, sign chosen to correlate
positively with the channel sum), computed here without ``camscope.core.postprocess``.

A module called several times per forward is taken at its **last** call (as ``split_model``).

``reshape`` (a spec string or :class:`~camscope.core.reshape.Reshape`; default: the output is
already (B, K, h, w)) handles transformer tokens and channels-last outputs, written out here
without ``Reshape.to_maps`` / ``to_layer``: patch tokens ``out[:, t:]`` in row-major order are
the map's positions, the prefix tokens are left as they are; Ablation-CAM zeroes feature ``k``
of every patch token in the layer's own layout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "REFERENCE_WEIGHTS",
    "layer_activations",
    "reference_gradients",
    "reference_gradient_weights",
    "reference_ablation_weights",
    "reference_scorecam_weights",
    "reference_scorecam_logit_softmax_weights",
    "reference_weights",
    "reference_saliency",
    "reference_finalize",
    "reference_maps",
]


# --------------------------------------------------------------------------- hooks


def _count_calls(model: nn.Module, layer: nn.Module, x: Tensor) -> int:
    calls = [0]

    def hook(_m: nn.Module, _i: object, _o: object) -> None:
        calls[0] += 1

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    if calls[0] == 0:
        raise ValueError("the layer is never called in the model's forward pass")
    return calls[0]


@contextlib.contextmanager
def _on_last_call(
    layer: nn.Module, n_calls: int, fn: Callable[[Tensor], Tensor | None]
) -> Iterator[None]:
    """Forward hook applying ``fn`` to the output of the ``n_calls``-th call of ``layer``."""
    calls = [0]

    def hook(_m: nn.Module, _i: object, out: Tensor) -> Tensor | None:
        calls[0] += 1
        return fn(out) if calls[0] == n_calls else None

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _layer(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    return model.get_submodule(layer) if isinstance(layer, str) else layer


def _raw_output(model: nn.Module, module: nn.Module, x: Tensor) -> Tensor:
    n = _count_calls(model, module, x)
    seen: list[Tensor] = []
    with _on_last_call(module, n, lambda out: seen.append(out.detach().clone())), torch.no_grad():
        model(x)
    return seen[0]


def _layout(model: nn.Module, module: nn.Module, x: Tensor, reshape: object) -> tuple[str, int, tuple[int, int]]:
    """(kind, prefix tokens, grid) of the layer's output for ``reshape`` ("none" without one)."""
    if reshape is None:
        return "none", 0, (0, 0)
    from camscope.core.reshape import Reshape

    rs = Reshape.parse(reshape)  # type: ignore[arg-type]
    if not rs.resolved:
        rs = rs.resolve(_raw_output(model, module, x), tuple(x.shape[-2:]), model, batch=x.shape[0])
    return rs.kind, int(rs.skip or 0), tuple(rs.grid or (0, 0))  # type: ignore[return-value]


def _as_map(out: Tensor, kind: str, skip: int, grid: tuple[int, int]) -> Tensor:
    """The layer's output as a (B, K, h, w) map."""
    if kind == "nhwc":
        return out.movedim(-1, 1)
    if kind == "tokens":
        return out[:, skip:, :].transpose(1, 2).reshape(out.shape[0], out.shape[2], *grid)
    return out


def _from_map(maps: Tensor, out: Tensor, kind: str, skip: int) -> Tensor:
    """The layer's output rebuilt from a map and the original output's prefix tokens."""
    if kind == "nhwc":
        return maps.movedim(1, -1)
    if kind == "tokens":
        return torch.cat([out[:, :skip], maps.flatten(2).transpose(1, 2)], dim=1)
    return maps


def _zero_feature(out: Tensor, row: int, ch: int, kind: str, skip: int) -> None:
    """Ablate feature ``ch`` of image ``row`` in place, in the layer's own layout."""
    if kind == "nhwc":
        out[row, :, :, ch] = 0
    elif kind == "tokens":
        out[row, skip:, ch] = 0
    else:
        out[row, ch] = 0


def layer_activations(
    model: nn.Module, layer: str | nn.Module, x: Tensor, *, reshape: object = None
) -> Tensor:
    """Output (B,K,h,w) of ``layer`` (its last call) in a full no-grad forward of ``x``, as a
    map by ``reshape``."""
    module = _layer(model, layer)
    kind, skip, grid = _layout(model, module, x, reshape)
    return _as_map(_raw_output(model, module, x), kind, skip, grid).contiguous()


def _targets(targets: Sequence[int] | Tensor, b: int) -> list[int]:
    t = [int(c) for c in (targets.tolist() if isinstance(targets, Tensor) else targets)]
    if len(t) != b:
        raise ValueError(f"{len(t)} targets for {b} images")
    return t


# --------------------------------------------------------------------------- gradients


def reference_gradients(
    model: nn.Module,
    layer: str | nn.Module,
    x: Tensor,
    targets: Sequence[int] | Tensor,
    *,
    reshape: object = None,
) -> Tensor:
    """d y_c / d A (B,K,h,w) by a full forward and backward per image (A: the map)."""
    module = _layer(model, layer)
    kind, skip, grid = _layout(model, module, x, reshape)
    out = []
    for i, c in enumerate(_targets(targets, x.shape[0])):
        xi = x[i : i + 1]
        n = _count_calls(model, module, xi)
        kept: list[Tensor] = []

        def keep(a: Tensor, kept: list[Tensor] = kept) -> Tensor:
            a = a.detach().clone()
            m = _as_map(a, kind, skip, grid).clone().requires_grad_(True)
            kept.append(m)
            return _from_map(m, a, kind, skip)

        with _on_last_call(module, n, keep), torch.enable_grad():
            y = model(xi)[0, c]
            (g,) = torch.autograd.grad(y, kept[0])
        out.append(g[0].detach())
    return torch.stack(out)


def reference_gradient_weights(method: str, acts: Tensor, grads: Tensor) -> Tensor:
    """Weights of a gradient method from activations and gradients (B,K,h,w), by the papers'
    formulas written out channel by channel. Channel weights (B,K) or element weights (B,K,h,w)."""
    b, k = acts.shape[:2]
    if method == "hirescam":
        return grads.clone()
    if method == "layercam":
        return torch.relu(grads)
    w = torch.zeros(b, k, dtype=torch.float64)
    for i in range(b):
        for ch in range(k):
            a = acts[i, ch].double()
            g = grads[i, ch].double()
            if method == "gradcam":
                w[i, ch] = g.mean()
            elif method == "xgradcam":
                w[i, ch] = (g * a).sum() / (a.sum() + 1e-7)
            elif method == "gradcampp":
                total = 0.0
                s = float(a.sum())
                for gij in g.flatten().tolist():
                    denom = 2 * gij**2 + s * gij**3
                    if gij <= 0.0 or denom == 0.0:
                        continue  # ReLU(g) = 0, or alpha undefined (taken as 0)
                    total += gij**2 / denom * gij
                w[i, ch] = total
            else:
                raise ValueError(f"{method!r} is not a gradient method")
    return w.float()


# --------------------------------------------------------------------------- perturbation


@torch.no_grad()
def reference_ablation_weights(
    model: nn.Module,
    layer: str | nn.Module,
    x: Tensor,
    targets: Sequence[int] | Tensor,
    *,
    chunk: int = 1,
    reshape: object = None,
) -> Tensor:
    """Ablation-CAM weights (B,K): ``(y_c - y_c^k) / y_c``, one full forward per channel ``k``
    with a hook zeroing channel ``k`` of the layer output (feature ``k`` of every patch token).
    ``chunk`` > 1 stacks that many of these independent forwards into one batch (row ``r``
    ablates its own channel)."""
    module = _layer(model, layer)
    tg = _targets(targets, x.shape[0])
    kind, skip, _ = _layout(model, module, x, reshape)
    acts = layer_activations(model, module, x, reshape=reshape)
    k = acts.shape[1]
    w = torch.zeros(acts.shape[:2])
    for i, c in enumerate(tg):
        xi = x[i : i + 1]
        n = _count_calls(model, module, xi)
        y = float(model(xi)[0, c])
        for start in range(0, k, chunk):
            chans = list(range(start, min(k, start + chunk)))

            def zero(out: Tensor, chans: list[int] = chans) -> Tensor:
                out = out.clone()
                for r, ch in enumerate(chans):
                    _zero_feature(out, r, ch, kind, skip)
                return out

            with _on_last_call(module, n, zero):
                y_k = model(xi.expand(len(chans), *xi.shape[1:]))[:, c]
            for r, ch in enumerate(chans):
                w[i, ch] = (y - float(y_k[r])) / y
    return w


def _minmax(m: Tensor, eps: float = 0.0) -> Tensor:
    return (m - m.min()) / (m.max() - m.min() + eps)


def _masks(acts: Tensor, size: Sequence[int], *, pgc: bool) -> list[Tensor | None]:
    """Per channel of ``acts`` (K,h,w): the normalised upsampled mask (1,1,H,W), or None for a
    constant channel (official Score-CAM; with ``pgc`` every channel gets a mask)."""
    out = []
    for ch in range(acts.shape[0]):
        up = F.interpolate(
            acts[None, ch : ch + 1], size=tuple(size), mode="bilinear", align_corners=pgc
        )
        if pgc:
            out.append(_minmax(up, 1e-8))
        else:
            out.append(None if up.max() == up.min() else _minmax(up))
    return out


def _masked_logits(model: nn.Module, xi: Tensor, masks: list[Tensor | None], chunk: int) -> Tensor:
    """Logits (n,C) of ``xi * mask`` for each mask: one forward each, ``chunk`` stacked."""
    out = []
    for start in range(0, len(masks), chunk):
        batch = torch.cat([xi * m for m in masks[start : start + chunk]])
        out.append(model(batch))
    return torch.cat(out)


@torch.no_grad()
def reference_scorecam_weights(
    model: nn.Module,
    layer: str | nn.Module,
    x: Tensor,
    targets: Sequence[int] | Tensor,
    *,
    chunk: int = 1,
    reshape: object = None,
) -> Tensor:
    """Score-CAM weights (B,K) as the official implementation: softmax probability of the class
    for the input times each non-constant channel's normalised upsampled map; constant: 0."""
    tg = _targets(targets, x.shape[0])
    acts = layer_activations(model, layer, x, reshape=reshape)
    w = torch.zeros(acts.shape[:2])
    for i, c in enumerate(tg):
        masks = _masks(acts[i], x.shape[-2:], pgc=False)
        live = [ch for ch, m in enumerate(masks) if m is not None]
        if not live:
            continue
        probs = torch.softmax(
            _masked_logits(model, x[i : i + 1], [masks[ch] for ch in live], chunk), dim=1
        )
        for r, ch in enumerate(live):
            w[i, ch] = probs[r, c]
    return w


@torch.no_grad()
def reference_scorecam_logit_softmax_weights(
    model: nn.Module,
    layer: str | nn.Module,
    x: Tensor,
    targets: Sequence[int] | Tensor,
    *,
    chunk: int = 1,
    reshape: object = None,
) -> Tensor:
    """Score-CAM weights (B,K) as pytorch-grad-cam: target logit of each masked input (every
    channel, constant ones included), masks with ``align_corners=True`` and a 1e-8 guard,
    softmax across channels."""
    tg = _targets(targets, x.shape[0])
    acts = layer_activations(model, layer, x, reshape=reshape)
    w = torch.zeros(acts.shape[:2])
    for i, c in enumerate(tg):
        masks = _masks(acts[i], x.shape[-2:], pgc=True)
        scores = _masked_logits(model, x[i : i + 1], masks, chunk)[:, c]
        w[i] = torch.softmax(scores.double(), dim=0).float()
    return w


# --------------------------------------------------------------------------- maps

_GRADIENT = ("gradcam", "gradcampp", "xgradcam", "hirescam", "layercam")


def _perturbation(name: str) -> Callable[..., Tensor]:
    return {
        "ablationcam": reference_ablation_weights,
        "scorecam": reference_scorecam_weights,
        "scorecam-logit-softmax": reference_scorecam_logit_softmax_weights,
    }[name]


#: Registered method name -> how its reference weights are computed.
REFERENCE_WEIGHTS: dict[str, str] = {
    **{m: "gradient" for m in _GRADIENT},
    "eigencam": "unit",
    "ablationcam": "perturbation",
    "scorecam": "perturbation",
    "scorecam-logit-softmax": "perturbation",
}


#: Catalogue methods without a naive reference here: where they are checked instead (against
#: pytorch-grad-cam / torch-cam on the same model, layer and target, and against hand formulas).
CATALOGUE_TESTED: dict[str, str] = {
    m: "tests/methods/test_catalogue.py, tests/methods/test_methods.py"
    for m in (
        "gradcam-elementwise", "shapleycam", "finercam", "smoothgradcampp", "eigengradcam", "kpcacam",
        "sscam", "iscam", "guidedbackprop", "guidedgradcam", "fullgrad", "layercam-fusion", "refinecam",
        "random",
    )
}


def reference_weights(
    method: str,
    model: nn.Module,
    layer: str | nn.Module,
    x: Tensor,
    targets: Sequence[int] | Tensor,
    *,
    chunk: int = 1,
    reshape: object = None,
) -> Tensor:
    """Reference weights of ``method`` for images ``x`` and one target class per image
    (``chunk``: independent per-channel forwards stacked per batch, perturbation methods)."""
    kind = REFERENCE_WEIGHTS.get(method)
    if kind is None:
        raise KeyError(f"no reference implementation of {method!r}")
    if kind == "gradient":
        acts = layer_activations(model, layer, x, reshape=reshape)
        grads = reference_gradients(model, layer, x, targets, reshape=reshape)
        return reference_gradient_weights(method, acts, grads)
    if kind == "unit":
        acts = layer_activations(model, layer, x, reshape=reshape)
        return torch.ones(acts.shape[:2])
    return _perturbation(method)(model, layer, x, targets, chunk=chunk, reshape=reshape)


def _first_component(weighted: np.ndarray) -> np.ndarray:
    """(K,h,w) -> (h,w): projection on the first principal component, sign agreeing with the
    channel sum."""
    k, h, w = weighted.shape
    m = weighted.reshape(k, h * w).T.astype(np.float64)  # (hw, K)
    m = m - m.mean(axis=0, keepdims=True)
    if not np.any(m):
        return np.zeros((h, w))
    _, _, vt = np.linalg.svd(m, full_matrices=False)
    proj = m @ vt[0]
    ref = weighted.sum(axis=0).reshape(-1).astype(np.float64)
    if float(proj @ (ref - ref.mean())) < 0:
        proj = -proj
    return proj.reshape(h, w)


def reference_saliency(weights: Tensor, acts: Tensor, *, pca: bool = False) -> Tensor:
    """Raw saliency (B,h,w): ``sum_k w_k A_k``, or its first principal component (``pca``)."""
    if weights.dim() == 2:
        weights = weights[:, :, None, None]
    weighted = (weights.double() * acts.double()).numpy()
    out = []
    for wa in weighted:
        out.append(_first_component(wa) if pca else wa.sum(axis=0))
    return torch.from_numpy(np.stack(out)).float()


def reference_finalize(saliency: Tensor, size: Sequence[int]) -> Tensor:
    """ReLU -> bilinear upsampling (align_corners=False) -> min-max normalisation.

    A map whose range is below 1e-6 of its magnitude (rounding noise) counts as constant: 0."""
    s = torch.relu(saliency.float())[:, None]
    if tuple(s.shape[-2:]) != tuple(size):
        s = F.interpolate(s, size=tuple(size), mode="bilinear", align_corners=False)
    s = s[:, 0]
    out = torch.zeros_like(s)
    for i in range(s.shape[0]):
        lo, hi = float(s[i].min()), float(s[i].max())
        if hi - lo > 1e-6 * max(abs(lo), abs(hi)) and hi - lo > 0:
            out[i] = (s[i] - lo) / (hi - lo)
    return out


def reference_maps(
    method: str,
    model: nn.Module,
    layer: str | nn.Module,
    x: Tensor,
    targets: Sequence[int] | Tensor,
    *,
    eigen: bool = False,
    chunk: int = 1,
    reshape: object = None,
) -> Tensor:
    """Reference maps (B,H,W) of ``method`` (optionally eigen-smoothed) for one class per image;
    ``reshape`` for token / channels-last layers (see the module docstring)."""
    acts = layer_activations(model, layer, x, reshape=reshape)
    w = reference_weights(method, model, layer, x, targets, chunk=chunk, reshape=reshape)
    sal = reference_saliency(w, acts, pca=eigen or method == "eigencam")
    return reference_finalize(sal, x.shape[-2:])
