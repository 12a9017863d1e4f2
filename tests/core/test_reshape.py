"""core/reshape: token and channels-last outputs as (B, C, h, w) maps, exactly and reversibly.

- spec strings parse and describe back;
- ``to_layer(to_maps(out), prefix(out)) == out`` bit for bit, and the map's positions are the
  patch tokens in row-major order (checked against an explicit token index);
- ``auto`` reads the grid from the model (patch size, prefix tokens) or, with a warning, from the
  token count and the input's aspect ratio; channels-last outputs are detected; what cannot be a
  map is refused in one line;
- the split keeps the prefix tokens in the carry and its tail rebuilds the layer's output from
  the map: ``tail(head(x)) == model(x)`` on hand-built token models, traced and hook paths, and
  the tail gathers the prefix tokens by ``index`` like the other carried values.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import Tensor, nn

from camscope.core.reshape import Reshape, model_input_size, token_layout
from camscope.core.split import split_model
from camscope.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "spec,kind,grid,skip,described",
    [
        ("auto", "auto", None, None, "auto"),
        ("none", "none", None, None, "none"),
        ("NHWC", "nhwc", None, None, "nhwc"),
        ("tokens", "tokens", None, None, "tokens"),
        ("tokens:14x14", "tokens", (14, 14), None, "tokens:14x14"),
        ("tokens:14x12:skip=2", "tokens", (14, 12), 2, "tokens:14x12:skip=2"),
        ("tokens:skip=5", "tokens", None, 5, "tokens:skip=5"),
    ],
)
def test_parse_and_describe(spec: str, kind: str, grid, skip, described: str) -> None:
    rs = Reshape.parse(spec)
    assert (rs.kind, rs.grid, rs.skip) == (kind, grid, skip)
    assert rs.describe() == described
    assert Reshape.parse(rs.describe()) == rs
    assert Reshape.parse(rs) is rs


@pytest.mark.parametrize("bad", ["tokens:14", "token", "tokens:0x3", "nchw", "tokens:3x3:skip=-1", ""])
def test_bad_specs_are_one_line_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError) as info:
        Reshape.parse(bad)
    assert "\n" not in str(info.value) and "--reshape" in str(info.value)


@pytest.mark.parametrize("skip", [0, 1, 2, 5])
def test_tokens_round_trip_exact_and_row_major(skip: int) -> None:
    b, h, w, c = 3, 4, 5, 7
    out = torch.randn(b, skip + h * w, c, generator=torch.Generator().manual_seed(skip))
    rs = Reshape("tokens", (h, w), skip)
    maps = rs.to_maps(out)
    assert maps.shape == (b, c, h, w)
    for i in range(h):
        for j in range(w):
            assert torch.equal(maps[:, :, i, j], out[:, skip + i * w + j, :])  # row-major tokens
    kept = rs.prefix(out)
    assert kept is not None and torch.equal(kept, out[:, :skip])
    back = rs.to_layer(maps, kept)
    assert back.shape == out.shape and torch.equal(back, out)
    assert rs.layer_shape(tuple(maps.shape[1:])) == tuple(out.shape[1:])
    # a modified map changes exactly its tokens; the prefix tokens stay as they were
    edited = maps.clone()
    edited[:, 3] = 0
    rebuilt = rs.to_layer(edited, kept)
    assert torch.equal(rebuilt[:, :skip], out[:, :skip])
    assert torch.all(rebuilt[:, skip:, 3] == 0)
    assert torch.equal(rebuilt[:, skip:, :3], out[:, skip:, :3])


def test_nhwc_and_none_round_trip() -> None:
    out = torch.randn(2, 3, 5, 6)
    nhwc = Reshape("nhwc")
    maps = nhwc.to_maps(out)
    assert maps.shape == (2, 6, 3, 5)
    assert torch.equal(maps[1, 4, 2, 3], out[1, 2, 3, 4])
    assert nhwc.prefix(out) is None
    assert torch.equal(nhwc.to_layer(maps), out)
    none = Reshape("none")
    assert none.to_maps(out) is out and none.to_layer(out) is out


def test_prefix_tokens_are_needed_to_rebuild() -> None:
    rs = Reshape("tokens", (2, 2), 1)
    with pytest.raises(ValueError, match="prefix"):
        rs.to_layer(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="resolve"):
        Reshape("auto").to_maps(torch.zeros(1, 5, 3))


class _Declared(nn.Module):
    """Declares its token layout as timm does."""

    patch_size = 8
    num_prefix_tokens = 2

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - never run
        return x


def test_auto_reads_the_grid_from_the_model(caplog: pytest.LogCaptureFixture) -> None:
    model = _Declared()
    assert token_layout(model) == ((8, 8), 2)
    out = torch.zeros(1, 2 + 4 * 6, 10)
    with caplog.at_level(logging.WARNING):
        rs = Reshape().resolve(out, (32, 48), model, "blocks.1")
    assert (rs.kind, rs.grid, rs.skip) == ("tokens", (4, 6), 2)
    assert "patch 8x8" in rs.source
    assert not caplog.records  # nothing guessed, nothing to warn about


def test_auto_guesses_the_grid_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    out = torch.zeros(2, 1 + 8 * 8, 16)
    with caplog.at_level(logging.WARNING):
        rs = Reshape().resolve(out, (64, 64), nn.Identity(), "blk", batch=2)
    assert (rs.kind, rs.grid, rs.skip) == ("tokens", (8, 8), 1)
    (record,) = caplog.records
    assert "'blk'" in record.message and "--reshape tokens:HxW:skip=T" in record.message
    # non-square input: the grid keeps the input's aspect ratio
    rs = Reshape().resolve(torch.zeros(1, 4 * 6, 3), (32, 48), None, "x", quiet=True)
    assert (rs.grid, rs.skip) == ((4, 6), 0)


def test_user_grid_must_fit() -> None:
    out = torch.zeros(1, 17, 8)
    rs = Reshape.parse("tokens:4x4").resolve(out, (32, 32), None, "blk")
    assert (rs.grid, rs.skip) == ((4, 4), 1)
    with pytest.raises(UsageError, match=r"17 tokens.*not 2 prefix \+ 4x4 = 18"):
        Reshape.parse("tokens:4x4:skip=2").resolve(out, (32, 32), None, "blk")
    with pytest.raises(UsageError, match="needs"):
        Reshape.parse("tokens:4x4").resolve(torch.zeros(1, 8, 4, 4), (32, 32), None, "blk")
    with pytest.raises(UsageError, match="4-D"):
        Reshape.parse("nhwc").resolve(out, (32, 32), None, "blk")


def test_channels_last_detected_by_shape() -> None:
    nhwc = Reshape().resolve(torch.zeros(1, 7, 7, 96), (224, 224), None, "stage")
    assert nhwc.kind == "nhwc"
    nchw = Reshape().resolve(torch.zeros(1, 96, 7, 7), (224, 224), None, "stage")
    assert nchw.kind == "none"
    # ambiguous (C == h == w): the PyTorch convention
    assert Reshape().resolve(torch.zeros(1, 7, 7, 7), (224, 224), None, "x").kind == "none"


@pytest.mark.parametrize(
    "out,words",
    [
        (torch.zeros(1, 1000), ["'fc'", "(1, 1000)", "not a feature map"]),
        ((torch.zeros(1, 3),), ["'fc'", "tuple", "not a tensor"]),
        (torch.zeros(1, 50, 7), ["'fc'", "50 tokens", "224x160", "--reshape tokens:HxW:skip=T"]),
    ],
)
def test_what_cannot_be_a_map_is_refused(out, words: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        Reshape().resolve(out, (224, 160), None, "fc")
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_windowed_outputs_are_refused_by_batch() -> None:
    with pytest.raises(UsageError, match="batch"):
        Reshape().resolve(torch.zeros(8, 49, 16), (56, 56), None, "attn", batch=2)


def test_model_input_size() -> None:
    import torchvision

    vit = torchvision.models.VisionTransformer(
        image_size=48, patch_size=16, num_layers=1, num_heads=1, hidden_dim=8, mlp_dim=8
    )
    assert model_input_size(vit) == (48, 48)
    assert model_input_size(nn.Conv2d(3, 3, 1)) is None


# ------------------------------------------------------------------------- inside the split


class TokenNet(nn.Module):
    """conv patch embedding -> [cls, dist] + patch tokens -> block (norm -> attention with a
    residual) -> MLP -> head on the mean of the two prefix tokens. ``norm`` outputs tokens."""

    patch_size = 4
    num_prefix_tokens = 2

    def __init__(self, dim: int = 12) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.prefix = nn.Parameter(torch.randn(1, 2, dim))
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 5)

    def forward(self, x: Tensor) -> Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.prefix.expand(x.shape[0], -1, -1), t], dim=1)
        y = self.norm(t)
        t = t + self.attn(y, y, y, need_weights=False)[0]
        t = t + self.mlp(t)
        return self.head(t[:, :2].mean(1))


class ChannelsLastNet(nn.Module):
    """conv -> permute to (B, h, w, C) -> LayerNorm (channels-last) -> linear per position ->
    mean -> head; ``stage`` outputs (B, h, w, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.stage = nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 10), nn.GELU())
        self.head = nn.Linear(10, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stage(self.conv(x).permute(0, 2, 3, 1)).mean(dim=(1, 2)))


