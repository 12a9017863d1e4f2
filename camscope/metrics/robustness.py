"""Robustness of a map to small input changes: Avg-/Max-Sensitivity, Local Lipschitz Estimate,
Relative Input / Output Stability.

Each draws ``nr_samples`` perturbed copies x' of the photo (from ``inputs.generator()``, in the
model's normalised input space), re-explains them with every map's own method
(``inputs.explainers``: one batched call of up to ``inputs.batch_size`` rows) and compares the new
maps with the saved ones. The same x' serve all M maps, so methods are compared on identical
perturbations. Costs: ``nr_samples`` explanations per map (Score-/Ablation-CAM explainers make
that expensive: none of these is in the default report set).
"""

from __future__ import annotations

import torch
from torch import Tensor

from camscope.errors import UsageError
from camscope.metrics._registered import explainers_of, flat, model_of, params_of, run_explainer
from camscope.metrics.inputs import MetricInputs
from camscope.metrics.registry import register_metric

__all__ = [
    "avg_sensitivity",
    "local_lipschitz_estimate",
    "max_sensitivity",
    "perturbed_explanations",
    "relative_input_stability",
    "relative_output_stability",
]


def _noise(inputs: MetricInputs, image: Tensor, k: int, kind: str, low: float, high: float | None, std: float) -> Tensor:
    """(k,3,H,W) noise: ``"uniform"`` U[-low, low] (or U[low, high] with ``high``), ``"gaussian"``
    N(0, std^2)."""
    g = inputs.generator()
    shape = (k, *image.shape)
    if kind == "uniform":
        a, b = (-low, low) if high is None else (low, high)
        return torch.rand(shape, generator=g, device=image.device, dtype=image.dtype) * (b - a) + a
    if kind == "gaussian":
        return torch.randn(shape, generator=g, device=image.device, dtype=image.dtype) * std
    raise UsageError(f"noise: expected 'uniform' or 'gaussian', got {kind!r}")


