"""Resolve target layers: dotted paths, canonical names, per-architecture defaults, shape checks.

A layer path is a dotted module path as in ``model.named_modules()`` ("layer4.2", "features.28").
Integer parts index ``nn.Sequential`` / ``nn.ModuleList`` children by position and may be negative,
written either dotted or in brackets: "layer4.-1", "layer4[-1]", "layer4[-1].conv2".
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from camscope.core.capture import model_state_guard
from camscope.errors import UsageError

logger = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE: tuple[int, int, int, int] = (1, 3, 224, 224)

_SEGMENT = re.compile(r"(?P<name>[^\[\]]*)(?P<idx>(?:\[\s*-?\d+\s*\])*)")
_INT = re.compile(r"-?\d+")


def _tokens(path: str) -> list[str]:
    """Split "layer4[-1].conv2" / "layer4.-1.conv2" into ["layer4", "-1", "conv2"]."""
    if not isinstance(path, str) or not path.strip():
        raise UsageError(
            f"layer path {path!r} is empty; give a dotted module path such as 'layer4'"
        )
    tokens: list[str] = []
    for seg in path.strip().split("."):
        m = _SEGMENT.fullmatch(seg.strip())
        if m is None or (not m.group("name") and not m.group("idx")):
            raise UsageError(f"layer path {path!r} is malformed (empty or invalid part {seg!r})")
        if m.group("name"):
            tokens.append(m.group("name").strip())
        tokens.extend(re.findall(r"-?\d+", m.group("idx")))
    return tokens


def _child_name(parent: nn.Module, token: str) -> str | None:
    """Name of ``parent``'s child selected by ``token`` (exact name, or position in a list-like)."""
    names = [n for n, _ in parent.named_children()]
    if token in names:
        return token
    if _INT.fullmatch(token) and isinstance(parent, (nn.Sequential, nn.ModuleList)):
        i = int(token)
        if -len(names) <= i < len(names):
            return names[i]
    return None


