"""camscope's registered metrics against Quantus 0.6 (and pytorch-grad-cam's ARCC) on the same
inputs: a tiny CNN, one 32x32 image, maps without ties, a rectangular region.

Where both define the metric the same way the values agree to 1e-6 (random draws are shared by
handing Quantus camscope's perturbations through its ``perturb_func``). Where a convention differs
the test says which and checks camscope against a hand computation instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import camscope.metrics  # noqa: F401  (registers the metrics)
from camscope.metrics.inputs import MetricInputs
from camscope.metrics.registry import METRICS

quantus = pytest.importorskip("quantus")

H = W = 32
TARGET = 2


class TinyNet(nn.Module):
    def __init__(self, classes: int = 5, channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        x = nn.functional.adaptive_avg_pool2d(x, 4)
        return self.fc(x.flatten(1))


def grad_x_input(model: nn.Module, x: torch.Tensor, targets) -> torch.Tensor:
    """A target-dependent explainer: |gradient x input| summed over channels, divided by its max."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(x)
        sel = out.gather(1, torch.as_tensor(list(targets)).view(-1, 1)).sum()
        (g,) = torch.autograd.grad(sel, x)
    a = (g * x).abs().sum(1).detach()
    return a / a.amax(dim=(1, 2), keepdim=True)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = TinyNet().eval()  # float32: Quantus' model wrapper feeds float32 tensors
    image = torch.randn(3, H, W)
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(2, H, W, generator=g, dtype=torch.float64) ** 2  # no ties
    region = torch.zeros(H, W, dtype=torch.bool)
    region[4:18, 10:27] = True

    def explainer(x, t):
        return grad_x_input(model, x, t)

    return model, image, maps, region, explainer


def run(name, setup, **params):
    model, image, maps, region, explainer = setup
    inp = MetricInputs(target=TARGET, image=image, forward=model, explainers=[explainer] * maps.shape[0],
                       region=region, seed=3, batch_size=7, params=params)
    return {k: v.cpu().numpy() for k, v in METRICS[name].fn(inp, maps).items()}


def q_arrays(setup):
    model, image, maps, region, _ = setup
    n = maps.shape[0]
    x = np.repeat(image.numpy()[None], n, axis=0)
    y = np.full(n, TARGET)
    a = maps.numpy()[:, None].copy()
    s = np.repeat(region.numpy()[None, None], n, axis=0).astype(float)
    return model, x, y, a, s


def q_call(metric, setup, **kw):
    model, x, y, a, s = q_arrays(setup)
    kw.setdefault("a_batch", a)
    return np.asarray(metric(model=model, x_batch=x, y_batch=y, s_batch=s, device="cpu", **kw), dtype=float)


# ---------------------------------------------------------------------------------------------
# maps alone


@pytest.mark.parametrize(("name", "cls", "kw"), [
    ("sparseness", "Sparseness", {}),
    ("complexity", "Complexity", {}),
    ("effective_complexity", "EffectiveComplexity", {"eps": 1e-5}),
])
def test_complexity_equals_quantus(setup, name, cls, kw):
    ours = run(name, setup, **kw)[name]
    theirs = q_call(getattr(quantus, cls)(disable_warnings=True, **kw), setup)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_effective_complexity_counts_by_hand(setup):
    _, _, maps, _, _ = setup
    m = maps[0] / maps[0].max()
    assert run("effective_complexity", setup, eps=0.5)["effective_complexity"][0] == int((m > 0.5).sum())


def test_sparseness_extremes():
    one_hot = torch.zeros(1, 8, 8, dtype=torch.float64)
    one_hot[0, 3, 4] = 1.0
    flat = torch.ones(1, 8, 8, dtype=torch.float64)
    inp = MetricInputs(target=0)
    g1 = float(METRICS["sparseness"].fn(inp, one_hot)["sparseness"][0])
    g0 = float(METRICS["sparseness"].fn(inp, flat)["sparseness"][0])
    assert g1 == pytest.approx((64 - 1) / 64, abs=1e-5)  # Gini of a one-hot vector: (n-1)/n
    assert g0 == pytest.approx(0.0, abs=1e-9)
    h = float(METRICS["complexity"].fn(inp, flat)["complexity"][0])
    assert h == pytest.approx(np.log(64), abs=1e-9)


# ---------------------------------------------------------------------------------------------
# localisation with a region


