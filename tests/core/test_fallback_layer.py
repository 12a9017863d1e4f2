"""The generic default layer: transformers get the norm before the last attention; an early layer
gets a warning naming it and --layer; a layer before the first transformer block or the first
downsampling is refused unless named explicitly."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import Tensor, nn

from camscope.core.layers import default_layer, fallback_layer
from camscope.engine import CamEngine
from camscope.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")


class EarlyConvMLP(nn.Module):
    """A conv stage, then four linear layers on the flattened map: the last spatial layer
    (``features``) lies in the first half of the layers with parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
        self.mlp = nn.Sequential(
            nn.Flatten(), nn.Linear(4 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
            nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.features(x))


class NormFreeTransformer(nn.Module):
    """Patch conv -> tokens -> two attention blocks without norms -> mean -> head: the only
    spatial output runs before the first transformer block."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.attn1 = nn.MultiheadAttention(8, 2, batch_first=True)
        self.attn2 = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = t + self.attn1(t, t, t, need_weights=False)[0]
        t = t + self.attn2(t, t, t, need_weights=False)[0]
        return self.head(t.mean(1))


class PatchEmbed(nn.Module):
    """4x4 patches unfolded (no convolution module) and projected: (B, N, C) tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4 * 16, 8)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(nn.functional.pixel_unshuffle(x, 4).flatten(2).transpose(1, 2))


class FullResThenTokens(nn.Module):
    """A full-resolution conv, then a patch embedding straight to tokens (the first
    downsampling), then a per-token MLP: the last 4-D output runs before the downsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.embed = PatchEmbed()
        self.mlp = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.mlp(self.embed(torch.relu(self.conv(x)))).mean(1))


class TinyViT(nn.Module):
    """No default-layer rule (class name unknown): the fallback finds the norm before the last
    attention (``blocks.1.norm``), tokens with a class token."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 8))
        self.blocks = nn.ModuleList(_Block() for _ in range(2))
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1)
        for b in self.blocks:
            t = b(t)
        return self.head(t[:, 0])


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.mlp = nn.Linear(8, 8)

    def forward(self, t: Tensor) -> Tensor:
        y = self.norm(t)
        t = t + self.attn(y, y, y, need_weights=False)[0]
        return t + self.mlp(t)


SIZE = (1, 3, 16, 16)


def test_early_layer_warns_with_name_and_flag(caplog: pytest.LogCaptureFixture) -> None:
    model = EarlyConvMLP().eval()
    with caplog.at_level(logging.WARNING, logger="camscope"):
        assert default_layer(model, input_size=SIZE) == "features"
    (record,) = [r for r in caplog.records if "first half" in r.message]
    assert "'features'" in record.message and "--layer" in record.message
    assert "1 of 5" in record.message


def test_layer_before_first_transformer_block_is_refused() -> None:
    model = NormFreeTransformer().eval()
    with pytest.raises(UsageError) as info:
        default_layer(model, input_size=SIZE)
    msg = str(info.value)
    assert "\n" not in msg
    for word in ("'patch'", "first transformer block", "'attn1'", "--layer"):
        assert word in msg, msg
    # named explicitly, it is explained
    engine = CamEngine(model, "patch", methods=["gradcam"])
    res = engine(torch.randn(1, 3, 16, 16))
    assert res.maps["gradcam"].shape == (1, 1, 16, 16)


def test_layer_before_first_downsampling_is_refused() -> None:
    with pytest.raises(UsageError, match=r"'conv'.*first downsampling \('embed.proj'\).*--layer"):
        fallback_layer(FullResThenTokens().eval(), SIZE)


def test_fallback_picks_the_norm_before_the_last_attention(caplog: pytest.LogCaptureFixture) -> None:
    model = TinyViT().eval()
    with caplog.at_level(logging.WARNING):
        assert default_layer(model, input_size=SIZE) == "blocks.1.norm"
    assert not [r for r in caplog.records if "first half" in r.message]
    engine = CamEngine(model, methods=["gradcam", "ablationcam"], input_size=SIZE)
    assert engine.resolve_reshape((16, 16)).describe() == "tokens:4x4:skip=1"
    res = engine(torch.randn(2, 3, 16, 16))
    assert all(torch.isfinite(m).all() for m in res.maps.values())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
