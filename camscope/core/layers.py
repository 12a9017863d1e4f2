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
from camscope.core.reshape import Reshape, plausible_grid
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


def probe_input(model: nn.Module, input_size: Sequence[int]) -> Tensor:
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
            model(probe_input(model, input_size))
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


def _arch_rule(model: nn.Module, arch: str) -> list[str]:
    """Candidate default layers for ``arch`` (torchvision, timm and Hugging Face names), in order;
    the first one that exists in ``model`` is used. See :func:`default_layer` for the reasons."""
    key = re.sub(r"[^a-z0-9]", "", arch.lower())
    if key in ("fcn", "deeplabv3", "lraspp"):  # torchvision segmenters: the backbone's last stage
        return [c for c in ["backbone.layer4", _last_child(model, "backbone")] if c]
    if key in ("fasterrcnn", "maskrcnn", "keypointrcnn", "retinanet", "fcos", "ssd"):
        # detectors: see camscope.models.torchvision_tasks for why C5 and not an FPN level
        backbone = getattr(model, "backbone", None)
        if type(backbone).__name__.startswith("SSDLite"):
            return ["backbone.features[0]"]
        body = _last_child(backbone, "body") if isinstance(backbone, nn.Module) else None
        return [c for c in ["backbone.body.layer4", body and f"backbone.{body}", "backbone.features"] if c]
    if key.startswith(("resnet", "resnext", "wideresnet")):
        return [c for c in [_last_child(model, "layer4")] if c]
    if key.startswith("vgg"):
        return [c for c in [_last_relu(model, "features")] if c]
    if key.startswith("densenet"):
        return ["features.norm5"]
    if key.startswith("mobilenet"):
        return ["features[-1]", "blocks[-1]"]
    if key.startswith("efficientnet"):
        return ["features[-1]", "bn2"]
    if key.startswith("convnext"):
        return ["features[-1]", "stages[-1]"]
    if key.startswith("regnet"):
        return ["trunk_output", "s4"]
    if key.startswith(("visiontransformer", "vit", "deit", "beit", "eva")):
        # the input LayerNorm of the last block: see VIT_DEFAULT_REASON
        return ["encoder.layers[-1].ln_1", "blocks[-1].norm1"]
    if key.startswith("swin"):
        return ["features[-1]", "layers[-1]"]
    if key.startswith(("maxvit", "maxxvit")):
        return ["blocks[-1]", "stages[-1]"]
    if key.startswith("huggingface"):
        declared = list(getattr(model, "default_layers", ()))  # the segmenter / detector adapters
        if declared:
            return declared
        hf = getattr(model, "hf", None)
        base = getattr(hf, "base_model_prefix", "") or ""
        return [
            f"hf.{base}.layers[-1].layernorm_before",
            f"hf.{base}.encoder.layer[-1].layernorm_before",
            f"hf.{base}.encoder.stages[-1]",
        ] if base else []
    return []


