"""A small vision transformer trained in seconds on camscope's generated scenes.

The transformer counterpart of :class:`camscope.studies.synthetic.SmallCNN`, on the same scenes and with
the same held-out ground truth, so that the localisation benchmark (``camscope bench synthetic
--model vit``) measures the CAM methods on token maps: the reshape of tokens into a grid, the
prefix (class) token, the default layer, upsampling of an 8x8 token grid.

:func:`small_vit` is torchvision's own ``VisionTransformer`` class (so the default-layer rule and
the reshape of torchvision's ViTs are what is measured): 64x64 inputs, a convolutional stem of
three stride-2 3x3 convolutions as patch embedding (Xiao et al. 2021, "Early convolutions help
transformers see better"; torchvision's ``conv_stem_configs``) giving an 8x8 grid of 48-d
tokens plus a class token, two encoder blocks with 4 heads, classification from the class token.
Its CAM target layer is :data:`VIT_TARGET_LAYER`, the last block's first LayerNorm (torchvision's
default for ViTs, :func:`camscope.core.layers.default_layer`).

Training (:func:`train_small_vit`): cross-entropy on the class token's logits plus ``guidance``
times three terms that use the object masks, the transformer analogue of the SmallCNN's
guidance: (1) *token labelling* (Jiang et al. 2021, "All tokens matter"): every patch token of the
encoder output is classified by the shared head, tokens on the object towards the scene's class,
background tokens towards the uniform distribution; (2) the class token's attention in the last
block (mean over heads) outside the object; (3) the same token labelling for the class evidence
each token would send through the last block's attention value path
(``head(out_proj(W_v LN(x_j)))``). Trained on labels alone (``guidance=0``) the model reaches
only ~80 % held-out accuracy in the same 8 epochs (token labelling is what makes it learn in
seconds), so the benchmark, like the CNN's, checks that maps are placed correctly for a model
whose evidence lies on the object; see ``docs/models.md`` for what the methods reach.
"""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camscope.core.threads import torch_threads
from camscope.studies import synthetic as S

__all__ = [
    "VIT_TARGET_LAYER",
    "VIT_VERSION",
    "small_vit",
    "train_small_vit",
    "load_or_train_vit",
]

logger = logging.getLogger(__name__)

VIT_TARGET_LAYER = "encoder.layers.encoder_layer_1.ln_1"
"""CAM target layer of :func:`small_vit`: the last block's first LayerNorm, tokens (N, 65, 48)
read as an 8x8 map after the class token."""

VIT_VERSION = "1"
"""Bumped whenever the ViT, its training recipe or the scenes change (cache key)."""

_KEY_PARAMS = ("seed", "n_train", "epochs", "size", "batch_size", "lr", "weight_decay", "guidance")


def small_vit(num_classes: int = len(S.SHAPES)) -> nn.Module:
    """torchvision ``VisionTransformer`` for 64x64 scenes: conv stem (16, 32, 48 channels, stride
    2 each) -> 8x8 tokens of width 48 + class token -> 2 blocks (4 heads, MLP 96) -> head."""
    from torchvision.models.vision_transformer import ConvStemConfig, VisionTransformer

    stem = [ConvStemConfig(16, 3, 2), ConvStemConfig(32, 3, 2), ConvStemConfig(48, 3, 2)]
    return VisionTransformer(
        image_size=64, patch_size=8, num_layers=2, num_heads=4, hidden_dim=48, mlp_dim=96,
        num_classes=num_classes, conv_stem_configs=stem,
    )


def _token_labels(logits: Tensor, labels: Tensor, inside: Tensor) -> Tensor:
    """Per-token losses of (N, T, C) token logits: cross-entropy towards the image's label on the
    object (weights ``inside``, (N, T)), towards the uniform distribution on the background;
    each averaged over its tokens, then over images."""
    n, t, _ = logits.shape
    ce = F.cross_entropy(logits.flatten(0, 1), labels.repeat_interleave(t), reduction="none").view(n, t)
    uniform = -torch.log_softmax(logits, dim=-1).mean(dim=-1)
    outside = 1.0 - inside
    on = (ce * inside).sum(1) / inside.sum(1).clamp_min(1e-6)
    off = (uniform * outside).sum(1) / outside.sum(1).clamp_min(1e-6)
    return (on + off).mean()


