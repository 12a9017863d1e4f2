"""``camscope.studies.randomization``: the model-parameter randomisation test (Adebayo et al. 2018) on the trained
synthetic SmallCNN: real CAM methods pass, an input-only "explainer" fails, the model is untouched."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from camscope.studies import synthetic as S
from camscope.studies.randomization import THRESHOLD, default_groups, run_sanity

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ("gradcam", "ablationcam", "scorecam")


@pytest.fixture(scope="module")
def small_cnn() -> nn.Module:
    """The trained synthetic model (cached after the first training)."""
    return S.load_or_train()


@pytest.fixture(scope="module")
def scenes() -> Tensor:
    return S.normalize(S.make_scenes(4, seed=777).images)


@pytest.fixture(scope="module")
def result(small_cnn: nn.Module, scenes: Tensor):
    return run_sanity(small_cnn, scenes, layer=S.TARGET_LAYER, methods=METHODS, seed=0)


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", METHODS)
def test_real_methods_pass(result, method: str) -> None:
    assert result.passed[method], result.summary[method]
    final = result.final(method)
    assert final < THRESHOLD
    assert result.summary[method].startswith(f"{result.titles[method]} passes")
    assert "every layer" in result.summary[method]
    assert len(result.similarity[method]["ssim"]) == len(result.steps)


def test_steps_and_targets(result, small_cnn: nn.Module, scenes: Tensor) -> None:
    assert result.steps == default_groups(small_cnn)
    assert result.steps[0] == "classifier" and result.covers_all
    with torch.no_grad():
        assert result.targets == small_cnn(scenes).argmax(1).tolist()
    assert result.layer == S.TARGET_LAYER


class _EdgeEngine:
    """A fake explainer that ignores the model: Sobel edge magnitude of the input."""

    def __init__(self, model: nn.Module, layer: str | None, methods) -> None:
        self.model, self.layer, self.methods = model, layer or "features", list(methods)

    def __call__(self, images: Tensor, targets=None):
        gray = images.mean(1, keepdim=True)
        kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])[None, None]
        gx = nn.functional.conv2d(gray, kx, padding=1)
        gy = nn.functional.conv2d(gray, kx.transpose(-1, -2), padding=1)
        mag = (gx**2 + gy**2).sqrt()[:, 0]
        lo = mag.amin((1, 2), keepdim=True)
        hi = mag.amax((1, 2), keepdim=True)
        maps = ((mag - lo) / (hi - lo + 1e-12))[:, None]
        return SimpleNamespace(maps={m: maps for m in self.methods})


def test_input_only_method_fails(small_cnn: nn.Module, scenes: Tensor) -> None:
    res = run_sanity(small_cnn, scenes, methods=["edges"], engine_factory=_EdgeEngine)
    assert not res.passed["edges"]
    assert res.final("edges") > 0.99
    assert "FAILS" in res.summary["edges"] and "barely depend" in res.summary["edges"]


def test_model_unchanged(small_cnn: nn.Module, scenes: Tensor) -> None:
    before = _state(small_cnn)
    grads = [None if p.grad is None else p.grad.clone() for p in small_cnn.parameters()]
    small_cnn.train()
    try:
        run_sanity(small_cnn, scenes[:2], methods=["gradcam"], groups=["classifier"])
        assert small_cnn.training
    finally:
        small_cnn.eval()
    after = small_cnn.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    for g, p in zip(grads, small_cnn.parameters(), strict=True):
        assert (g is None and p.grad is None) or torch.equal(g, p.grad)


def test_fixed_targets_and_partial_cascade(small_cnn: nn.Module, scenes: Tensor) -> None:
    res = run_sanity(small_cnn, scenes[:2], methods=["gradcam"], groups=["classifier"], targets=[1, 2])
    assert res.targets == [1, 2]
    assert res.steps == ["classifier"] and not res.covers_all
    assert "after randomising classifier" in res.summary["gradcam"]


def test_default_groups_resnet(resnet18: nn.Module) -> None:
    assert default_groups(resnet18) == ["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]


def test_save(result, tmp_path) -> None:
    paths = result.save(tmp_path)
    data = json.loads((tmp_path / "sanity.json").read_text())
    assert set(data["methods"]) == set(METHODS)
    assert data["methods"]["gradcam"]["passed"] is True
    assert data["threshold"] == THRESHOLD
    lines = (tmp_path / "sanity.csv").read_text().splitlines()
    assert lines[0].startswith("method,step,randomized,spearman,spearman_abs,ssim")
    assert len(lines) == 1 + len(METHODS) * len(result.steps)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    per_image = np.array(data["methods"]["gradcam"]["per_image"]["spearman"], dtype=float)
    assert per_image.shape == (len(result.steps), 4)
