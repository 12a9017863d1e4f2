"""Hugging Face classifiers through the traced split (control flow decided on an example).

transformers' forward code asks ``if pixel_values.dtype != expected_dtype``, which plain
``torch.fx`` cannot trace; :class:`camscope.core.concrete_trace.ConcreteSplitTracer` answers such
questions on an example input and the split is used only if it reproduces the model there.
For tiny ViT, DeiT (two prefix tokens), BEiT (relative position bias), ConvNeXt and ResNet from
configs (random weights): the split is traced, its tail equals the model (1e-5) on other
inputs and batch sizes, Ablation-CAM's fast path (tails only) equals the naive reference (a full
forward per feature with a hook zeroing it, 1e-5) and equals the hook path's maps; nothing of the
model changes (Swin, whose block code stores values on its modules while tracing, falls back to
the hook path with its attributes intact).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from camscope.core.layers import default_layer
from camscope.core.runtime import SpeedSettings
from camscope.core.split import split_model
from camscope.engine import CamEngine
from tests.reference import reference_maps

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = dict(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=48, num_labels=5)


def _build(kind: str) -> nn.Module:
    from camscope.models.hf_source import HuggingFaceClassifier

    torch.manual_seed(0)
    if kind == "vit":
        hf = transformers.ViTForImageClassification(transformers.ViTConfig(**COMMON))
    elif kind == "deit":
        hf = transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**COMMON))
    elif kind == "beit":
        hf = transformers.BeitForImageClassification(transformers.BeitConfig(**COMMON, use_relative_position_bias=True))
    elif kind == "convnext":
        hf = transformers.ConvNextForImageClassification(
            transformers.ConvNextConfig(image_size=32, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_labels=5)
        )
    elif kind == "resnet":
        hf = transformers.ResNetForImageClassification(
            transformers.ResNetConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], embedding_size=8, num_labels=5)
        )
    else:
        hf = transformers.SwinForImageClassification(
            transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4, num_labels=5)
        )
    with torch.no_grad():
        for name, p in hf.named_parameters():  # a classifier that is not near zero
            if "classifier" in name and p.dim() == 2:
                p.normal_(0, 1.0)
    return HuggingFaceClassifier(hf).eval()


def _x(b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _attrs(model: nn.Module) -> list[dict]:
    return [{k: v for k, v in vars(m).items() if not k.startswith("_")} for m in model.modules()]


@pytest.mark.parametrize("kind", ["vit", "deit", "beit", "convnext", "resnet"])
def test_split_traced_and_equal_to_the_model(kind: str) -> None:
    model = _build(kind)
    before = _attrs(model)
    layer = default_layer(model, input_size=(1, 3, 32, 32))
    split = split_model(model, layer)
    assert split.traced
    assert _attrs(model) == before
    with torch.no_grad():
        for b in (1, 3):
            x = _x(b, seed=b)
            ref = model(x)
            torch.testing.assert_close(split.tail(*split.head(x)), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("kind", ["vit", "deit", "beit"])
def test_ablation_fast_equals_naive_and_hook_path(kind: str) -> None:
    model = _build(kind)
    x = _x()
    targets = [1, 3]
    layer = default_layer(model, input_size=(1, 3, 32, 32))
    kw = dict(methods=["ablationcam"], speed=SpeedSettings(batch_size=16))
    fast = CamEngine(model, layer, **kw)
    assert fast.split.traced
    maps = fast(x, targets=[[t] for t in targets]).maps["ablationcam"][:, 0]
    naive = reference_maps("ablationcam", model, layer, x, targets, reshape="auto", chunk=16)
    np.testing.assert_allclose(maps.numpy(), naive.numpy(), atol=1e-5)
    hooks = CamEngine(model, layer, allow_trace=False, **kw)(x, targets=[[t] for t in targets]).maps["ablationcam"][:, 0]
    np.testing.assert_allclose(maps.numpy(), hooks.numpy(), atol=1e-5)
    assert float(maps.amax()) > 0


def test_swin_falls_back_to_hooks_with_the_model_intact() -> None:
    model = _build("swin")
    before = _attrs(model)
    layer = default_layer(model, input_size=(1, 3, 32, 32))
    split = split_model(model, layer)
    assert _attrs(model) == before
    with torch.no_grad():
        x = _x()
        torch.testing.assert_close(split.tail(*split.head(x)), model(x), rtol=1e-5, atol=1e-5)


class _ValueBranch(nn.Module):
    """Control flow on a tensor's values after the target: ``bool(h.sum() > 0)`` or ``.item()``."""

    def __init__(self, item: bool) -> None:
        super().__init__()
        self.a, self.b, self.item = nn.Linear(4, 4), nn.Linear(4, 3), item

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x.flatten(1)[:, :4])
        positive = h.sum().item() > 0 if self.item else h.sum() > 0
        return self.b(h * 2 if positive else h)


@pytest.mark.parametrize("item", [False, True])
def test_value_dependent_control_flow_keeps_the_hook_path(item: bool) -> None:
    """Decided on zeros, such a branch would be baked into the graph: refused instead."""
    assert not split_model(_ValueBranch(item), "a").traced