def _guidance(model: nn.Module, ln1: Tensor, encoded: Tensor, labels: Tensor, inside: Tensor) -> Tensor:
    """The three mask terms (module docstring) from the last block's LayerNorm output ``ln1``
    and the encoder output ``encoded``, both (N, 1 + T, C)."""
    block = model.encoder.layers[-1]
    att = block.self_attention
    c = ln1.shape[-1]
    heads, d = att.num_heads, c // att.num_heads
    wq, wk, wv = att.in_proj_weight.split(c)
    bq, bk, bv = att.in_proj_bias.split(c)
    q = F.linear(ln1[:, :1], wq, bq).reshape(ln1.shape[0], 1, heads, d).transpose(1, 2)
    k = F.linear(ln1, wk, bk).reshape(ln1.shape[0], -1, heads, d).transpose(1, 2)
    attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)[:, :, 0, 1:].mean(1)
    loss = _token_labels(model.heads(encoded[:, 1:]), labels, inside)
    loss = loss + (attention * (1.0 - inside)).sum(1).mean()
    value = model.heads(att.out_proj(F.linear(ln1[:, 1:], wv, bv)))
    return loss + _token_labels(value, labels, inside)


def train_small_vit(
    *,
    seed: int = 0,
    n_train: int = 4000,
    epochs: int = 8,
    size: int = 64,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    guidance: float = 1.0,
    device: str | torch.device = "cpu",
    num_threads: int | None = 1,
    progress: bool = False,
) -> nn.Module:
    """Train :func:`small_vit` on ``make_scenes(n_train, size=size, seed=seed)``.

    AdamW with a one-cycle schedule; loss: cross-entropy plus ``guidance`` times the mask terms
    of the module docstring. Deterministic for given arguments on a given machine; the global RNG
    state is forked and the intra-op thread count restored. Returns the model in eval mode.
    """
    if n_train < 1 or epochs < 1 or batch_size < 1:
        raise ValueError(f"n_train, epochs and batch_size must be >= 1, got {n_train}, {epochs}, {batch_size}")
    if size != 64:
        raise ValueError(f"the small ViT takes 64x64 scenes, not {size}x{size}")
    device = torch.device(device)
    data = S.make_scenes(n_train, size=size, seed=seed)
    x_all = S.normalize(data.images).to(device)
    y_all = data.labels.to(device)
    inside_all = S.node_masks(data.masks, 8, 8).flatten(1).to(device)
    steps = epochs * math.ceil(n_train / batch_size)
    with torch_threads(num_threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = small_vit().to(device)
        nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision starts it at zero
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
        seen: dict[str, Tensor] = {}
        hooks = [
            model.encoder.layers[-1].ln_1.register_forward_hook(lambda _m, _i, o: seen.__setitem__("ln1", o)),
            model.encoder.register_forward_hook(lambda _m, _i, o: seen.__setitem__("enc", o)),
        ]
        def step(idx: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            logits = model(x_all[idx])
            loss = F.cross_entropy(logits, y)
            if guidance:
                loss = loss + guidance * _guidance(model, seen["ln1"], seen["enc"], y, inside_all[idx])
            return logits, loss

        try:
            model.train()
            S.train_epochs(step, y_all, opt, sched, epochs=epochs, batch_size=batch_size, seed=seed,
                           desc="train small ViT", progress=progress)  # fmt: skip
        finally:
            for h in hooks:
                h.remove()
    return model.eval()


def load_or_train_vit(cache_dir: Path | str | None = None, **kw: object) -> nn.Module:
    """A trained :func:`small_vit`, from the cache (:func:`camscope.studies.synthetic.default_cache_dir`
    unless ``cache_dir``) or trained by :func:`train_small_vit` (``kw``) and cached."""
    return S.cached_model(
        "smallvit", VIT_VERSION, small_vit, train_small_vit, _KEY_PARAMS, cache_dir, kw, _TRAIN_PARAMS
    )


_TRAIN_PARAMS = inspect.signature(train_small_vit).parameters
