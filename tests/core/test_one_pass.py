"""The hook path's gradient capture in one forward (``LayerSplit.head_tail``) equals the head run
then tail run it replaces: activations, output, targets, gradients and the carry the
perturbation methods use; for a module called several times per forward (the last call), a
transformer's tokens (reshape with a class token) and a detector's list of dicts."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from camscope.core.capture import capture
from camscope.core.split import split_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _vit() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    from camscope.models.hf_source import HuggingFaceClassifier

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=48, num_labels=5)
    return HuggingFaceClassifier(transformers.ViTForImageClassification(cfg)).eval()


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=7).eval()


def _captures(model: nn.Module, layer: str, x: torch.Tensor, **kw: Any) -> tuple[Any, Any, int]:
    split = split_model(model, layer, allow_trace=False)
    calls = [0]
    handle = model.register_forward_pre_hook(lambda m, i: calls.__setitem__(0, calls[0] + 1))
    try:
        one = capture(split, x, **kw)
        forwards = calls[0]
        split.head_tail = lambda x: None  # type: ignore[method-assign]  # the head run, then the tail run
        two = capture(split, x, **kw)
    finally:
        handle.remove()
    return one, two, forwards


@pytest.mark.parametrize("build,layer,size", [(_resnet, "layer4.1.relu", 64), (_vit, "hf.vit.layers.1.layernorm_before", 32)])
def test_one_pass_equals_head_then_tail(build: Any, layer: str, size: int) -> None:
    model = build()
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    one, two, forwards = _captures(model, layer, x, top_k=2)
    assert forwards == 1
    torch.testing.assert_close(one.view_activations, two.view_activations)
    torch.testing.assert_close(one.view_logits, two.view_logits)
    assert torch.equal(one.targets, two.targets)
    torch.testing.assert_close(one.gradients, two.gradients, rtol=1e-5, atol=1e-7)
    assert float(one.gradients.abs().amax()) > 0
    assert one.carry.target_call == two.carry.target_call and one.carry.acts_shape == two.carry.acts_shape
    if two.carry.kept is not None:  # the class token, for the tail runs of Ablation-/Score-CAM
        torch.testing.assert_close(one.carry.kept, two.carry.kept)
    assert not any(m._forward_hooks for m in model.modules())


def test_one_pass_on_a_detector_list_output() -> None:
    from camscope.targets import Task, resolve_targets
    from tests.targets.test_vision_tasks import tiny_rcnn

    model = tiny_rcnn()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    task = Task("detect", score_threshold=0.0)
    resolve = lambda out: resolve_targets(None, task, out, range(2), (64, 64), top_k=2)  # noqa: E731
    one, two, forwards = _captures(model, "backbone.5", x, resolve=resolve)
    assert forwards == 1
    torch.testing.assert_close(one.row_scores, two.row_scores)
    torch.testing.assert_close(one.gradients, two.gradients, rtol=1e-5, atol=1e-7)
    assert float(one.gradients.abs().amax()) > 0
