"""Every registered method against maps computed by hand on tiny hand-built models.

The model: x (B,3,s,s) -> 1x1 conv with a fixed 0/1 matrix (optionally followed by 2x2 average
pooling) giving activations A with 4 channels: two live channels (copies of the input's first
two channels), a constant channel (the input's third channel is constant) and a dead channel
(all zeros) -> a "tail" that is a fixed linear map y = sum(V[c] * A) + b (a conv whose kernel
covers the whole map: with V[c,k] = W[c,k]/(h*w) it is global average pooling + linear).

Everything is linear, so gradients (dy_c/dA = V[c]), ablated scores (y_c - sum(V[c,k] A_k)) and
masked forwards (A(x*m) = A(x)*m without pooling) are written down with numpy below, without
camscope's postprocessing or reference module.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camscope.core.capture import capture
from camscope.core.runtime import Runtime, SpeedSettings
from camscope.core.split import split_model
from camscope.engine import CamEngine
from camscope.methods.registry import get_method, methods_for

pytestmark = pytest.mark.usefixtures("one_thread")

K, C = 4, 3
LIVE, CONST, DEAD = (0, 1), 2, 3
B_BIAS = np.array([0.5, -0.3, 0.2])
W_CLS = np.array([[2.0, -1.0, 0.5, 1.0], [-1.0, 3.0, 1.0, -2.0], [0.5, 0.5, -1.0, 1.0]])
# Input channel -> activation channel: A0 = x0, A1 = x1, A2 = x2 (constant), A3 = 0.
M_HEAD = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=np.float64)

A0 = [
    [[0, 1, 2, 0], [1, 3, 4, 1], [0, 2, 5, 1], [0, 0, 1, 0]],
    [[1, 0, 0, 2], [0, 0, 1, 3], [0, 1, 2, 1], [0, 0, 0, 4]],
]
A1 = [
    [[2, 0, 0, -1], [1, 0, -1, 0], [3, 1, 0, 0], [0, 0, 2, 1]],
    [[0, 2, 1, 0], [3, 1, 0, 0], [1, 0, -1, 2], [0, 1, 0, 0]],
]
X2 = [0.5, -0.25]  # value of the constant input channel, per image


def tail_weights(kind: str, h: int = 4, w: int = 4) -> np.ndarray:
    """V (C,K,h,w): "gap": W/(h*w) everywhere; "spatial": W * (1 + (i-j)/6) / (h*w)."""
    base = W_CLS[:, :, None, None] / (h * w)
    if kind == "gap":
        return np.broadcast_to(base, (C, K, h, w)).copy()
    i, j = np.mgrid[0:h, 0:w]
    return base * (1 + (i - j) / 6.0)


class HandModel(nn.Module):
    def __init__(self, v: np.ndarray, pool: int) -> None:
        super().__init__()
        conv = nn.Conv2d(3, K, 1, bias=False)
        tail = nn.Conv2d(K, C, kernel_size=v.shape[-2:])
        with torch.no_grad():
            conv.weight.copy_(torch.tensor(M_HEAD, dtype=torch.float32)[:, :, None, None])
            tail.weight.copy_(torch.tensor(v, dtype=torch.float32))
            tail.bias.copy_(torch.tensor(B_BIAS, dtype=torch.float32))
        layers: list[tuple[str, nn.Module]] = [("conv", conv)]
        if pool > 1:
            layers.append(("pool", nn.AvgPool2d(pool)))
        self.head = nn.Sequential(OrderedDict(layers))
        self.tail = tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.head(x)).flatten(1)


def hand_inputs(pool: int) -> np.ndarray:
    """Inputs (2,3,s,s). Without pooling, the first two channels ARE the activations."""
    if pool == 1:
        x = np.zeros((2, 3, 4, 4))
        x[:, 0], x[:, 1] = A0, A1
    else:
        rng = np.random.default_rng(3)
        x = rng.uniform(-1, 2, size=(2, 3, 4 * pool, 4 * pool))
    for i, v in enumerate(X2):
        x[i, 2] = v
    return x


# ------------------------------------------------------------------ the hand computations (numpy)


def np_pool(a: np.ndarray, pool: int) -> np.ndarray:
    """2-D average pooling over the last two axes."""
    if pool == 1:
        return a
    *lead, h, w = a.shape
    return a.reshape(*lead, h // pool, pool, w // pool, pool).mean(axis=(-3, -1))


def np_acts(x: np.ndarray, pool: int) -> np.ndarray:
    """A (K,h,w) of one input (3,H,W)."""
    return np_pool(np.einsum("kc,chw->khw", M_HEAD, x), pool)


def np_logits(x: np.ndarray, v: np.ndarray, pool: int) -> np.ndarray:
    return np.einsum("ckhw,khw->c", v, np_acts(x, pool)) + B_BIAS


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def upsample(a: np.ndarray, size: int, align_corners: bool = False) -> np.ndarray:
    """Bilinear upsampling of (h,w) to (size,size) (torch's interpolate, as the papers)."""
    if a.shape[-1] == size:
        return a
    t = torch.tensor(a, dtype=torch.float64)[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=align_corners)[0, 0].numpy()


def minmax(m: np.ndarray, eps: float = 0.0) -> np.ndarray:
    return (m - m.min()) / (m.max() - m.min() + eps)


def hand_weights(method: str, x: np.ndarray, v: np.ndarray, pool: int, c: int) -> np.ndarray:
    """Channel weights (K,) or element weights (K,h,w) of ``method`` for class ``c``."""
    a = np_acts(x, pool)
    g = v[c]  # dy_c / dA: the tail is linear
    size = x.shape[-1]
    if method == "gradcam":
        return g.mean(axis=(1, 2))
    if method == "gradcampp":
        s = a.sum(axis=(1, 2))[:, None, None]
        alpha = np.where(g != 0, 1.0 / (2.0 + s * g), 0.0)  # g^2 / (2 g^2 + s g^3)
        return (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    if method == "xgradcam":
        return (g * a).sum(axis=(1, 2)) / (a.sum(axis=(1, 2)) + 1e-7)
    if method == "hirescam":
        return g
    if method == "layercam":
        return np.maximum(g, 0)
    if method == "eigencam":
        return np.ones(K)
    if method == "ablationcam":
        y = np_logits(x, v, pool)[c]
        y_k = y - (v[c] * a).sum(axis=(1, 2))  # score with channel k set to zero
        return (y - y_k) / y
    if method == "scorecam":
        w = np.zeros(K)
        for k in range(K):
            up = upsample(a[k], size)
            if up.max() == up.min():
                continue  # constant channel: no mask, weight 0
            w[k] = np_softmax(np_logits(x * minmax(up), v, pool))[c]
        return w
    if method == "scorecam-logit-softmax":
        scores = np.array(
            [np_logits(x * minmax(upsample(a[k], size, True), 1e-8), v, pool)[c] for k in range(K)]
        )
        return np_softmax(scores)
    if method == "gradcam-elementwise":
        return g * (g * a > 0)
    if method == "eigengradcam":
        return g
    if method == "smoothgradcampp":  # linear model: the noisy gradients all equal g
        return hand_weights("gradcampp", x, v, pool, c)
    if method == "shapleycam":
        return (rest_gradient(x, v, pool, c) - 0.5 * rest_hvp(x, v, pool, c)).mean(axis=(1, 2))
    if method == "finercam":
        return finer_gradient(x, v, pool, c).mean(axis=(1, 2))
    if method == "iscam":
        return score_family_weights(x, v, pool, c, integrated=True)
    if method == "sscam":
        return score_family_weights(x, v, pool, c, integrated=False)
    raise KeyError(method)


# ------------------------------------------------------------------ catalogue methods (by hand)


def rest_gradient(x: np.ndarray, v: np.ndarray, pool: int, c: int) -> np.ndarray:
    """d/dA of the ReST score 2 y_c - logsumexp(y): 2 V_c - sum_j p_j V_j."""
    p = np_softmax(np_logits(x, v, pool))
    return 2 * v[c] - np.einsum("j,jkhw->khw", p, v)


def rest_hvp(x: np.ndarray, v: np.ndarray, pool: int, c: int) -> np.ndarray:
    """H A with H = -(sum_j p_j V_j V_j^T - m m^T), m = sum_j p_j V_j (the Hessian of -lse)."""
    a = np_acts(x, pool)
    p = np_softmax(np_logits(x, v, pool))
    m = np.einsum("j,jkhw->khw", p, v)
    va = np.einsum("jkhw,khw->j", v, a)
    return -(np.einsum("j,jkhw->khw", p * va, v) - m * (m * a).sum())


def finer_gradient(x: np.ndarray, v: np.ndarray, pool: int, c: int) -> np.ndarray:
    """d/dA of s = sum_J p_j (y_c - y_j) / (sum_J p_j + 1e-9), J: the (at most 3) other classes
    with the nearest logits, through the softmax too (dp_j/dy_i = p_j (d_ij - p_i))."""
    y = np_logits(x, v, pool)
    p = np_softmax(y)
    dist = np.abs(y - y[c])
    dist[c] = np.inf
    refs = list(np.argsort(dist, kind="stable")[: min(3, len(y) - 1)])
    jac = np.diag(p) - np.outer(p, p)  # jac[j, i] = dp_j / dy_i
    num = sum(p[j] * (y[c] - y[j]) for j in refs)
    den = sum(p[j] for j in refs) + 1e-9
    eye = np.eye(len(y))
    dnum = sum(jac[j] * (y[c] - y[j]) + p[j] * (eye[c] - eye[j]) for j in refs)
    dden = sum(jac[j] for j in refs)
    ds_dy = (dnum * den - num * dden) / den**2
    return np.einsum("i,ikhw->khw", ds_dy, v)


def unit_masks(a: np.ndarray, size: int) -> np.ndarray:
    """torch-cam's masks: min-max (1e-8 guard) at the layer's resolution, then upsampled."""
    out = []
    for ak in a:
        m = ak - ak.min()
        out.append(upsample(m / (m.max() + 1e-8), size))
    return np.stack(out)


def score_family_weights(x: np.ndarray, v: np.ndarray, pool: int, c: int, *, integrated: bool) -> np.ndarray:
    """softmax_k of the mean increase of y_c over N variations of X * M_k: IS-CAM scales the
    masked input by sum_{j<=i} j/N; SS-CAM adds N(0, 2^2) noise to the masks (the generator
    seeded with 0 for each image, one (K,H,W) draw per sample)."""
    from camscope.methods import score_family as sf

    size = x.shape[-1]
    masks = unit_masks(np_acts(x, pool), size)
    base = np_logits(x, v, pool)[c]
    acc = np.zeros(K)
    if integrated:
        coeff = 0.0
        for i in range(sf.IS_STEPS):
            coeff += (i + 1) / sf.IS_STEPS
            acc += [np_logits(coeff * (x * masks[k]), v, pool)[c] - base for k in range(K)]
        return np_softmax(acc / sf.IS_STEPS)
    gen = torch.Generator().manual_seed(sf.SEED)
    for _ in range(sf.SS_SAMPLES):
        noise = torch.normal(0.0, sf.SS_STD, size=masks.shape, generator=gen).double().numpy()
        acc += [np_logits(x * (masks[k] + noise[k]), v, pool)[c] - base for k in range(K)]
    return np_softmax(acc / sf.SS_SAMPLES)


def input_gradient(v: np.ndarray, pool: int, c: int) -> np.ndarray:
    """dy_c/dx (3,H,W): the model is linear (no ReLU, so guided = plain): M^T V_c, spread over
    each pooling window (average pooling's backward: 1/pool^2 per pixel)."""
    g = np.einsum("kc,khw->chw", M_HEAD, v[c]) / pool**2
    return np.repeat(np.repeat(g, pool, axis=1), pool, axis=2)


def psi(t: np.ndarray) -> np.ndarray:
    """FullGrad's psi per channel: |t| min-max scaled with pytorch-grad-cam's 1e-7 guard."""
    t = np.abs(t)
    t = t - t.min(axis=(-2, -1), keepdims=True)
    return t / (t.max(axis=(-2, -1), keepdims=True) + 1e-7)


def hand_raw_map(method: str, x: np.ndarray, v: np.ndarray, pool: int, c: int) -> np.ndarray:
    """The raw map (before ReLU / upsampling / normalisation) of an ``output="map"`` method."""
    a = np_acts(x, pool)
    size = x.shape[-1]
    if method == "kpcacam":
        flat = a.reshape(K, -1).T
        flat = flat - flat.mean(axis=0)
        n = flat.shape[0]
        kern = np.tanh(flat @ flat.T / K + 1.0)
        one = np.full((n, n), 1.0 / n)
        kc = kern - one @ kern - kern @ one + one @ kern @ one
        evals, evecs = np.linalg.eigh(kc)
        proj = evecs[:, -1] * np.sqrt(max(evals[-1], 0))
        ref = a.sum(axis=0).ravel()
        return (proj if proj @ (ref - ref.mean()) >= 0 else -proj).reshape(a.shape[1:])
    if method == "guidedbackprop":
        return np.abs(input_gradient(v, pool, c)).max(axis=0)
    if method == "guidedgradcam":
        return hand_map("gradcam", x, v, pool, c) * hand_raw_map("guidedbackprop", x, v, pool, c)
    if method == "fullgrad":  # the tail's bias map is 1x1: psi of it is 0
        return psi(input_gradient(v, pool, c) * x).sum(axis=0)
    if method == "layercam-fusion":  # one stage (the model has no earlier one)
        m = np.maximum((np.maximum(v[c], 0) * a).sum(axis=0), 0)
        m = m - m.min()
        return np.tanh(2.0 * m / (m.max() + 1e-8))
    if method == "refinecam":  # one stage: Grad-CAM++, [0,1], upsampled, [0,1] again
        w = hand_weights("gradcampp", x, v, pool, c)
        m = np.maximum((w[:, None, None] * a).sum(axis=0), 0)
        m = upsample((m - m.min()) / (m.max() - m.min() + 1e-7), size)
        return (m - m.min()) / (m.max() - m.min() + 1e-7)
    raise KeyError(method)


#: Registered methods without a hand formula here, and where they are tested instead.
NO_HAND_FORMULA = {"random": "tests/methods/test_catalogue.py::test_random_baseline_is_reproducible_and_uninformative"}
PCA_METHODS = ("eigencam", "eigengradcam")
#: Maps that are legitimately constant (blank) on the "gap" model: the input gradient does not
#: vary over positions there.
BLANK_ON_GAP = ("guidedbackprop",)
#: Scores compared with other classes (Finer-CAM) or with the cross-entropy (Shapley-CAM's ReST).
CONTRAST_METHODS = ("finercam", "shapleycam")


def hand_map(method: str, x: np.ndarray, v: np.ndarray, pool: int, c: int, eigen: bool = False) -> np.ndarray:
    if get_method(method).output == "map":
        return minmax_or_zero(upsample(np.maximum(hand_raw_map(method, x, v, pool, c), 0), x.shape[-1]))
    a = np_acts(x, pool)
    w = hand_weights(method, x, v, pool, c)
    wa = (w[:, None, None] if w.ndim == 1 else w) * a
    if method in PCA_METHODS or eigen:
        flat = wa.reshape(K, -1).T  # (hw, K)
        flat = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat, full_matrices=False)
        proj = flat @ vt[0]
        ref = wa.sum(axis=0).reshape(-1)
        sal = (proj if proj @ (ref - ref.mean()) >= 0 else -proj).reshape(a.shape[1:])
    else:
        sal = wa.sum(axis=0)
    return minmax(upsample(np.maximum(sal, 0), x.shape[-1]))


def minmax_or_zero(m: np.ndarray) -> np.ndarray:
    """Min-max to [0,1]; a map whose range is rounding noise is blank (as camscope's)."""
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 1e-6 * np.abs(m).max() else np.zeros_like(m)


def _setup(kind: str, pool: int):
    v = tail_weights(kind)
    x = hand_inputs(pool)
    return v, x, HandModel(v, pool).eval(), torch.tensor(x, dtype=torch.float32)


CASES = [("gap", 1), ("spatial", 1), ("spatial", 2)]


# ------------------------------------------------------------------ tests


def test_registry_methods_all_have_hand_formulas() -> None:
    """A newly registered method must get a hand formula here (the registry feeds the tests)."""
    x = hand_inputs(1)
    for name in methods_for():
        if name in NO_HAND_FORMULA:
            continue
        if get_method(name).output == "map":
            hand_raw_map(name, x[0], tail_weights("gap"), 1, 0)  # KeyError for a missing one
        else:
            hand_weights(name, x[0], tail_weights("gap"), 1, 0)


HAND_METHODS = [m for m in methods_for() if m not in NO_HAND_FORMULA]


@pytest.mark.parametrize("allow_trace", [True, False], ids=["traced", "hooks"])
@pytest.mark.parametrize("kind,pool", CASES)
@pytest.mark.parametrize("method", HAND_METHODS)
def test_maps_equal_hand_computation(method: str, kind: str, pool: int, allow_trace: bool) -> None:
    v, x, model, xt = _setup(kind, pool)
    engine = CamEngine(model, "head", methods=[method], speed=SpeedSettings(batch_size=3), allow_trace=allow_trace)
    res = engine(xt, targets=[[0, 1, 2]] * 2)
    maps = res.maps[method]
    assert maps.shape == (2, 3, *xt.shape[-2:]) and maps.dtype == torch.float32
    assert res.targets.tolist() == [[0, 1, 2]] * 2
    blank = 0
    for i in range(2):
        for c in range(C):
            expected = np.nan_to_num(hand_map(method, x[i], v, pool, c))
            if expected.max() != pytest.approx(1.0):  # a blank map (ReLU of a negative map)
                blank += 1
            np.testing.assert_allclose(maps[i, c].numpy(), expected, atol=1e-5, rtol=0)
    if method in BLANK_ON_GAP and kind == "gap":
        assert blank == 2 * C
    elif method in CONTRAST_METHODS:  # a contrast can be negative everywhere for some classes
        assert blank <= C
    else:
        assert blank == 0  # the hand maps are not degenerate


@pytest.mark.parametrize("kind,pool", CASES)
@pytest.mark.parametrize("method", HAND_METHODS)
def test_weights_equal_hand_computation(method: str, kind: str, pool: int) -> None:
    """The weights themselves (not only the normalised maps) equal the hand formulas."""
    v, x, model, xt = _setup(kind, pool)
    spec = get_method(method)
    split = split_model(model, "head")
    targets = [[0, 1, 2], [2, 0, 1]]
    cap = capture(split, xt, targets_of_view=targets, need_gradients=spec.needs_gradients)
    w = spec.fn(cap, Runtime(model, split, speed=SpeedSettings(batch_size=3))).double().numpy()
    rows = [(i, c) for i in range(2) for c in targets[i]]
    for r, (i, c) in enumerate(rows):
        if spec.output == "map":  # the raw map (before ReLU, upsampling, normalisation)
            expected = hand_raw_map(method, x[i], v, pool, c)
            np.testing.assert_allclose(w[r], expected, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(expected).max()))
        else:
            np.testing.assert_allclose(w[r], hand_weights(method, x[i], v, pool, c), rtol=1e-5, atol=1e-6)