def perturbed_explanations(inputs: MetricInputs, maps: Tensor, noise: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """x' = image + noise (K,3,H,W) and every map's re-explanation of them (M,K,H*W) float64."""
    image, _ = model_of(inputs, name)
    explainers = explainers_of(inputs, maps.shape[0], name)
    x_pert = image.unsqueeze(0) + noise
    targets = [inputs.target] * x_pert.shape[0]
    a_pert = torch.stack([
        run_explainer(e, x_pert, targets, inputs.batch_size).reshape(x_pert.shape[0], -1) for e in explainers
    ])
    return x_pert, a_pert.to(image.device)


def _changed(inputs: MetricInputs, x_pert: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Logits of the photo (C,), of x' (K,C), and whether x' changes the top-1 class (K,)."""
    image, forward = model_of(inputs, "robustness")
    with torch.inference_mode():
        h = forward(image.unsqueeze(0)).to(torch.float64)[0]
        hp = torch.cat([forward(x_pert[i : i + inputs.batch_size]).to(torch.float64) for i in range(0, x_pert.shape[0], inputs.batch_size)])
    return h, hp, hp.argmax(dim=1) != h.argmax()


_SENS = {"nr_samples": 10, "lower_bound": 0.2}


def _sensitivities(inputs: MetricInputs, maps: Tensor, name: str) -> Tensor:
    p = params_of(inputs, _SENS, name)
    image, _ = model_of(inputs, name)
    noise = _noise(inputs, image, int(p["nr_samples"]), "uniform", float(p["lower_bound"]), None, 0.0)
    _, a_pert = perturbed_explanations(inputs, maps, noise, name)
    a = flat(maps).to(a_pert.device).unsqueeze(1)  # (M,1,N)
    den = a.norm(dim=2)  # (M,1)
    return torch.where(den > 0, (a - a_pert).norm(dim=2) / den, torch.nan)  # (M,K)


@register_metric(
    "avg_sensitivity", title="Avg-Sensitivity", category="robustness", direction="lower",
    paper="Yeh et al., NeurIPS 2019", url="https://arxiv.org/abs/1901.09392",
    equation="mean_{x' ~ U(x ± r)} ||a(x') - a(x)||_F / ||a(x)||_F",
    needs=("model", "explain"), cost="nr_samples explanations per map", params=_SENS, default=False,
)
def avg_sensitivity(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
    """Average relative change of the map under small uniform input noise: Yeh et al. 2019 ("On the (in)fidelity and sensitivity of explanations", NeurIPS, Def. 3.1),
    as Quantus 0.6: ||a(x') - a(x)||_F / ||a(x)||_F for x' = x + U[-r, r] noise (r = ``lower_bound``
    = 0.2), Monte-Carlo over ``nr_samples`` (Quantus' default: 200)."""
    return {"avg_sensitivity": _sensitivities(inputs, maps, "avg_sensitivity").mean(dim=1)}


@register_metric(
    "max_sensitivity", title="Max-Sensitivity", category="robustness", direction="lower",
    paper="Yeh et al., NeurIPS 2019", url="https://arxiv.org/abs/1901.09392",
    equation="max_{x' ~ U(x ± r)} ||a(x') - a(x)||_F / ||a(x)||_F",
    needs=("model", "explain"), cost="nr_samples explanations per map", params=_SENS, default=False,
)
def max_sensitivity(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
    """Largest relative change of the map under small uniform input noise: Yeh et al. 2019 ("On the (in)fidelity and sensitivity of explanations", NeurIPS, Def. 3.1),
    as Quantus 0.6: ||a(x') - a(x)||_F / ||a(x)||_F for x' = x + U[-r, r] noise (r = ``lower_bound``
    = 0.2), Monte-Carlo over ``nr_samples`` (Quantus' default: 200)."""
    return {"max_sensitivity": _sensitivities(inputs, maps, "max_sensitivity").amax(dim=1)}


_LLE = {"nr_samples": 10, "perturb_std": 0.1}


@register_metric(
    "local_lipschitz", title="Local Lipschitz Estimate", category="robustness", direction="lower",
    paper="Alvarez-Melis & Jaakkola, 2018", url="https://arxiv.org/abs/1806.08049",
    equation="max_{x' = x + N(0, s^2)} ||a(x) - a(x')||_2 / ||x - x'||_2  (a / max|a|)",
    needs=("model", "explain"), cost="nr_samples explanations per map", params=_LLE, default=False,
)
def local_lipschitz_estimate(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
    """Largest ratio of map change to input change over Gaussian perturbations (Alvarez-Melis &
    Jaakkola 2018, "On the robustness of interpretability methods", ICML WHI, eq. 1: the local
    Lipschitz constant, estimated by sampling; std 0.1 as Quantus). Both maps are divided by their
    maximum |value| first (Quantus' ``normalise=True``), both distances Euclidean."""
    p = params_of(inputs, _LLE, "local_lipschitz")
    image, _ = model_of(inputs, "local_lipschitz")
    noise = _noise(inputs, image, int(p["nr_samples"]), "gaussian", 0.0, None, float(p["perturb_std"]))
    _, a_pert = perturbed_explanations(inputs, maps, noise, "local_lipschitz")

    def norm_max(a: Tensor) -> Tensor:
        peak = a.abs().amax(dim=-1, keepdim=True)
        return a / torch.where(peak > 0, peak, torch.ones_like(peak))

    a = norm_max(flat(maps).to(a_pert.device)).unsqueeze(1)
    num = (a - norm_max(a_pert)).norm(dim=2)  # (M,K)
    den = noise.to(torch.float64).reshape(noise.shape[0], -1).norm(dim=1)  # (K,)
    return {"local_lipschitz": (num / (den + 1e-10)).amax(dim=1)}


_RS = {"nr_samples": 10, "lower_bound": 0.02, "upper_bound": 0.2, "eps_min": 1e-6}


def _relative_change(a: Tensor, b: Tensor, eps: float) -> Tensor:
    """|| (a - b) / a ||_2 over the last axis, a's zeros replaced by eps (Agarwal et al.)."""
    return ((a - b) / (a + (a == 0) * eps)).norm(dim=-1)


def _stability(inputs: MetricInputs, maps: Tensor, name: str, output: bool) -> Tensor:
    p = params_of(inputs, _RS, name)
    image, _ = model_of(inputs, name)
    eps = float(p["eps_min"])
    noise = _noise(inputs, image, int(p["nr_samples"]), "uniform", float(p["lower_bound"]), float(p["upper_bound"]), 0.0)
    x_pert, a_pert = perturbed_explanations(inputs, maps, noise, name)
    h, hp, changed = _changed(inputs, x_pert)
    num = _relative_change(flat(maps).to(a_pert.device).unsqueeze(1), a_pert, eps)  # (M,K)
    if output:
        den = _relative_change(h.unsqueeze(0), hp, eps)  # (K,)
    else:
        x = image.to(torch.float64).reshape(1, -1)
        den = _relative_change(x, x_pert.to(torch.float64).reshape(x_pert.shape[0], -1), eps)
    den = den + (den == 0) * eps
    ratio = (num / den).masked_fill(changed.view(1, -1), torch.nan)
    kept = ~torch.isnan(ratio)
    best = torch.where(kept, ratio, torch.full_like(ratio, -torch.inf)).amax(dim=1)
    return torch.where(kept.any(dim=1), best, torch.nan)


@register_metric(
    "relative_input_stability", title="Relative Input Stability", category="robustness",
    direction="lower", paper="Agarwal et al., 2022", url="https://arxiv.org/abs/2203.06877",
    equation="max_x' ||(a_x - a_x')/a_x||_2 / max(||(x - x')/x||_2, eps_min)",
    needs=("model", "explain"), cost="nr_samples explanations per map + nr_samples forwards",
    params=_RS, default=False,
)
def relative_input_stability(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
    """Largest relative map change per relative input change (RIS, eq. 2): Agarwal et al. 2022 ("Rethinking stability for attribution-based explanations"), as
    Quantus 0.6: perturbations U[0.02, 0.2] added to every input value; those that change the
    predicted class are left out (NaN if all do); zeros of the divisor are replaced by
    ``eps_min``. A CAM is zero on much of the image, so relative changes there are divided by
    ``eps_min`` and dominate: read the value as a ranking, not a scale."""
    return {"relative_input_stability": _stability(inputs, maps, "relative_input_stability", False)}


@register_metric(
    "relative_output_stability", title="Relative Output Stability", category="robustness",
    direction="lower", paper="Agarwal et al., 2022", url="https://arxiv.org/abs/2203.06877",
    equation="max_x' ||(a_x - a_x')/a_x||_2 / max(||(h_x - h_x')/h_x||_2, eps_min),  h = logits",
    needs=("model", "explain"), cost="nr_samples explanations per map + nr_samples forwards",
    params=_RS, default=False,
)
def relative_output_stability(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
    """Largest relative map change per relative change of the logits (ROS, eq. 4): Agarwal et al. 2022 ("Rethinking stability for attribution-based explanations"), as
    Quantus 0.6: perturbations U[0.02, 0.2] added to every input value; those that change the
    predicted class are left out (NaN if all do); zeros of the divisor are replaced by
    ``eps_min``. A CAM is zero on much of the image, so relative changes there are divided by
    ``eps_min`` and dominate: read the value as a ranking, not a scale."""
    return {"relative_output_stability": _stability(inputs, maps, "relative_output_stability", True)}
