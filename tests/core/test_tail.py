"""split_model: head/tail equal the full model (traced and hook paths), gradients, index broadcast."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
import torchvision
from torch import Tensor, nn

from camscope.core.split import LayerSplit, split_model

pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def _model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, arch)(weights=None).eval()


def _images(b: int, size: int = 64, seed: int = 1) -> Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _close(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()) + 1e-7)


def _reference(model: nn.Module, layer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Full forward: (last output of ``layer``, logits)."""
    seen: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.clone()))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    return seen[-1], logits


def _reference_grad(model: nn.Module, layer: nn.Module, x: Tensor, cls: Tensor) -> Tensor:
    """d(sum of logits[i, cls[i]]) / d(layer output) from a plain full-model forward."""
    seen: list[Tensor] = []

    def hook(_m: nn.Module, _i: object, out: Tensor) -> Tensor:
        seen.append(out)
        return out.clone()  # keep ``out`` itself safe from later in-place ops

    handle = layer.register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    score = logits.gather(1, cls[:, None]).sum()
    return torch.autograd.grad(score, seen[-1])[0]


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


CASES = [
    ("resnet18", "layer4[-1]", 2),
    ("resnet18", "layer3[-1]", 2),
    ("resnet18", "layer4.1.conv2", 2),
    ("resnet18", "layer4.1.bn2", 2),
    ("resnet50", "layer4[-1]", 1),
    ("resnet50", "layer3[-1]", 1),
    ("resnet50", "layer4.2.bn2", 1),
    ("vgg11", "features.19", 2),
    ("densenet121", "features.norm5", 1),
    ("densenet121", "features.denseblock4.denselayer15", 1),
    ("mobilenet_v3_small", "features.12", 2),
    ("efficientnet_b0", "features.8", 2),
    ("convnext_tiny", "features.7", 1),
]


@pytest.mark.parametrize("arch,layer,b", CASES)
def test_tail_equals_model(arch: str, layer: str, b: int) -> None:
    model = _model(arch)
    x = _images(b)
    ref_acts, ref = _reference(
        model, model.get_submodule(split_model(model, layer, allow_trace=False).layer), x
    )
    for allow_trace in (True, False):
        split = split_model(model, layer, allow_trace=allow_trace)
        assert split.traced is allow_trace
        with torch.no_grad():
            acts, carry = split.head(x)
            _close(acts, ref_acts)
            _close(split.tail(acts, carry), ref)
            _close(split.forward(x), ref)
    assert _no_hooks(model)


@pytest.mark.parametrize(
    "arch,layer",
    [("resnet18", "layer4.1.bn2"), ("resnet50", "layer4.2.bn2"), ("densenet121", "features.norm5")],
)
@pytest.mark.parametrize("allow_trace", [True, False])
def test_gradient_wrt_acts(arch: str, layer: str, allow_trace: bool) -> None:
    model = _model(arch)
    x = _images(2)
    cls = torch.tensor([3, 7])
    split = split_model(model, layer, allow_trace=allow_trace)
    with torch.no_grad():
        acts, carry = split.head(x)
    acts.requires_grad_(True)
    before = acts.detach().clone()
    score = split.tail(acts, carry).gather(1, cls[:, None]).sum()
    (grad,) = torch.autograd.grad(score, acts)
    torch.testing.assert_close(acts.detach(), before, rtol=0, atol=0)  # tail did not modify acts
    expected = _reference_grad(model, model.get_submodule(split.layer), x, cls)
    _close(grad, expected)
    assert _no_hooks(model)


@pytest.mark.parametrize("allow_trace", [True, False])
def test_index_broadcast(allow_trace: bool) -> None:
    model = _model("resnet18")
    split = split_model(model, "layer4.1.conv2", allow_trace=allow_trace)  # carries the skip input
    x = _images(2)
    idx = torch.tensor([1, 0, 1, 1, 0])
    with torch.no_grad():
        acts, carry = split.head(x)
        mask = torch.rand(5, acts.shape[1], 1, 1, generator=torch.Generator().manual_seed(2)) > 0.5
        rows = acts[idx] * mask
        got = split.tail(rows, carry, idx)
        for i, j in enumerate(idx.tolist()):
            a1, c1 = split.head(x[j : j + 1])
            _close(got[i : i + 1], split.tail(rows[i : i + 1], c1))
        # a single image broadcast to many rows (expand, no copy), with and without index
        a1, c1 = split.head(x[1:2])
        many = a1.expand(4, -1, -1, -1) * mask[:4]
        expected = torch.cat([split.tail(many[i : i + 1], c1) for i in range(4)])
        _close(split.tail(many, c1), expected)
        _close(split.tail(many, c1, torch.zeros(4, dtype=torch.long)), expected)
        with pytest.raises(ValueError):
            split.tail(rows, carry)  # 5 rows for 2 images needs an index
        with pytest.raises(ValueError):
            split.tail(rows, carry, torch.tensor([0, 1, 2, 0, 1]))  # out of range


