"""Cascading model-parameter randomisation and map similarity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from camscope.errors import UsageError
from camscope.metrics import (
    cascading_randomization,
    compare_maps,
    randomization_layers,
    sanity_verdict,
    ssim,
)


class Scale(nn.Module):
    """A module with a raw parameter and no reset_parameters()."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain.view(1, -1, 1, 1)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        Scale(),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    with torch.no_grad():  # make BatchNorm differ from its initial values
        m[1].weight.uniform_(0.5, 2.0)
        m[1].bias.uniform_(-1.0, 1.0)
        m[1].running_mean.uniform_(-1.0, 1.0)
    return m.eval()


def changed_params(model: nn.Module, ref: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in model.named_parameters() if not torch.equal(v, ref[k])}


def test_cascade_is_cumulative_top_down_and_leaves_input_alone() -> None:
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = {k: v.clone() for k, v in model.named_parameters()}
    rng_before = torch.get_rng_state()
    steps = list(cascading_randomization(model, seed=0))
    assert [name for name, _ in steps] == ["6", "2", "1", "0"]
    assert randomization_layers(model) == ["6", "2", "1", "0"]
    expected = [
        {"6.weight", "6.bias"},
        {"6.weight", "6.bias", "2.gain"},
        {"6.weight", "6.bias", "2.gain", "1.weight", "1.bias"},
        {"6.weight", "6.bias", "2.gain", "1.weight", "1.bias", "0.weight", "0.bias"},
    ]
    for (_, m), exp in zip(steps, expected, strict=True):
        assert changed_params(m, params_before) == exp  # yielded copies are independent
        assert m is not model
    # The input model is untouched and the global RNG is not consumed.
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_cascade_seeded_and_groups() -> None:
    model = tiny_model()
    a = [m for _, m in cascading_randomization(model, seed=1)][-1]
    b = [m for _, m in cascading_randomization(model, seed=1)][-1]
    c = [m for _, m in cascading_randomization(model, seed=2)][-1]
    assert torch.equal(a[0].weight, b[0].weight)
    assert not torch.equal(a[0].weight, c[0].weight)
    params_before = {k: v.clone() for k, v in model.named_parameters()}
    grouped = list(cascading_randomization(model, groups=["6", "0"]))
    assert [n for n, _ in grouped] == ["6", "0"]
    assert changed_params(grouped[1][1], params_before) == {"6.weight", "6.bias", "0.weight", "0.bias"}
    with pytest.raises(UsageError, match="no module named 'fc'"):
        list(cascading_randomization(model, groups=["fc"]))


def test_ssim_and_compare_maps() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((16, 16))
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, rng.random((16, 16))) < 0.5
    assert ssim(a[:5, :5], a[:5, :5]) == pytest.approx(1.0)  # smaller window for small maps
    sims = compare_maps(a, a)
    assert set(sims) == {"spearman", "spearman_abs", "ssim"}
    assert sims["spearman"] == pytest.approx(1.0) and sims["ssim"] == pytest.approx(1.0)
    flipped = compare_maps(a, 1 - a)
    assert flipped["spearman"] == pytest.approx(-1.0)
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        ssim(a * 3, a)


def test_sanity_verdict() -> None:
    assert not sanity_verdict([0.95, 0.9, 0.8])  # maps barely change: fails
    assert sanity_verdict([0.9, 0.6, 0.2])
    assert sanity_verdict([0.9, 0.5])  # threshold is inclusive
    assert not sanity_verdict([0.9, 0.5], threshold=0.4)
    assert sanity_verdict([0.9, math.nan])
    with pytest.raises(UsageError):
        sanity_verdict([])