@pytest.mark.parametrize(("name", "cls", "kw", "qkw"), [
    ("relevance_mass", "RelevanceMassAccuracy", {}, {}),
    ("relevance_rank", "RelevanceRankAccuracy", {}, {}),
    ("top_k_intersection", "TopKIntersection", {"k": 100}, {"k": 100}),
    ("top_k_intersection", "TopKIntersection", {"k": 100, "concept_influence": True}, {"k": 100, "concept_influence": True}),
    ("attribution_localisation", "AttributionLocalisation", {}, {}),
])
def test_localisation_equals_quantus(setup, name, cls, kw, qkw):
    ours = run(name, setup, **kw)[name]
    theirs = q_call(getattr(quantus, cls)(disable_warnings=True, **qkw), setup)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_attribution_localisation_weighted_follows_the_paper(setup):
    """Quantus' weighted variant multiplies by S_in/S_tot with S_tot = x_batch[2:].size; Kohlbrenner
    et al. weight by S_tot/S_in (1 = chance): checked by hand."""
    _, _, maps, region, _ = setup
    out = run("attribution_localisation", setup)
    m = maps[0]
    mu = float((m * region).sum() / m.sum())
    assert out["attribution_localisation"][0] == pytest.approx(mu, abs=1e-12)
    assert out["attribution_localisation_weighted"][0] == pytest.approx(mu * H * W / int(region.sum()), abs=1e-12)


def test_localisation_without_region_is_nan(setup):
    model, image, maps, _, _ = setup
    inp = MetricInputs(target=0, region=torch.zeros(H, W, dtype=torch.bool))
    assert np.isnan(METRICS["relevance_mass"].fn(inp, maps)["relevance_mass"].numpy()).all()


# ---------------------------------------------------------------------------------------------
# robustness: Quantus gets camscope's perturbations through perturb_func


def _replay(noise: torch.Tensor):
    """A Quantus perturb_func returning x + noise[k] at its k-th call."""
    state = {"k": 0}
    flat = noise.reshape(noise.shape[0], -1).numpy()

    def perturb(arr, indices, **kwargs):
        out = arr + flat[state["k"]][None]
        state["k"] += 1
        return out

    return perturb


def _q_explain(model, inputs, targets, **kwargs):
    x = torch.as_tensor(inputs, dtype=torch.float32)
    return grad_x_input(model, x, [int(t) for t in np.atleast_1d(targets)]).numpy()[:, None]


def _noise(setup, kind, k, **p):
    from camscope.metrics.robustness import _noise as draw

    _, image, _, _, _ = setup
    inp = MetricInputs(target=TARGET, image=image, seed=3)
    return draw(inp, image, k, kind, p.get("low", 0.0), p.get("high"), p.get("std", 0.0))


def _q_single(metric, setup, noise_for_map):
    """Quantus on one map at a time (each call replays the same perturbations)."""
    model, x, y, a, s = q_arrays(setup)
    out = []
    for i in range(a.shape[0]):
        metric.perturb_func = _replay(noise_for_map)
        out.append(metric(model=model, x_batch=x[i : i + 1], y_batch=y[i : i + 1], a_batch=a[i : i + 1],
                          device="cpu", explain_func=_q_explain)[0])
    return np.asarray(out, dtype=float)