def test_multiply_called_module_splits_at_last_call() -> None:
    model = _model("resnet18")
    x = _images(2)
    block_out, ref = _reference(model, model.layer4[1], x)  # relu's last call is the block output
    for allow_trace in (True, False):
        split = split_model(model, "layer4.1.relu", allow_trace=allow_trace)
        with torch.no_grad():
            acts, carry = split.head(x)
            _close(acts, block_out)
            _close(
                split.tail(acts * 0.5, carry),
                model.fc(torch.flatten(model.avgpool(block_out * 0.5), 1)),
            )
            _close(split.tail(acts, carry), ref)
        if not allow_trace:
            assert carry.target_call == 2


class _Branchy(nn.Module):
    """Data-dependent control flow: not traceable by torch.fx."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv1(x))
        if h.sum() > 0:
            h = h * 2
        h = torch.relu(self.conv2(h))
        return self.fc(h.mean(dim=(2, 3)))


class _ShapeArith(nn.Module):
    """Uses the batch size computed before the target after it (recomputed in the tail)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        h = self.features(x)
        return self.fc(h.reshape(b, -1) + x.flatten(1)[:, :1])


def test_untraceable_model_uses_fallback() -> None:
    torch.manual_seed(0)
    model = _Branchy().eval()
    x = _images(2, 16)
    split = split_model(model, "conv2")
    assert not split.traced
    with torch.no_grad():
        ref = model(x)
        acts, carry = split.head(x)
        _close(split.tail(acts, carry), ref)
    acts.requires_grad_(True)
    (grad,) = torch.autograd.grad(split.tail(acts, carry)[:, 1].sum(), acts)
    _close(grad, _reference_grad(model, model.conv2, x, torch.tensor([1, 1])))
    assert _no_hooks(model)


def test_shape_arithmetic_follows_tail_batch() -> None:
    torch.manual_seed(0)
    model = _ShapeArith().eval()
    x = _images(2, 16)
    split = split_model(model, "features")
    assert split.traced
    idx = torch.tensor([0, 1, 1])
    with torch.no_grad():
        acts, carry = split.head(x)
        got = split.tail(acts[idx], carry, idx)
        _close(got, model(x[idx]))


def test_no_hook_survives_exceptions() -> None:
    model = _model("resnet18")
    x = _images(1)
    for allow_trace in (True, False):
        split = split_model(model, "layer4.1.conv2", allow_trace=allow_trace)
        with torch.no_grad():
            acts, carry = split.head(x)
            with pytest.raises(ValueError, match="layer4.1.conv2"):
                split.tail(acts[:, :7], carry)  # wrong shape, rejected up front
            unchecked = dataclasses.replace(carry, acts_shape=None)
            with pytest.raises((ValueError, RuntimeError)):
                split.tail(acts[:, :7], unchecked)  # fails inside the model run
            with pytest.raises(RuntimeError):
                split.head(torch.zeros(1, 4, 64, 64))  # wrong input channels
        assert _no_hooks(model)


@pytest.mark.parametrize("train", [False, True])
def test_model_unchanged_and_parameters_shared(train: bool) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).train(train)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = list(model.named_modules())
    attrs = {name: set(vars(m)) for name, m in modules}
    x = _images(2)
    for allow_trace in (True, False):
        split: LayerSplit = split_model(model, "layer4.1.bn2", allow_trace=allow_trace)
        with torch.no_grad():
            acts, carry = split.head(x)
        acts.requires_grad_(True)
        torch.autograd.grad(split.tail(acts, carry).sum(), acts)
        if split.traced:
            params = {id(p) for p in model.parameters()}
            assert split.tail_module is not None and split.head_module is not None
            assert {id(p) for p in split.tail_module.parameters()} <= params
            assert {id(p) for p in split.head_module.parameters()} <= params
    after = list(model.named_modules())
    assert [n for n, _ in after] == [n for n, _ in modules]
    assert all(a is b for (_, a), (_, b) in zip(after, modules, strict=True))
    assert {name: set(vars(m)) for name, m in after} == attrs
    assert all(m.training is train for _, m in after)
    assert _no_hooks(model)
    assert all(p.grad is None for p in model.parameters())
    if not train:  # (a train-mode forward updates BatchNorm statistics, as model(x) would)
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k


def test_model_state_unchanged_in_eval() -> None:
    model = _model("densenet121")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    split = split_model(model, "features.norm5")
    with torch.no_grad():
        split.forward(_images(1))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not any(m.training for m in model.modules())