def test_constant_and_dead_channels() -> None:
    """Score-CAM: constant and dead channels weigh 0; Ablation-CAM: a dead channel weighs 0
    (a constant one does not); logit-softmax Score-CAM: both get the zero-input score (= bias)."""
    v, x, model, xt = _setup("spatial", 1)
    split = split_model(model, "head")
    cap = capture(split, xt, targets_of_view=[[0], [1]], need_gradients=False)
    rt = Runtime(model, split, speed=SpeedSettings(batch_size=2))
    score = get_method("scorecam").fn(cap, rt)
    assert torch.all(score[:, [CONST, DEAD]] == 0)
    assert torch.all(score[:, list(LIVE)] > 0)
    abl = get_method("ablationcam").fn(cap, rt)
    assert torch.all(abl[:, DEAD] == 0)
    assert torch.all(abl[:, CONST] != 0)
    pgc = get_method("scorecam-logit-softmax").fn(cap, rt).double()
    for r, c in enumerate([0, 1]):
        # weight ratio of two channels = exp(score difference); the blank channels score b_c
        scores = [np_logits(x[r] * minmax(np_acts(x[r], 1)[k]), v, 1)[c] for k in LIVE]
        for k, s in zip(LIVE, scores, strict=True):
            ratio = float(pgc[r, k] / pgc[r, DEAD])
            assert ratio == pytest.approx(np.exp(s - B_BIAS[c]), rel=1e-5)
        assert float(pgc[r, CONST]) == pytest.approx(float(pgc[r, DEAD]), rel=1e-6)
        assert float(pgc[r].sum()) == pytest.approx(1.0, abs=1e-6)