def _close(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()) + 1e-7)


@pytest.mark.parametrize("allow_trace", [True, False], ids=["traced", "hooks"])
def test_split_carries_prefix_tokens(allow_trace: bool) -> None:
    torch.manual_seed(0)
    model = TokenNet().eval()
    x = torch.randn(3, 3, 16, 20)
    split = split_model(model, "norm", allow_trace=allow_trace)
    assert split.traced is allow_trace
    with torch.no_grad():
        maps, carry = split.head(x)
        assert maps.shape == (3, 12, 4, 5)
        assert carry.reshape == Reshape("tokens", (4, 5), 2)
        assert carry.kept is not None and carry.kept.shape == (3, 2, 12)
        _close(split.tail(maps, carry), model(x))
        # the tail gathers the prefix tokens by index, as the other carried values
        idx = torch.tensor([2, 0, 2, 1])
        edited = maps[idx] * torch.rand(4, 12, 1, 1, generator=torch.Generator().manual_seed(1))
        got = split.tail(edited, carry, idx)
        for r, i in enumerate(idx.tolist()):
            _, c1 = split.head(x[i : i + 1])
            _close(got[r : r + 1], split.tail(edited[r : r + 1], c1))
    assert split.reshape_used == Reshape("tokens", (4, 5), 2)
    assert split.resolve_reshape((16, 20)) == Reshape("tokens", (4, 5), 2)