VIT_DEFAULT_REASON = (
    "ViTs classify from the class token (or a pooled token) after the last block; the patch "
    "tokens of the last block's output and of its second LayerNorm reach the logits only "
    "through that per-token path, so their gradients are zero and the maps blank. The last "
    "block's first LayerNorm feeds its attention, through which every patch token still "
    "reaches the class token: the latest layer whose patch tokens matter."
)


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

    Rules by architecture (``arch`` such as "resnet50", else inferred from the class name), for
    torchvision and timm models (first existing candidate wins): ResNet/ResNeXt/WideResNet ->
    last block of ``layer4``; VGG -> last ReLU in ``features``; DenseNet -> "features.norm5";
    MobileNet, EfficientNet, ConvNeXt -> last module of ``features`` (timm: ``blocks[-1]``,
    ``bn2``, ``stages[-1]``); RegNet -> "trunk_output" (timm: "s4"); ViT/DeiT/BEiT/EVA -> the
    last block's first LayerNorm (``encoder.layers[-1].ln_1``, timm ``blocks[-1].norm1``; see
    :data:`VIT_DEFAULT_REASON`); Swin -> the last stage (channels-last); MaxViT -> the last
    stage; camscope's Hugging Face adapter -> the last block's ``layernorm_before`` or the last
    encoder stage (segmenters and detectors: the ``default_layers`` their adapter declares,
    see :mod:`camscope.models.hf_source`). Otherwise (or if no candidate exists) :func:`fallback_layer` decides with one
    forward on zeros of ``input_size``, and warns or refuses when its choice is early.
    """
    name = arch or type(model).__name__
    candidates = _arch_rule(model, name)
    for candidate in candidates:
        try:
            return canonical_layer_name(model, candidate)
        except UsageError:
            continue
    if candidates:
        logger.info(
            "default layers %s for %r do not exist; searching by forward", ", ".join(candidates), name
        )
    else:
        logger.info("no default-layer rule for %r; searching by forward", name)
    return fallback_layer(model, input_size, arch=name)


_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm)


def _is_attention(m: nn.Module) -> bool:
    return isinstance(m, nn.MultiheadAttention) or "attention" in type(m).__name__.lower()


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, _NORM_TYPES) or "norm" in type(m).__name__.lower()


def _map_hw(
    model: nn.Module, name: str, out: Any, hw: tuple[int, int], batch: int
) -> tuple[tuple[int, int], bool] | None:
    """(h, w) of the map the default reshape makes of ``out`` and whether that grid fits the
    input (one stride both ways); None when it makes none."""
    if not isinstance(out, Tensor) or out.dim() not in (3, 4):
        return None
    try:
        rs = Reshape().resolve(out, hw, model, name, batch=batch, quiet=True)
    except UsageError:
        return None
    if rs.kind == "tokens":
        assert rs.grid is not None
        grid = rs.grid
    elif rs.kind == "nhwc":
        grid = (int(out.shape[1]), int(out.shape[2]))
    else:
        grid = (int(out.shape[2]), int(out.shape[3]))
    return grid, plausible_grid(grid[0], grid[1], hw[0], hw[1])


def _refuse_early(label: str, name: str, first: str, example: str = "") -> None:
    """The generic fallback's choice runs before the model's first ``first``: refused."""
    raise UsageError(
        f"no default layer for {label}: the last layer with a spatial output, {name!r}, runs "
        f"before the model's first {first}, so its maps show the input, not what the model "
        f"decided; pass --layer NAME{example}"
    )


def fallback_layer(
    model: nn.Module, input_size: Sequence[int] = DEFAULT_INPUT_SIZE, *, arch: str | None = None
) -> str:
    """Default layer of a model without a rule, found by one eval-mode, no-grad forward on zeros.

    With attention modules (a transformer): the last norm layer that finishes before the last
    attention module starts and whose output is a map (tokens or channels-last included; a grid
    that fits the input) — the input of the last attention, as ``ln_1`` / ``norm1`` for ViTs.
    Otherwise, or without such a norm: the last module with a 4-D spatial output (as
    :func:`last_spatial_module`). The choice is refused (UsageError naming ``--layer``) when it
    runs before the model's first attention module or before its first downsampling module
    (the first output smaller than the input), and logged as a warning when it lies in the first
    half of the network (by the calls of modules with parameters).
    """
    size = tuple(int(s) for s in input_size)
    hw, batch = (size[-2], size[-1]), size[0]
    label = arch or type(model).__name__
    calls: list[dict[str, Any]] = []
    starts: dict[str, list[int]] = {}
    counter = [0]
    handles = []

    def pre(name: str) -> None:
        counter[0] += 1
        starts.setdefault(name, []).append(counter[0])

    def post(name: str, module: nn.Module, out: Any) -> None:
        counter[0] += 1
        calls.append({
            "name": name,
            "start": starts[name].pop(),
            "end": counter[0],
            "map": _map_hw(model, name, out, hw, batch),
            "spatial": _is_spatial(out),
            "attention": _is_attention(module),
            "norm": _is_norm(module),
            "params": next(module.parameters(recurse=False), None) is not None,
        })

    try:
        for name, module in model.named_modules():
            if not name:
                continue
            handles.append(module.register_forward_pre_hook(lambda _m, _i, _n=name: pre(_n)))
            handles.append(
                module.register_forward_hook(lambda m, _i, out, _n=name: post(_n, m, out))
            )
        with model_state_guard(model), torch.no_grad():
            model(probe_input(model, size))
    finally:
        for h in handles:
            h.remove()

    attn = [c for c in calls if c["attention"]]
    choice = None
    if attn:
        last_start = max(c["start"] for c in attn)
        norms = [
            c for c in calls
            if c["norm"] and c["end"] < last_start and c["map"] is not None and c["map"][1]
            and c["map"][0][0] * c["map"][0][1] > 1
        ]
        if norms:
            choice = max(norms, key=lambda c: c["end"])
    if choice is None:
        spatial = [c for c in calls if c["spatial"]]
        if not spatial:
            raise UsageError(
                f"no layer of {label} outputs a feature map (4-D, tokens or channels-last) with "
                f"more than 1x1 cells for input size {size}; pass --layer NAME"
            )
        choice = max(spatial, key=lambda c: c["end"])
    name = choice["name"]
    if attn:
        first = min(attn, key=lambda c: c["start"])
        if choice["end"] < first["start"]:
            _refuse_early(label, name, f"transformer block ({first['name']!r})", " (e.g. the norm before a late block's attention)")
    downs = [
        c for c in calls
        if c["map"] is not None and c["map"][1] and 1 < c["map"][0][0] * c["map"][0][1]
        and (c["map"][0][0] < hw[0] or c["map"][0][1] < hw[1])
    ]
    if downs:
        first_down = min(downs, key=lambda c: c["end"])
        if choice["end"] < first_down["end"]:
            _refuse_early(label, name, f"downsampling ({first_down['name']!r})")
    with_params = [c["end"] for c in calls if c["params"]]
    if with_params:
        done = sum(1 for e in with_params if e <= choice["end"])
        if done < 0.5 * len(with_params):
            logger.warning(
                "default layer %r of %s is in the first half of the network (after %d of %d calls "
                "of layers with parameters): its maps say little about the decision; pass --layer "
                "to explain a later layer",
                name, label, done, len(with_params),
            )
    return name


def check_spatial_layer(
    model: nn.Module,
    path: str,
    input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
    reshape: Any = "auto",
) -> torch.Size:
    """Check that layer ``path``'s output becomes a (N, C, h, w) map by ``reshape`` (a
    :class:`~camscope.core.reshape.Reshape` or spec string: a 4-D map as it is, tokens or a
    channels-last map turned into one); return the map's shape.

    Runs one eval-mode, no-grad forward on zeros of ``input_size``. For a module called several
    times per forward the last call counts (as in :func:`camscope.core.split.split_model`).
    Raises UsageError if the layer does not exist, is never called, or its output cannot be
    turned into a map.
    """
    rs = Reshape.parse(reshape)
    name = canonical_layer_name(model, path)
    module = get_module(model, path)
    outputs: list[Any] = []
    _probe(model, input_size, {name: module}, lambda _n, out: outputs.append(out))
    if not outputs:
        raise UsageError(f"layer {path!r} ({name}) is never called in the model's forward pass")
    out = outputs[-1]
    size = tuple(int(s) for s in input_size)
    if isinstance(out, Tensor) and out.dim() in (3, 4):
        resolved = rs.resolve(out, (size[-2], size[-1]), model, name, batch=size[0])
        return resolved.to_maps(out).shape
    got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else f"a {type(out).__name__}"
    try:
        hint = f" such as {default_layer(model, input_size=input_size)!r}"
    except UsageError:
        hint = ""
    raise UsageError(
        f"layer {path!r} ({name}, {type(module).__name__}) outputs {got}, not a 4-D (N, C, h, w) "
        f"feature map, tokens (N, tokens, C) or a channels-last map; choose a convolutional stage "
        f"or a transformer block's norm{hint}"
    )
