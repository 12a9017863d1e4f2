"""Multi-layer methods: Layer-CAM fused across stages, and RefineCAM.

Both need activations and gradients at the ends of the stages before the target layer
(:func:`stage_layers`); they run the whole model forward and backward once per row, with hooks
on those modules only (``core.input_gradients.full_gradients``).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camscope.core.capture import Capture
from camscope.core.input_gradients import full_gradients
from camscope.core.layers import get_module
from camscope.core.runtime import Runtime
from camscope.methods.gradient import gradcampp_weights
from camscope.methods.pixel import ROWS_PER_PASS
from camscope.methods.registry import register

#: Stages fused: at most this many (the target included), each at most MAX_FACTOR times the
#: target layer's side (finer ones are edge detectors, not object evidence).
MAX_STAGES = 4
MAX_FACTOR = 8
#: Layer-CAM's scaling of a normalised map before the fusion, tanh(gamma * M) (Eq. 9).
GAMMA = 2.0
#: Added to Grad-CAM++'s alpha denominator in RefineCAM (pytorch-grad-cam adds 1e-6, which
#: dominates where gradients are below ~1e-3, e.g. the early stages of an untrained network).
GRADCAMPP_EPS = 0.0
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Hardswish, nn.Mish)


def _candidates(model: nn.Module, layer: str) -> list[tuple[str, nn.Module]]:
    """Modules that run before the target layer's output, nearest first: the target's own
    descendants (a container's inner stages), then the siblings registered before it, level by
    level up to the root. Only containers (blocks, stages) and activations: stage ends."""
    out: list[tuple[str, nn.Module]] = []
    target = get_module(model, layer)
    inner = [(f"{layer}.{n}", m) for n, m in target.named_modules() if n]
    out.extend(reversed(inner))
    parts = layer.split(".")
    while parts:
        name = parts.pop()
        parent_name = ".".join(parts)
        parent = get_module(model, parent_name) if parent_name else model
        before = []
        for child_name, child in parent.named_children():
            if child_name == name:
                break
            before.append((f"{parent_name}.{child_name}" if parent_name else child_name, child))
        for child_name, child in reversed(before):
            out.append((child_name, child))
            out.extend(reversed([(f"{child_name}.{n}", m) for n, m in child.named_modules() if n]))
    return [(n, m) for n, m in out if next(m.children(), None) is not None or isinstance(m, _ACTIVATIONS)]


@contextlib.contextmanager
def _shapes(modules: list[nn.Module]):
    shapes: dict[int, tuple[int, ...]] = {}

    def hook(m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, Tensor):
            shapes[id(m)] = tuple(out.shape)  # the last call counts

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield shapes
    finally:
        for h in handles:
            h.remove()


def stage_layers(model: nn.Module, layer: str, x: Tensor, target_hw: tuple[int, int]) -> list[str]:
    """Ends of the stages before ``layer``, nearest first: going back from the target layer
    (:func:`_candidates`), each container or activation whose output is a 4-D map with a side
    larger than the previous stage's (and at most ``MAX_FACTOR`` times the target's); at most
    ``MAX_STAGES - 1``. The output shapes come from one forward of ``x`` (one view)."""
    cands = _candidates(model, layer)
    with _shapes([m for _, m in cands]) as shapes, torch.no_grad():
        model(x)
    picked: list[str] = []
    side = target_hw[0]
    seen: set[int] = set()
    for name, m in cands:
        shape = shapes.get(id(m))
        if id(m) in seen or shape is None or len(shape) != 4:
            continue
        seen.add(id(m))
        if side < shape[-2] <= MAX_FACTOR * target_hw[0] and shape[-1] > target_hw[1]:
            picked.append(name)
            side = shape[-2]
            if len(picked) == MAX_STAGES - 1:
                break
    return picked


def _stages(cap: Capture, rt: Runtime) -> tuple[list[Tensor], list[Tensor]]:
    """(activations, gradients) of every row at the target layer and the earlier stage ends,
    target first."""
    hw = tuple(cap.view_activations.shape[-2:])
    names = stage_layers(rt.model, rt.split.layer, cap.views[:1], hw)
    acts, grads = [cap.activations], [cap.gradients]
    if not names:
        return acts, grads
    modules = [get_module(rt.model, n) for n in names]
    fg = full_gradients(
        rt.model, cap.views, cap.view_index, cap.targets, modules=modules, keep_outputs=True,
        batch=rt.batch(ROWS_PER_PASS),
    )
    last = {id(m): i for i, m in enumerate(fg.modules)}  # a reused module: its last call
    for m in modules:
        acts.append(fg.outputs[last[id(m)]])
        grads.append(fg.grads[last[id(m)]])
    return acts, grads


def _minmax(m: Tensor, eps: float) -> Tensor:
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / (m.amax(dim=(1, 2), keepdim=True) + eps)


def _up(m: Tensor, size: tuple[int, ...]) -> Tensor:
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


@register(
    "layercam-fusion",
    title="Layer-CAM fused across stages",
    paper="Jiang et al., IEEE TIP 2021 (Sec. III-C)",
    url="https://doi.org/10.1109/TIP.2021.3089943",
    equation="L = max_l Up(tanh(2 minmax(M_l))), M_l = ReLU(sum_k ReLU(g_l) A_l) per stage l (Eq. 6-9)",
    needs_gradients=True,
    forward_passes="1 fwd + 1 bwd (whole model)",
    output="map",
    aliases=("layercam-multi", "multilayer-layercam"),
)
def layercam_fusion(cap: Capture, rt: Runtime) -> Tensor:
    """Layer-CAM across stages (Jiang et al. 2021): the Layer-CAM map of the target layer and of
    the ends of up to 3 earlier stages (:func:`stage_layers`), each normalised and scaled by
    tanh(gamma M) (Eq. 9; torch-cam scales every layer, as here), upsampled to the finest and
    fused by the element-wise maximum (torch-cam's ``LayerCAM.fuse_cams``)."""
    acts, grads = _stages(cap, rt)
    maps = [torch.tanh(GAMMA * _minmax(torch.relu((torch.relu(g) * a).sum(dim=1)), 1e-8)) for a, g in zip(acts, grads, strict=True)]
    size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
    return torch.stack([_up(m, tuple(size)) for m in maps]).amax(dim=0)


@register(
    "refinecam",
    title="RefineCAM (Grad-CAM++ across stages)",
    paper="as in pytorch-grad-cam's RefineCAM (arXiv 2605.14641)",
    url="https://github.com/jacobgil/pytorch-grad-cam",
    equation="L = prod_l Up(minmax(ReLU(sum_k w_k^l A_k^l))), w^l: Grad-CAM++ at stage l",
    needs_gradients=True,
    forward_passes="1 fwd + 1 bwd (whole model)",
    output="map",
    aliases=("refine-cam",),
)
def refinecam(cap: Capture, rt: Runtime) -> Tensor:
    """RefineCAM (pytorch-grad-cam 1.5.7): the product over the stages of each stage's
    Grad-CAM++ map, normalised to [0,1], upsampled to the input and normalised again (as
    pytorch-grad-cam's per-layer maps), so that a position counts
    only where every stage agrees: the deep map's localisation with the shallow maps' detail."""
    acts, grads = _stages(cap, rt)
    size = tuple(cap.views.shape[-2:])
    out = None
    for a, g in zip(acts, grads, strict=True):
        sal = torch.relu((gradcampp_weights(g, a, GRADCAMPP_EPS)[:, :, None, None] * a).sum(dim=1))
        m = _minmax(_up(_minmax(sal, 1e-7), size), 1e-7)  # [0,1] again after upsampling
        out = m if out is None else out * m
    return out