@pytest.mark.parametrize("allow_trace", [True, False], ids=["traced", "hooks"])
def test_split_channels_last(allow_trace: bool) -> None:
    torch.manual_seed(0)
    model = ChannelsLastNet().eval()
    x = torch.randn(2, 3, 16, 16)
    split = split_model(model, "stage", allow_trace=allow_trace)
    with torch.no_grad():
        maps, carry = split.head(x)
        assert maps.shape == (2, 10, 8, 8) and carry.reshape == Reshape("nhwc")
        _close(split.tail(maps, carry), model(x))
    # the gradient w.r.t. the map is the gradient w.r.t. the layer output, permuted
    maps = maps.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(split.tail(maps, carry)[:, 1].sum(), maps)
    seen: list[Tensor] = []
    handle = model.stage.register_forward_hook(lambda _m, _i, o: seen.append(o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    (ref,) = torch.autograd.grad(logits[:, 1].sum(), seen[0])
    _close(grad, ref.permute(0, 3, 1, 2))


def test_explicit_reshape_overrides_auto() -> None:
    torch.manual_seed(0)
    model = TokenNet().eval()
    x = torch.randn(1, 3, 16, 16)
    split = split_model(model, "norm", reshape="tokens:4x4:skip=2")
    with torch.no_grad():
        maps, carry = split.head(x)
        _close(split.tail(maps, carry), model(x))
    wrong = split_model(model, "norm", reshape="tokens:3x6:skip=1")
    with pytest.raises(UsageError, match=r"18 tokens, not 1 prefix \+ 3x6 = 19"):
        wrong.head(x)
