"""Token and channels-last layer outputs as (B, C, h, w) feature maps, and back.

CAM methods weigh the channels of a feature map ``A`` (B, C, h, w). Vision transformers output
*tokens* (B, N, C) instead: ``t`` prefix tokens (class, distillation, register tokens) followed
by the ``h*w`` patch tokens in row-major order; Swin-style stages output *channels-last* maps
(B, h, w, C). A :class:`Reshape` turns such an output into a map (:meth:`Reshape.to_maps`),
keeping the prefix tokens aside (:meth:`Reshape.prefix`), and turns a possibly modified map back
into the layer's own layout (:meth:`Reshape.to_layer`), so that the rest of the network can run
on it. It is applied in one place, :class:`camscope.core.split.LayerSplit`: every method sees
4-D maps only. Zeroing channel ``k`` of the map (Ablation-CAM) zeroes feature ``k`` of every
patch token and leaves the prefix tokens untouched; Score-CAM's masks are the upsampled token
grid.

Spec strings (``--reshape``, ``reshape=``)::

    auto                 decide from the output's shape and the model (default)
    none                 the output is already (B, C, h, w)
    nhwc                 channels-last (B, h, w, C)
    tokens               (B, N, C) tokens; grid and prefix from the model / the input size
    tokens:HxW[:skip=T]  tokens on an H x W grid after T prefix tokens (T default: the model's
                         prefix count when it declares one, else N - H*W)

``auto`` reads the grid from the model when it says what it is (patch size and number of prefix
tokens: torchvision's ``VisionTransformer``, timm's ``patch_embed.patch_size`` and
``num_prefix_tokens``, camscope's Hugging Face adapter) and the input size actually used;
otherwise it looks for the fewest prefix tokens ``t`` (up to :data:`MAX_GUESSED_PREFIX`) that
leave a grid of the input's aspect ratio (``N - t`` a perfect square for a square input) and
warns. A 4-D output is channels-last
when the model declares it (torchvision's and timm's Swin) or when only the channels-last
reading gives a grid that fits the input (same stride in both directions).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from camscope.errors import UsageError

__all__ = ["Reshape", "RESHAPE_HELP", "token_layout", "model_input_size"]

logger = logging.getLogger(__name__)

RESHAPE_HELP = "auto | none | nhwc | tokens | tokens:HxW[:skip=T]"
KINDS = ("auto", "none", "nhwc", "tokens")
#: The most prefix tokens ``auto`` considers when the model does not declare them (class +
#: distillation + register tokens stay well below this).
MAX_GUESSED_PREFIX = 8

_TOKENS = re.compile(r"tokens(?::(?P<h>\d+)x(?P<w>\d+))?(?::skip=(?P<skip>\d+))?")


@dataclass(frozen=True)
class Reshape:
    """How a layer's output becomes a (B, C, h, w) map.

    ``kind``: ``"auto"`` (not decided yet), ``"none"``, ``"nhwc"`` or ``"tokens"``; ``grid``
    (h, w) and ``skip`` (number of prefix tokens) for tokens. A resolved reshape (see
    :meth:`resolve`) has a concrete kind and, for tokens, both ``grid`` and ``skip``. ``source``
    says how it was decided (for logs; not part of equality).
    """

    kind: str = "auto"
    grid: tuple[int, int] | None = None
    skip: int | None = None
    source: str = field(default="", compare=False)

    # ------------------------------------------------------------------ parsing / describing

    @classmethod
    def parse(cls, spec: str | Reshape | None) -> Reshape:
        """A :class:`Reshape` from a spec string (see the module docstring), or as given."""
        if isinstance(spec, Reshape):
            return spec
        if spec is None:
            return cls()
        if not isinstance(spec, str):
            raise UsageError(f"--reshape {spec!r}: expected a string ({RESHAPE_HELP})")
        s = spec.strip().lower()
        if s in ("auto", "none", "nhwc"):
            return cls(s, source="user" if s != "auto" else "")
        m = _TOKENS.fullmatch(s)
        if m is None:
            raise UsageError(f"--reshape {spec!r} is not understood; use {RESHAPE_HELP}")
        grid = None
        if m.group("h") is not None:
            grid = (int(m.group("h")), int(m.group("w")))
            if grid[0] < 1 or grid[1] < 1:
                raise UsageError(f"--reshape {spec!r}: the grid must be at least 1x1")
        skip = int(m.group("skip")) if m.group("skip") is not None else None
        return cls("tokens", grid, skip, source="user")

    @property
    def resolved(self) -> bool:
        """Whether this says exactly what to do (no decision left to :meth:`resolve`)."""
        if self.kind == "tokens":
            return self.grid is not None and self.skip is not None
        return self.kind in ("none", "nhwc")

    def describe(self) -> str:
        """Spec string of this reshape (the manifest's ``settings.reshape``); parses back."""
        if self.kind != "tokens":
            return self.kind
        out = "tokens"
        if self.grid is not None:
            out += f":{self.grid[0]}x{self.grid[1]}"
        if self.skip is not None:
            out += f":skip={self.skip}"
        return out

    def __str__(self) -> str:
        return self.describe() + (f" ({self.source})" if self.source else "")

    # ------------------------------------------------------------------ conversions

    def to_maps(self, out: Tensor) -> Tensor:
        """Layer output -> (B, C, h, w) map (a view where possible; prefix tokens dropped)."""
        self._need_resolved()
        if self.kind == "none":
            return out
        if self.kind == "nhwc":
            return out.permute(0, 3, 1, 2)
        assert self.grid is not None and self.skip is not None
        b, _, c = out.shape
        h, w = self.grid
        return out[:, self.skip :].reshape(b, h, w, c).permute(0, 3, 1, 2)

    def prefix(self, out: Tensor) -> Tensor | None:
        """The tokens :meth:`to_maps` drops, (B, skip, C); None for maps."""
        self._need_resolved()
        if self.kind != "tokens":
            return None
        return out[:, : self.skip]

    def to_layer(self, maps: Tensor, kept: Tensor | None = None) -> Tensor:
        """Inverse of :meth:`to_maps`: (B, C, h, w) maps (and the prefix tokens ``kept``,
        (B, skip, C)) -> the layer's own layout. ``to_layer(to_maps(out), prefix(out))`` equals
        ``out`` exactly."""
        self._need_resolved()
        if self.kind == "none":
            return maps
        if self.kind == "nhwc":
            return maps.permute(0, 2, 3, 1)
        b, c, h, w = maps.shape
        tokens = maps.permute(0, 2, 3, 1).reshape(b, h * w, c)
        if not self.skip:
            return tokens
        if kept is None or kept.shape[1] != self.skip:
            raise ValueError(f"{self.describe()}: need the {self.skip} prefix token(s) to rebuild the tokens")
        return _cat_prefix(kept.to(tokens.dtype), tokens)

    def layer_shape(self, map_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the layer's output (without batch) for a map of shape (C, h, w)."""
        self._need_resolved()
        c, h, w = map_shape
        if self.kind == "none":
            return (c, h, w)
        if self.kind == "nhwc":
            return (h, w, c)
        return (int(self.skip or 0) + h * w, c)

    def _need_resolved(self) -> None:
        if not self.resolved:
            raise ValueError(f"reshape {self.describe()!r} is not resolved; call resolve() first")

    # ------------------------------------------------------------------ deciding

    def resolve(
        self,
        out: Any,
        input_size: tuple[int, int],
        model: nn.Module | None = None,
        layer: str = "the layer",
        *,
        batch: int | None = None,
        quiet: bool = False,
    ) -> Reshape:
        """The concrete reshape of ``out``, ``layer``'s output for an input of ``input_size``
        (H, W) and ``batch`` images; UsageError when it cannot be turned into a map.

        ``quiet``: no warning for guessed grids (probing many layers).
        """
        if not isinstance(out, Tensor):
            raise UsageError(
                f"layer {layer!r} outputs a {type(out).__name__}, not a tensor; choose one of its "
                "submodules (a block's norm or a stage)"
            )
        shape = tuple(out.shape)
        if batch is not None and (out.dim() == 0 or shape[0] != batch):
            raise UsageError(
                f"layer {layer!r} outputs shape {shape}, whose first dimension is not the batch of "
                f"{batch} (e.g. windows of a windowed attention); choose the block or stage around it"
            )
        kind = self.kind
        if kind in ("none", "nhwc"):
            if out.dim() != 4:
                raise UsageError(
                    f"layer {layer!r} outputs shape {shape}: --reshape {kind} needs a 4-D output; "
                    f"use --reshape auto or tokens ({RESHAPE_HELP})"
                )
            return self
        if kind == "tokens" and out.dim() != 3:
            raise UsageError(
                f"layer {layer!r} outputs shape {shape}: --reshape tokens needs (N, tokens, C); "
                f"use --reshape auto ({RESHAPE_HELP})"
            )
        if out.dim() == 4 and kind == "auto":
            return _resolve_4d(shape, input_size, model, layer)
        if out.dim() == 3:
            return self._resolve_tokens(shape, input_size, model, layer, quiet)
        raise UsageError(
            f"layer {layer!r} outputs shape {shape}: not a feature map (N, C, h, w), tokens "
            "(N, tokens, C) or channels-last (N, h, w, C); choose a convolutional stage or a "
            "transformer block's norm"
        )

    def _resolve_tokens(
        self, shape: tuple[int, ...], input_size: tuple[int, int], model: nn.Module | None, layer: str, quiet: bool
    ) -> Reshape:
        n = shape[1]
        big_h, big_w = int(input_size[0]), int(input_size[1])
        patch, declared = token_layout(model) if model is not None else (None, None)
        if self.grid is not None:  # the user's grid
            h, w = self.grid
            t = self.skip if self.skip is not None else (declared if declared is not None else n - h * w)
            if t < 0 or t + h * w != n:
                said = "" if self.skip is not None or declared is None else " (the model's prefix count)"
                raise UsageError(
                    f"--reshape {self.describe()}: layer {layer!r} outputs {n} tokens, not "
                    f"{max(t, 0)} prefix{said} + {h}x{w} = {max(t, 0) + h * w}"
                )
            return Reshape("tokens", (h, w), t, source="user")
        prefix = self.skip if self.skip is not None else declared
        if patch is not None:
            h, w = big_h // patch[0], big_w // patch[1]
            t = n - h * w
            if h * w > 0 and t >= 0 and (prefix is None or t == prefix):
                how = f"patch {patch[0]}x{patch[1]} of the {big_h}x{big_w} input"
                if prefix is None:
                    how += f", {t} prefix token(s) left over"
                return Reshape("tokens", (h, w), t, source=how)
        candidates = [prefix] if prefix is not None else list(range(min(n - 1, MAX_GUESSED_PREFIX) + 1))
        for t in candidates:
            grid = _grid_for(n - t, big_h, big_w)
            if grid is None:
                continue
            said = "the model's prefix count" if prefix is not None else "guessed"
            if quiet:
                pass
            elif prefix is not None:  # only the grid is read from the token count: no guess
                logger.info("layer %r: %d tokens read as %d prefix + a %dx%d grid", layer, n, t, grid[0], grid[1])
            else:
                logger.warning(
                    "layer %r: %d tokens read as %d prefix + a %dx%d grid (%s, from the token count "
                    "and the input's %dx%d shape; the model declares no patch size for this layer); "
                    "pass --reshape tokens:HxW:skip=T if that is wrong",
                    layer, n, t, grid[0], grid[1], said, big_h, big_w,
                )
            return Reshape("tokens", grid, t, source=f"{said}: {n} tokens, {big_h}x{big_w} input")
        raise UsageError(
            f"layer {layer!r} outputs {n} tokens (shape {shape}), which no prefix count up to "
            f"{candidates[-1]} leaves as a grid of the input's {big_h}x{big_w} shape; pass "
            f"--reshape tokens:HxW:skip=T"
        )


def _cat_prefix(kept: Tensor, tokens: Tensor) -> Tensor:
    import torch

    return torch.cat([kept, tokens], dim=1)


def _grid_for(n: int, big_h: int, big_w: int) -> tuple[int, int] | None:
    """The (h, w) with h*w == n and exactly the input's aspect ratio (a perfect square for a
    square input), at least 2 cells; else None."""
    if n < 2:
        return None
    h = round(math.sqrt(n * big_h / big_w))
    for hh in (h - 1, h, h + 1):
        if hh >= 1 and n % hh == 0 and hh * big_w == (n // hh) * big_h:
            return hh, n // hh
    return None


def plausible_grid(h: int, w: int, big_h: int, big_w: int) -> bool:
    """Whether an h x w grid can be the input downsampled by one integer stride in both
    directions (sizes rounded down or up)."""
    if not (1 <= h <= big_h and 1 <= w <= big_w):
        return False
    for s in {big_h // h, -(-big_h // h), max(1, big_h // h - 1), big_h // h + 1}:
        if s >= 1 and h in (big_h // s, -(-big_h // s)) and w in (big_w // s, -(-big_w // s)):
            return True
    return False


def _resolve_4d(
    shape: tuple[int, ...], input_size: tuple[int, int], model: nn.Module | None, layer: str
) -> Reshape:
    big_h, big_w = int(input_size[0]), int(input_size[1])
    nchw = plausible_grid(shape[2], shape[3], big_h, big_w)
    nhwc = plausible_grid(shape[1], shape[2], big_h, big_w)
    if nhwc and model is not None and declares_channels_last(model, layer):
        return Reshape("nhwc", source="the model is channels-last")
    if nhwc and not nchw:
        logger.info("layer %r: output %s read as channels-last (N, h, w, C)", layer, shape)
        return Reshape("nhwc", source=f"only the channels-last reading fits the {big_h}x{big_w} input")
    return Reshape("none", source="(N, C, h, w)")


def declares_channels_last(model: nn.Module, layer: str) -> bool:
    """Whether ``model`` says that ``layer``'s 4-D output is channels-last: torchvision's
    ``SwinTransformer`` (its ``features`` stages and ``norm``), or a timm model whose
    ``output_fmt`` is ``"NHWC"`` (timm's Swin)."""
    cls = type(model)
    if cls.__name__ == "SwinTransformer" and cls.__module__.startswith("torchvision."):
        return layer == "norm" or layer == "features" or layer.startswith("features.")
    for m in model.modules():
        fmt = getattr(m, "output_fmt", None)
        if fmt is not None:
            return str(getattr(fmt, "value", fmt)).upper() == "NHWC"
    return False


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (value, value) if value > 0 else None
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return int(value[0]), int(value[1])
    return None


def token_layout(model: nn.Module) -> tuple[tuple[int, int] | None, int | None]:
    """(patch size, number of prefix tokens) that ``model`` (or the first of its submodules that
    says so) declares; None for what it does not say.

    Read from ``patch_size`` or ``patch_embed.patch_size`` and ``num_prefix_tokens`` (timm's
    convention, also set by camscope's Hugging Face adapter; set them on your own ViT); a
    ``class_token`` parameter (torchvision's ``VisionTransformer``) counts one prefix token.
    """
    for m in model.modules():
        patch = _pair(getattr(m, "patch_size", None))
        if patch is None:
            patch = _pair(getattr(getattr(m, "patch_embed", None), "patch_size", None))
        if patch is None:
            continue
        prefix = getattr(m, "num_prefix_tokens", None)
        if not isinstance(prefix, int) or isinstance(prefix, bool):
            prefix = 1 if isinstance(getattr(m, "class_token", None), Tensor) else None
        return patch, prefix
    return None, None


def model_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The input size (H, W) ``model`` declares: ``image_size`` / ``img_size`` (torchvision's
    ViT, camscope's Hugging Face adapter), ``patch_embed.img_size`` or the ``pretrained_cfg``
    input size (timm); None when it declares none."""
    for m in model.modules():
        for value in (
            getattr(m, "image_size", None),
            getattr(m, "img_size", None),
            getattr(getattr(m, "patch_embed", None), "img_size", None),
        ):
            size = _pair(value)
            if size is not None:
                return size
        cfg = getattr(m, "pretrained_cfg", None)
        if isinstance(cfg, dict) and isinstance(cfg.get("input_size"), (tuple, list)) and len(cfg["input_size"]) == 3:
            size = _pair(tuple(cfg["input_size"][1:]))
            if size is not None:
                return size
    return None
