"""Layer paths, canonical names, per-architecture defaults and the 4-D output check."""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision
from torch import nn

from camscope.core.layers import (
    canonical_layer_name,
    check_spatial_layer,
    default_layer,
    get_module,
    last_spatial_module,
)
from camscope.errors import UsageError

SMALL = (1, 3, 64, 64)


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def _model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, arch)(weights=None).eval()


@pytest.mark.parametrize(
    "path,expected",
    [
        ("layer4.2", "layer4.2"),
        ("layer4[-1]", "layer4.2"),
        ("layer4.-1", "layer4.2"),
        ("layer4[2]", "layer4.2"),
        ("layer4[-1].conv2", "layer4.2.conv2"),
        ("layer4.-3.downsample[0]", "layer4.0.downsample.0"),
        ("fc", "fc"),
    ],
)
def test_paths_resolve(path: str, expected: str) -> None:
    model = _model("resnet50")
    assert canonical_layer_name(model, path) == expected
    assert get_module(model, path) is model.get_submodule(expected)


@pytest.mark.parametrize(
    "path,words",
    [
        ("layer5", ["layer5", "the model", "layer4", "fc"]),
        ("layer4.3", ["'layer4'", "'3'", "0, 1, 2"]),
        ("layer4[-4]", ["'-4'", "0, 1, 2"]),
        ("layer4.2.conv1.weight", ["'layer4.2.conv1'", "no submodules"]),
        ("", ["empty"]),
        ("layer4..1", ["malformed"]),
    ],
)
def test_unknown_path_lists_choices(path: str, words: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        get_module(_model("resnet50"), path)
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_integer_names_only_index_lists() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3)
            self.b = nn.ReLU()

    with pytest.raises(UsageError, match="valid: a, b"):
        get_module(Net(), "0")


@pytest.mark.parametrize(
    "arch,expected",
    [
        ("resnet18", "layer4.1"),
        ("resnet50", "layer4.2"),
        ("vgg11", "features.19"),
        ("densenet121", "features.norm5"),
        ("mobilenet_v2", "features.18"),
        ("mobilenet_v3_small", "features.12"),
        ("efficientnet_b0", "features.8"),
        ("convnext_tiny", "features.7"),
        ("regnet_y_400mf", "trunk_output"),
    ],
)
def test_default_layer(arch: str, expected: str) -> None:
    model = _model(arch)
    assert default_layer(model) == expected
    assert default_layer(model, arch) == expected
    shape = check_spatial_layer(model, expected, SMALL)
    assert len(shape) == 4 and shape[2] * shape[3] > 1


def test_default_layer_arch_names() -> None:
    model = _model("resnet50")
    for arch in ("resnext50_32x4d", "wide_resnet50_2", "ResNet"):
        assert default_layer(model, arch) == "layer4.2"


class _Net(nn.Module):
    def __init__(self, squeeze: bool = True) -> None:
        super().__init__()
        self.use_squeeze = squeeze
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, padding=1),
        )
        self.squeeze = nn.Conv2d(6, 6, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)  # 4-D but 1x1: not a spatial layer
        self.unused = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        if self.use_squeeze:
            h = self.squeeze(h)
        return self.fc(self.pool(h).flatten(1))


def test_fallback_rule_and_flags_restored() -> None:
    torch.manual_seed(0)
    model = _Net().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert last_spatial_module(model, (1, 3, 16, 16)) == "squeeze"
    assert default_layer(model, input_size=(1, 3, 16, 16)) == "squeeze"
    assert default_layer(model, "my-custom-net", (1, 3, 16, 16)) == "squeeze"
    # no rule applied (a "resnet" without layer4): searched by forward
    assert default_layer(model, "resnet18", (1, 3, 16, 16)) == "squeeze"
    # a container finishes after its last child: it wins, the root model never does
    assert last_spatial_module(_Net(squeeze=False), (1, 3, 16, 16)) == "body"
    assert all(m.training for m in model.modules())  # probing ran in eval mode, flags restored
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # no BatchNorm statistics update
    assert all(not m._forward_hooks for m in model.modules())


def test_check_spatial_layer_rejects() -> None:
    model = _model("resnet18")
    with pytest.raises(UsageError, match=r"'fc'.*\(1, 1000\).*4-D.*'layer4.1'"):
        check_spatial_layer(model, "fc", SMALL)
    with pytest.raises(UsageError, match="never called"):
        check_spatial_layer(_Net(), "unused", (1, 3, 16, 16))
    assert tuple(check_spatial_layer(model, "layer4[-1]", SMALL)) == (1, 512, 2, 2)
    assert all(not m._forward_hooks for m in model.modules())
