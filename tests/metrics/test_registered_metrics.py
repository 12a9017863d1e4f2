"""Hand-computed values of registered metrics Quantus has no (working) counterpart for, and the
registrations' contract (one (M,) tensor per declared key, parameters checked, seeded)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import camscope.metrics  # noqa: F401  (registers the metrics)
from camscope.errors import UsageError
from camscope.metrics.inputs import MetricInputs
from camscope.metrics.registry import CATEGORIES, METRICS

H = W = 16


class LeftHalf(nn.Module):
    """Two logits that depend only on the left half of the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, :, :, : W // 2].sum(dim=(1, 2, 3))
        return torch.stack([s, -s], dim=1) * 0.01


def _maps() -> torch.Tensor:
    left = torch.zeros(H, W)
    left[:, : W // 2] = 1
    return torch.stack([left, 1 - left, torch.ones(H, W)])


def test_non_sensitivity_by_hand():
    torch.manual_seed(0)
    image = torch.rand(3, H, W) + 0.5  # far from the black baseline: every left patch matters
    inp = MetricInputs(target=0, image=image, forward=LeftHalf(), params={"patch": 4}, batch_size=5)
    out = METRICS["non_sensitivity"].fn(inp, _maps())["non_sensitivity"]
    # left-only map: agrees everywhere; right-only map: disagrees everywhere; flat map: the
    # right half (model ignores it, map does not) is half of the patches
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64))


def test_monotonicity_and_faithfulness_on_a_linear_model():
    """On a linear model, the left-half map explains the model: revealing its pixels in increasing
    relevance raises the score (monotonic) and the correlation of relevance and drop is positive."""
    torch.manual_seed(0)
    image = torch.rand(3, H, W) + 0.5
    maps = _maps()[:1] + torch.rand(1, H, W) * 1e-3  # no ties
    inp = MetricInputs(target=0, image=image, forward=LeftHalf(), params={"pixels_per_step": 16, "score": "logit"})
    out = METRICS["monotonicity"].fn(inp, maps)
    assert out["monotonicity"].tolist() == [1.0]
    fc = METRICS["faithfulness_correlation"].fn(
        MetricInputs(target=0, image=image, forward=LeftHalf(), params={"nr_runs": 30, "subset_size": 40}), maps
    )["faithfulness_correlation"]
    assert float(fc[0]) > 0.9


def test_every_registration_is_complete_and_returns_its_keys():
    torch.manual_seed(0)
    model = LeftHalf()
    image = torch.rand(3, H, W)
    region = torch.zeros(H, W, dtype=torch.bool)
    region[2:9, 3:12] = True
    maps = torch.rand(2, H, W)

    def expl(x, t):
        return x.abs().mean(1) / x.abs().mean(1).amax(dim=(1, 2), keepdim=True)

    small = {"top_k_intersection": {"k": 20}, "monotonicity": {"pixels_per_step": 32},
             "non_sensitivity": {"patch": 8}, "faithfulness_correlation": {"subset_size": 20, "nr_runs": 5},
             "irof": {"slic": {"n_segments": 8}}}
    mine = [n for n, s in METRICS.items() if s.fn.__module__.split(".")[-1] in (
        "complexity", "localisation_masks", "faithfulness_extra", "robustness", "randomisation", "arcc", "axiomatic")]
    assert len(mine) == 19
    for name in mine:
        spec = METRICS[name]
        assert spec.category in CATEGORIES and spec.paper and spec.url.startswith("https://") and spec.equation
        inp = MetricInputs(target=0, image=image, forward=model, explainers=[expl, expl], region=region,
                           seed=1, batch_size=8, params=small.get(name, {}))
        out = spec.fn(inp, maps)
        assert set(out) == set(spec.keys), name
        for v in out.values():
            assert v.shape == (2,) and v.dtype == torch.float64, name
        again = spec.fn(inp, maps)  # seeded: the same values twice
        for k in out:
            torch.testing.assert_close(out[k], again[k], equal_nan=True)
        if spec.params:
            with pytest.raises(UsageError, match=name):
                spec.fn(MetricInputs(target=0, image=image, forward=model, params={"no_such": 1}), maps)


def test_model_metrics_refuse_without_a_model():
    with pytest.raises(UsageError, match="needs the model"):
        METRICS["infidelity"].fn(MetricInputs(target=0), torch.rand(1, H, W))
    with pytest.raises(UsageError, match="explainer"):
        METRICS["avg_sensitivity"].fn(MetricInputs(target=0, image=torch.rand(3, H, W), forward=LeftHalf()), torch.rand(2, H, W))


def test_costly_metrics_are_not_in_the_default_set():
    for name in ("avg_sensitivity", "max_sensitivity", "local_lipschitz", "relative_input_stability",
                 "relative_output_stability", "random_logit", "arcc", "irof", "faithfulness_correlation",
                 "infidelity", "monotonicity", "non_sensitivity"):
        assert METRICS[name].default is False
    for name in ("sparseness", "complexity", "relevance_mass"):
        assert METRICS[name].default is True


def test_readme_table_comes_from_the_registry() -> None:
    from pathlib import Path

    from camscope.metrics.registry import metrics_markdown

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    start = text.index("<!-- metrics-table")
    block = text[text.index("\n", start) + 1 : text.index("<!-- /metrics-table -->")].strip()
    assert block == metrics_markdown()