def test_gradcam_gap_weights_are_class_weights_over_area() -> None:
    """The textbook case: GAP + linear, Grad-CAM weight = W[c,k] / (h*w) (CAM up to a factor)."""
    _, _, model, xt = _setup("gap", 1)
    split = split_model(model, "head")
    cap = capture(split, xt, targets_of_view=[[0, 1, 2]] * 2)
    w = get_method("gradcam").fn(cap, Runtime(model, split))
    expected = torch.tensor(W_CLS / 16, dtype=torch.float32).repeat(2, 1)
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-7)


def test_default_targets_are_top_predictions() -> None:
    v, x, model, xt = _setup("spatial", 1)
    res = CamEngine(model, "head", methods=["gradcam"])(xt, top_k=2)
    for i in range(2):
        logits = np_logits(x[i], v, 1)
        assert res.targets[i].tolist() == list(np.argsort(-logits)[:2])
        np.testing.assert_allclose(res.probabilities[i].numpy(), np_softmax(logits), rtol=1e-5)
        np.testing.assert_allclose(
            res.maps["gradcam"][i, 1].numpy(),
            hand_map("gradcam", x[i], v, 1, int(np.argsort(-logits)[1])),
            atol=1e-5,
        )


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "ablationcam"])
def test_eigen_smoothing_equals_hand_computation(method: str) -> None:
    """Eigen smoothing: first principal component of w*A, sign agreeing with the plain map."""
    v, x, model, xt = _setup("spatial", 1)
    res = CamEngine(model, "head", methods=[method], smoothing="eigen")(xt, targets=[[0, 1, 2]] * 2)
    for i in range(2):
        for c in range(C):
            expected = hand_map(method, x[i], v, 1, c, eigen=True)
            np.testing.assert_allclose(res.maps[f"{method}+eigen"][i, c].numpy(), expected, atol=1e-5)


