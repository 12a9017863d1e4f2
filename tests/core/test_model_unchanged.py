"""The model is never mutated: weights, buffers, training flags, .grad, hooks, modules.

Checked after a normal run of every registered method and after runs that fail inside a method
or inside the model's forward, on the traced split and on the hook fallback.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor, nn
from torch.nn.modules import module as nn_module

from camscope.core.runtime import SpeedSettings
from camscope.engine import CamEngine, compute_cams
from camscope.methods import registry
from camscope.methods.registry import methods_for

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = methods_for()  # methods for every model (these tests use CNNs)


class Bomb(nn.Module):
    """Identity that raises on its ``fuse``-th call (never, with fuse=0)."""

    def __init__(self) -> None:
        super().__init__()
        self.fuse = 0
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.fuse and self.calls >= self.fuse:
            raise RuntimeError("boom")
        return x


class BNNet(nn.Module):
    """Conv-BN-ReLU x2 (target: ``features``), dropout, a Bomb and a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 10, 3, padding=1),
            nn.BatchNorm2d(10),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.bomb = Bomb()
        self.classifier = nn.Linear(10, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.bomb(self.drop(torch.flatten(self.pool(self.features(x)), 1))))


def _model() -> BNNet:
    torch.manual_seed(0)
    model = BNNet()
    with torch.no_grad():  # non-trivial running statistics: a train-mode forward would move them
        for bn in (model.features[1], model.features[5]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    model.train()
    model.features[1].eval()  # mixed flags must come back exactly
    for i, p in enumerate(model.parameters()):
        if i % 2 == 0:
            p.grad = torch.full_like(p, float(i + 1))
    return model


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": {name: m.training for name, m in model.named_modules()},
        "grads": {name: p.grad for name, p in model.named_parameters()},
        "grad_values": {
            name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()
        },
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "modules": {name: m for name, m in model.named_modules()},
        "params": {name: p for name, p in model.named_parameters()},
    }


def _assert_unchanged(model: nn.Module, before: dict) -> None:
    after = _snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), f"{k} changed"
    assert after["training"] == before["training"]
    for name, g in before["grads"].items():
        assert after["grads"][name] is g, f"{name}.grad replaced"
        if g is not None:
            assert torch.equal(g, before["grad_values"][name]), f"{name}.grad modified"
    assert after["requires_grad"] == before["requires_grad"]
    assert after["modules"].keys() == before["modules"].keys()
    assert all(after["modules"][k] is m for k, m in before["modules"].items()), "module swapped"
    assert all(after["params"][k] is p for k, p in before["params"].items()), "parameter swapped"
    for name, m in model.named_modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_full_backward_hooks",
            "_state_dict_hooks",
            "_load_state_dict_pre_hooks",
        ):
            hooks = getattr(m, attr, None)
            assert not hooks, f"{name or 'model'}.{attr} left: {hooks}"
    assert not nn_module._global_forward_hooks and not nn_module._global_forward_pre_hooks
    assert not nn_module._global_backward_hooks


def _x(n: int = 2) -> Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("allow_trace", [True, False], ids=["traced", "hooks"])
def test_unchanged_after_a_run(allow_trace: bool) -> None:
    model = _model()
    before = _snapshot(model)
    with torch.no_grad():
        model.eval()
        expected = model(_x())
        model.train()
        model.features[1].eval()
    engine = CamEngine(model, "features", methods=METHODS, smoothing=["eigen,aug"], allow_trace=allow_trace)
    _assert_unchanged(model, before)  # building the engine (split, layer check) changes nothing
    res = engine(_x(), top_k=2)
    _assert_unchanged(model, before)
    # The run used eval mode (no dropout, running statistics): deterministic probabilities.
    torch.testing.assert_close(res.probabilities, torch.softmax(expected, 1))
    assert res.maps["gradcam"].shape == (2, 2, 16, 16)
    engine(_x(1))  # and again
    _assert_unchanged(model, before)


def test_unchanged_after_compute_cams_default_layer() -> None:
    model = _model()
    before = _snapshot(model)
    compute_cams(model, _x(), methods=["gradcam", "scorecam"])
    _assert_unchanged(model, before)


@pytest.mark.parametrize("allow_trace", [True, False], ids=["traced", "hooks"])
@pytest.mark.parametrize("method", METHODS)
def test_unchanged_when_a_method_raises(monkeypatch, method: str, allow_trace: bool) -> None:
    """A registered method's function raising: the error propagates, the model is restored."""
    spec = registry.METHODS[method]

    def explode(cap, rt):
        spec.fn(cap, rt)  # run it (forwards, tails) then fail
        raise RuntimeError(f"{method} exploded")

    monkeypatch.setitem(registry.METHODS, method, dataclasses.replace(spec, fn=explode))
    model = _model()
    before = _snapshot(model)
    engine = CamEngine(model, "features", methods=["gradcam", method], allow_trace=allow_trace)
    with pytest.raises(RuntimeError, match="exploded"):
        engine(_x())
    _assert_unchanged(model, before)


@pytest.mark.parametrize("allow_trace", [True, False], ids=["traced", "hooks"])
@pytest.mark.parametrize("fuse", [1, 2, 3, 5])
@pytest.mark.parametrize("method", METHODS)
def test_unchanged_when_the_model_raises(method: str, fuse: int, allow_trace: bool) -> None:
    """The model raising in its forward at the 1st, 2nd, ... call after the engine is built:
    inside the capture (head or tail), inside Ablation-CAM's tails, Score-CAM's forwards..."""
    model = _model()
    engine = CamEngine(model, "features", methods=[method], speed=SpeedSettings(batch_size=3), allow_trace=allow_trace)
    before = _snapshot(model)
    model.bomb.calls, model.bomb.fuse = 0, fuse
    try:
        engine(_x())
    except RuntimeError as exc:
        assert "boom" in str(exc)
    else:
        assert model.bomb.calls < fuse, "the bomb went off but nothing was raised"
    model.bomb.fuse = 0
    _assert_unchanged(model, before)
    # The model (and the engine) still work normally afterwards.
    res = engine(_x())
    assert torch.isfinite(res.maps[method]).all()
    _assert_unchanged(model, before)


def test_unchanged_when_interrupted(monkeypatch) -> None:
    """Also for exceptions that are not errors (KeyboardInterrupt inside a hooked forward)."""
    model = _model()
    engine = CamEngine(model, "features", methods=["ablationcam"], allow_trace=False)
    before = _snapshot(model)

    def interrupt(self, x):
        raise KeyboardInterrupt

    monkeypatch.setattr(Bomb, "forward", interrupt)
    with pytest.raises(KeyboardInterrupt):
        engine(_x())
    monkeypatch.undo()
    _assert_unchanged(model, before)


def test_model_guard_restores_grad_set_during_run(monkeypatch) -> None:
    """A method that (wrongly) accumulates parameter gradients does not leak them."""
    spec = registry.METHODS["gradcam"]

    def dirty(cap, rt):
        with torch.enable_grad():
            rt.model(cap.views).sum().backward()
        return spec.fn(cap, rt)

    monkeypatch.setitem(registry.METHODS, "gradcam", dataclasses.replace(spec, fn=dirty))
    model = _model()
    before = _snapshot(model)
    CamEngine(model, "features", methods=["gradcam"])(_x())
    _assert_unchanged(model, before)