def _describe_choices(parent: nn.Module, token: str, limit: int = 12) -> str:
    names = [n for n, _ in parent.named_children()]
    if not names:
        return "it has no submodules"
    if len(names) > limit:
        head = names[: limit // 2]
        shown = (
            ", ".join(head) + f", ... ({len(names) - len(head) - 2} more), " + ", ".join(names[-2:])
        )
    else:
        shown = ", ".join(names)
    close = difflib.get_close_matches(token, names, n=1)
    return f"valid: {shown}" + (f" (did you mean {close[0]!r}?)" if close else "")


def _walk(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    module = model
    parts: list[str] = []
    for token in _tokens(path):
        name = _child_name(module, token)
        if name is None:
            where = f"'{'.'.join(parts)}'" if parts else "the model"
            raise UsageError(
                f"unknown layer {path!r}: {where} ({type(module).__name__}) has no child "
                f"{token!r}; {_describe_choices(module, token)}"
            )
        parts.append(name)
        module = getattr(module, name)
    return module, ".".join(parts)


def get_module(model: nn.Module, path: str) -> nn.Module:
    """Return the submodule at ``path`` (see module docstring); UsageError if it does not exist."""
    return _walk(model, path)[0]


def canonical_layer_name(model: nn.Module, path: str) -> str:
    """Canonical dotted name of ``path`` as listed by ``model.named_modules()``.

    "layer4[-1]" -> "layer4.2" on resnet50. A module reachable under several names gets the first
    name ``named_modules()`` gives it (the one torch.fx uses too).
    """
    module, walked = _walk(model, path)
    for name, m in model.named_modules():
        if m is module:
            return name
    return walked  # pragma: no cover - named_modules lists every reachable module


# --------------------------------------------------------------------------- probing forward


def _probe_input(model: nn.Module, input_size: Sequence[int]) -> Tensor:
    ref = next(model.parameters(), None)
    if ref is None:
        ref = next(model.buffers(), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    return torch.zeros(tuple(int(s) for s in input_size), device=device, dtype=dtype)


def _probe(
    model: nn.Module,
    input_size: Sequence[int],
    targets: dict[str, nn.Module],
    on_output: Callable[[str, Any], None],
) -> None:
    """One no-grad eval-mode forward on zeros; ``on_output(name, output)`` after each target call."""
    handles = []
    try:
        for name, module in targets.items():
            handles.append(
                module.register_forward_hook(lambda _m, _i, out, _n=name: on_output(_n, out))
            )
        with model_state_guard(model), torch.no_grad():
            model(_probe_input(model, input_size))
    finally:
        for h in handles:
            h.remove()


def _is_spatial(out: Any) -> bool:
    return isinstance(out, Tensor) and out.dim() == 4 and out.shape[2] * out.shape[3] > 1


# --------------------------------------------------------------------------- defaults


def _last_child(model: nn.Module, container: str) -> str | None:
    parent = getattr(model, container, None)
    if not isinstance(parent, nn.Module):
        return None
    names = [n for n, _ in parent.named_children()]
    return f"{container}.{names[-1]}" if names else None


def _last_relu(model: nn.Module, container: str) -> str | None:
    parent = getattr(model, container, None)
    if not isinstance(parent, nn.Module):
        return None
    relus = [n for n, m in parent.named_children() if isinstance(m, nn.ReLU)]
    return f"{container}.{relus[-1]}" if relus else None


def _arch_rule(model: nn.Module, arch: str) -> str | None:
    key = re.sub(r"[^a-z0-9]", "", arch.lower())
    if key.startswith(("resnet", "resnext", "wideresnet")):
        return _last_child(model, "layer4")
    if key.startswith("vgg"):
        return _last_relu(model, "features")
    if key.startswith("densenet"):
        return "features.norm5"
    if key.startswith(("mobilenet", "efficientnet", "convnext")):
        return _last_child(model, "features")
    if key.startswith("regnet"):
        return "trunk_output"
    return None


def last_spatial_module(model: nn.Module, input_size: Sequence[int] = DEFAULT_INPUT_SIZE) -> str:
    """Name of the last module to *finish* executing with a 4-D output of spatial size > 1x1.

    Runs one eval-mode, no-grad forward on zeros of ``input_size`` with hooks on every submodule
    (the root excluded). A container finishes after its children, so when a block and its last
    child produce the same tensor the block ("layer4") is chosen, not its last child.
    """
    order: dict[str, int] = {}
    counter = [0]

    def record(name: str, out: Any) -> None:
        counter[0] += 1
        if _is_spatial(out):
            order[name] = counter[0]

    targets = {name: m for name, m in model.named_modules() if name}
    _probe(model, input_size, targets, record)
    if not order:
        raise UsageError(
            f"no layer of {type(model).__name__} outputs a 4-D (N, C, h, w) feature map with h*w > 1 "
            f"for input size {tuple(input_size)}; pass the layer explicitly"
        )
    return max(order, key=order.__getitem__)


def default_layer(
    model: nn.Module,
    arch: str | None = None,
    input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
) -> str:
    """Conventional CAM target layer (canonical dotted name) for ``model``.

    Rules by architecture (``arch`` such as "resnet50", else inferred from the class name):
    ResNet/ResNeXt/WideResNet -> last block of ``layer4``; VGG -> last ReLU in ``features``
    ("features.29" for vgg16); DenseNet -> "features.norm5"; MobileNetV2/V3, EfficientNet,
    ConvNeXt -> last module in ``features``; RegNet -> "trunk_output". Otherwise (or if the rule's
    module does not exist) :func:`last_spatial_module` decides with one forward on zeros.
    """
    name = arch or type(model).__name__
    candidate = _arch_rule(model, name)
    if candidate is not None:
        try:
            return canonical_layer_name(model, candidate)
        except UsageError:
            logger.info(
                "default layer %r for %r does not exist; searching by forward", candidate, name
            )
    else:
        logger.info("no default-layer rule for %r; using the last module with a 4-D output", name)
    return last_spatial_module(model, input_size)


def check_spatial_layer(
    model: nn.Module, path: str, input_size: Sequence[int] = DEFAULT_INPUT_SIZE
) -> torch.Size:
    """Check that layer ``path`` outputs a 4-D (N, C, h, w) tensor; return that output's shape.

    Runs one eval-mode, no-grad forward on zeros of ``input_size``. For a module called several
    times per forward the last call counts (as in :func:`camscope.core.tail.split_model`).
    Raises UsageError if the layer does not exist, is never called, or its output is not 4-D.
    """
    name = canonical_layer_name(model, path)
    module = get_module(model, path)
    outputs: list[Any] = []
    _probe(model, input_size, {name: module}, lambda _n, out: outputs.append(out))
    if not outputs:
        raise UsageError(f"layer {path!r} ({name}) is never called in the model's forward pass")
    out = outputs[-1]
    if isinstance(out, Tensor) and out.dim() == 4:
        return out.shape
    got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else f"a {type(out).__name__}"
    try:
        hint = f" such as {default_layer(model, input_size=input_size)!r}"
    except UsageError:
        hint = ""
    raise UsageError(
        f"layer {path!r} ({name}, {type(module).__name__}) outputs {got}, not a 4-D (N, C, h, w) "
        f"feature map; choose a convolutional layer{hint}"
    )