def test_eigencam_sign_follows_channel_sum() -> None:
    """Flipping the sign of every activation flips the principal component; the map must follow
    the channel sum, so the wrong sign would give a visibly different map."""
    v, x, model, xt = _setup("gap", 1)
    res = CamEngine(model, "head", methods=["eigencam"])(xt, targets=[[0]] * 2)
    for i in range(2):
        a = np_acts(x[i], 1)
        flat = a.reshape(K, -1).T - a.reshape(K, -1).T.mean(axis=0)
        proj = flat @ np.linalg.svd(flat, full_matrices=False)[2][0]
        right = proj if proj @ (a.sum(0).ravel() - a.sum(0).mean()) >= 0 else -proj
        got = res.maps["eigencam"][i, 0].numpy().ravel()
        np.testing.assert_allclose(got, minmax(np.maximum(right, 0)), atol=1e-5)
        assert np.abs(got - minmax(np.maximum(-right, 0))).max() > 0.1
        assert np.corrcoef(got, a.sum(0).ravel())[0, 1] > 0


# pytorch-grad-cam (in the test extra; skipped where it is not installed) agrees where it
# implements the same formula; its Grad-CAM++ adds 1e-6 to the alpha denominator. Not compared:
# its Eigen-CAM (sign left to the SVD), Ablation-CAM (replaces signed channels by min - 1e7,
# not 0) and the official Score-CAM.
PGC = {
    "gradcam": ("GradCAM", 1e-5),
    "gradcampp": ("GradCAMPlusPlus", 1e-4),
    "xgradcam": ("XGradCAM", 1e-5),
    "hirescam": ("HiResCAM", 1e-5),
    "layercam": ("LayerCAM", 1e-5),
    "scorecam-logit-softmax": ("ScoreCAM", 1e-5),
}


@pytest.mark.parametrize("method", sorted(PGC))
def test_agrees_with_pytorch_grad_cam(method: str) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    name, atol = PGC[method]
    _, _, model, xt = _setup("spatial", 1)  # activations at input size: no resizing differences
    for c in range(C):
        with getattr(pgc, name)(model=model, target_layers=[model.head]) as cam:
            if hasattr(cam, "batch_size"):
                cam.batch_size = 4
            theirs = cam(input_tensor=xt, targets=[ClassifierOutputTarget(c)] * 2)
        ours = CamEngine(model, "head", methods=[method])(xt, targets=[[c]] * 2).maps[method][:, 0]
        np.testing.assert_allclose(ours.numpy(), theirs, atol=atol)