@pytest.mark.parametrize(("name", "cls"), [("avg_sensitivity", "AvgSensitivity"), ("max_sensitivity", "MaxSensitivity")])
def test_sensitivity_equals_quantus(setup, name, cls):
    k = 4
    ours = run(name, setup, nr_samples=k, lower_bound=0.2)[name]
    metric = getattr(quantus, cls)(nr_samples=k, lower_bound=0.2, disable_warnings=True)
    theirs = _q_single(metric, setup, _noise(setup, "uniform", k, low=0.2))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_local_lipschitz_equals_quantus(setup):
    k = 4
    ours = run("local_lipschitz", setup, nr_samples=k, perturb_std=0.1)["local_lipschitz"]
    metric = quantus.LocalLipschitzEstimate(nr_samples=k, perturb_std=0.1, disable_warnings=True)
    theirs = _q_single(metric, setup, _noise(setup, "gaussian", k, std=0.1))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_relative_input_stability_equals_quantus(setup):
    k = 4
    ours = run("relative_input_stability", setup, nr_samples=k)["relative_input_stability"]
    metric = quantus.RelativeInputStability(nr_samples=k, disable_warnings=True)
    theirs = _q_single(metric, setup, _noise(setup, "uniform", k, low=0.02, high=0.2))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_relative_output_stability_by_hand(setup):
    """Agarwal et al. divide by the *relative* change of the logits, ||(h_x - h_x')/h_x||; Quantus
    0.6 divides by the absolute change ||h_x - h_x'||. Hand computation of the paper's ratio."""
    model, image, maps, _, _ = setup
    k, eps = 4, 1e-6
    ours = run("relative_output_stability", setup, nr_samples=k)["relative_output_stability"]
    noise = _noise(setup, "uniform", k, low=0.02, high=0.2)
    with torch.no_grad():
        h = model(image[None]).double()[0]
    for m in range(2):
        e = maps[m].reshape(-1)
        best = -np.inf
        for n in noise:
            xp = (image + n)[None]
            with torch.no_grad():
                hp = model(xp).double()[0]
            if hp.argmax() != h.argmax():
                continue
            ep = grad_x_input(model, xp, [TARGET])[0].reshape(-1).double()
            num = float(((e - ep) / (e + (e == 0) * eps)).norm())
            den = float(((h - hp) / (h + (h == 0) * eps)).norm())
            best = max(best, num / max(den, eps))
        # The ratio divides by small relative changes of float32 logits: the model's rounding
        # (thread count, kernels) moves it by ~1e-6 relative, so 1e-5 here.
        assert ours[m] == pytest.approx(best, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# randomisation


def test_random_logit_with_two_classes():
    """With two classes the other class is forced, so the two RNGs cannot differ. camscope takes
    SSIM of the two 2-D maps (as Sixt et al. compare images); Quantus 0.6 takes SSIM of the
    flattened maps (a 1-D SSIM): each is checked against skimage on its own convention."""
    from skimage.metrics import structural_similarity
    torch.manual_seed(0)
    model = TinyNet(classes=2).eval()
    image = torch.randn(3, H, W)
    maps = grad_x_input(model, image[None], [1])

    def explainer(x, t):
        return grad_x_input(model, x, t)

    inp = MetricInputs(target=1, image=image, forward=model, explainers=[explainer], seed=0)
    ours = METRICS["random_logit"].fn(inp, maps)["random_logit"].numpy()
    theirs = quantus.RandomLogit(num_classes=2, disable_warnings=True, normalise=False)(
        model=model, x_batch=image.numpy()[None], y_batch=np.array([1]), a_batch=maps.numpy()[:, None],
        device="cpu", explain_func=_q_explain,
    )
    a, b = maps[0].double().numpy(), grad_x_input(model, image[None], [0])[0].double().numpy()
    rng = float(max(a.max(), b.max()) - min(a.min(), b.min()))
    assert ours[0] == pytest.approx(structural_similarity(a, b, data_range=rng), abs=1e-6)
    q_1d = structural_similarity(a.ravel(), b.ravel(), data_range=rng)
    assert float(np.asarray(theirs)[0]) == pytest.approx(q_1d, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# faithfulness: random subsets / noise differ from Quantus' (NumPy global RNG, per channel element)


def _scores(model, x):
    with torch.no_grad():
        return model(x)[:, TARGET]


def test_faithfulness_correlation_by_hand(setup):
    """Quantus draws channel elements from NumPy's global RNG; camscope draws pixels from its seed.
    Hand computation with camscope's draws: Pearson(sum of a over S, f(x) - f(x with S black))."""
    model, image, maps, _, _ = setup
    runs, size = 12, 50
    ours = run("faithfulness_correlation", setup, nr_runs=runs, subset_size=size)["faithfulness_correlation"]
    g = torch.Generator().manual_seed(3)
    subsets = torch.rand(runs, H * W, generator=g).argsort(dim=1)[:, :size]
    black = (0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    y = _scores(model, image[None])[0]
    for m in range(2):
        sums, drops = [], []
        for s in subsets:
            x = image.clone().reshape(3, -1)
            x[:, s] = black.view(3, 1)
            drops.append(float(y - _scores(model, x.reshape(1, 3, H, W))[0]))
            sums.append(float(maps[m].reshape(-1)[s].sum()))
        assert ours[m] == pytest.approx(np.corrcoef(sums, drops)[0, 1], abs=1e-5)  # float32 model


def test_monotonicity_by_hand(setup):
    """Quantus 0.6's Monotonicity fills x_baseline with the baseline and then 'reveals' features by
    writing the baseline again (never x's values), so every step sees the same image and every map
    is monotonic; camscope reveals the image's pixels (Arya et al.). Hand computation of the curve."""
    model, image, maps, _, _ = setup
    out = run("monotonicity", setup, pixels_per_step=128, baseline="min")
    base = torch.full_like(image, float(image.min()))
    for m in range(2):
        order = torch.argsort(maps[m].reshape(-1), stable=True)
        curve = []
        for k in range(128, H * W + 1, 128):
            shown = torch.zeros(H * W, dtype=torch.bool)
            shown[order[:k]] = True
            x = torch.where(shown.view(1, H, W), image, base)
            with torch.no_grad():
                curve.append(float(torch.softmax(model(x[None]), 1)[0, TARGET]))
        d = np.diff(curve) >= 0
        assert out["monotonicity"][m] == float(d.all())
        assert out["monotonicity_fraction"][m] == pytest.approx(d.mean(), abs=1e-12)
    # Quantus' version: always True, whatever the map (its convention, shown here).
    q = q_call(quantus.Monotonicity(features_in_step=128, disable_warnings=True), setup)
    assert q.all()


def test_irof_equals_quantus(setup, monkeypatch):
    """Quantus 0.6's IROF masks with a (B,1,H,W) segment mask that its perturb function refuses for
    3-channel inputs, so the comparison uses a 1-channel model. mean 0 / std 1 make camscope's
    pixel-space photo the tensor Quantus segments; Quantus is called per image (its "mean" baseline
    averages over the whole batch) and returns S times camscope's value. Quantus 0.6 calls
    np.trapz, gone in NumPy 2.4: given back here as np.trapezoid."""
    from skimage.segmentation import slic

    if not hasattr(np, "trapz"):
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)

    _, _, maps, _, _ = setup
    torch.manual_seed(0)
    model = TinyNet(channels=1).eval()
    g = torch.Generator().manual_seed(5)
    image = torch.rand(1, H, W, generator=g)
    seg = slic(image.permute(1, 2, 0).double().numpy(), start_label=0)
    n_seg = int(seg.max()) + 1
    assert n_seg > 3
    inp = MetricInputs(target=TARGET, image=image, forward=model, mean=(0,), std=(1,), batch_size=16)
    ours = METRICS["irof"].fn(inp, maps)["irof"].numpy()
    for m in range(2):
        theirs = quantus.IROF(disable_warnings=True, return_aggregate=False)(
            model=model, x_batch=image.numpy()[None], y_batch=np.array([TARGET]),
            a_batch=maps[m : m + 1, None].float().numpy(), device="cpu",
        )
        assert ours[m] * n_seg == pytest.approx(float(np.asarray(theirs)[0]), abs=1e-5)


def test_infidelity_by_hand(setup):
    """Yeh et al.'s Gaussian-noise infidelity with the optimal scale beta; Quantus 0.6 replaces
    square patches by a baseline instead. Hand computation with camscope's noise draws."""
    model, image, maps, _, _ = setup
    k, std = 9, 0.1
    ours = run("infidelity", setup, n_samples=k, noise_std=std)["infidelity"]
    raw = run("infidelity", setup, n_samples=k, noise_std=std, normalize=False)["infidelity"]
    g = torch.Generator().manual_seed(3)
    noise = torch.randn((k, 3, H, W), generator=g) * std
    y = _scores(model, image[None])[0]
    delta = np.array([float(y - _scores(model, (image - n)[None])[0]) for n in noise])
    for m in range(2):
        proj = np.array([float((n * maps[m]).sum()) for n in noise])
        beta = (proj * delta).mean() / (proj * proj).mean()
        assert ours[m] == pytest.approx(((beta * proj - delta) ** 2).mean(), rel=1e-5)
        assert raw[m] == pytest.approx(((proj - delta) ** 2).mean(), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# ARCC against pytorch-grad-cam


def test_arcc_equals_pytorch_grad_cam(setup, monkeypatch):
    """Same explainer as base method, imputation noise 0 in both (pytorch-grad-cam draws it from
    torch's global RNG); maps in [0, 1]."""
    pgc_arcc = pytest.importorskip("pytorch_grad_cam.metrics.arcc")
    from pytorch_grad_cam.metrics import road as pgc_road
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model_f, image, maps, _, _ = setup
    monkeypatch.setattr(pgc_road.NoisyLinearImputer.__init__, "__defaults__", (0.0, pgc_road.neighbors_weights))
    img32 = image.float()
    cams = (maps / maps.amax(dim=(1, 2), keepdim=True)).float()

    def base_method(input_tensor, targets):
        return grad_x_input(model_f, input_tensor, [TARGET] * input_tensor.shape[0]).numpy()

    x = img32[None].repeat(2, 1, 1, 1)
    targets = [ClassifierOutputSoftmaxTarget(TARGET)] * 2
    theirs = pgc_arcc.ARCC(base_method)(x, cams.numpy(), targets, model_f)

    def explain32(xx, t):
        return grad_x_input(model_f, xx, t)

    inp = MetricInputs(target=TARGET, image=img32, forward=model_f, explainers=[explain32] * 2, seed=0,
                       params={"noise": 0.0})
    ours = METRICS["arcc"].fn(inp, cams)
    np.testing.assert_allclose(ours["arcc_complexity"].numpy(), cams.reshape(2, -1).mean(1).numpy(), atol=1e-6)
    np.testing.assert_allclose(ours["arcc"].numpy(), np.asarray(theirs, dtype=float), atol=1e-5)
