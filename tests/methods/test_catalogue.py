"""The catalogue methods against the libraries that ship them, on the same model, layer and
target: pytorch-grad-cam (``pytorch_grad_cam``) and torch-cam (``torchcam``), both in the
``test`` extra. Hand-computed references on a linear model are in ``test_methods.py``.

Where a library resizes maps with OpenCV (pytorch-grad-cam), maps are compared at input size
(cv2's bilinear upsampling equals torch's ``align_corners=False``); torch-cam's maps are
compared at the layer's resolution, before any upsampling.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camscope.core.capture import capture
from camscope.core.input_gradients import full_gradients, guided_relu
from camscope.core.runtime import Runtime, SpeedSettings
from camscope.core.split import split_model
from camscope.engine import CamEngine
from camscope.methods import get_method
from camscope.methods.multilayer import stage_layers

pytestmark = pytest.mark.usefixtures("one_thread")


def _ours(model: nn.Module, layer: str, method: str, x: torch.Tensor, targets: list[int]) -> np.ndarray:
    res = CamEngine(model, layer, methods=[method])(x, targets=[[t] for t in targets])
    return res.maps[method][:, 0].numpy()


def _fn(model: nn.Module, layer: str, method: str, x: torch.Tensor, targets: list[int], **speed):
    """The method's raw output (weights or maps) and the capture it read."""
    split = split_model(model, layer)
    spec = get_method(method)
    cap = capture(split, x, targets_of_view=[[t] for t in targets], need_gradients=spec.needs_gradients)
    return spec.fn(cap, Runtime(model, split, SpeedSettings(**speed))), cap


def _pgc(cls_name: str, model: nn.Module, layers: list[nn.Module], x: torch.Tensor, targets, **kw) -> np.ndarray:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    tg = [t if not isinstance(t, int) else ClassifierOutputTarget(t) for t in targets]
    with getattr(pgc, cls_name)(model=model, target_layers=layers, **kw) as cam:
        return cam(input_tensor=x, targets=tg)


def _signed_pair(raw: torch.Tensor, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised maps of a raw projection and of its opposite (a principal component's sign)."""
    from camscope.core.postprocess import finalize

    return finalize(raw, (size, size)).numpy(), finalize(-raw, (size, size)).numpy()


# ------------------------------------------------------------------ capture-only variants


def test_gradcam_elementwise_equals_pgc(tiny_cnn, images) -> None:
    x = images(3, 32, seed=4)
    targets = [0, 3, 1]
    theirs = _pgc("GradCAMElementWise", tiny_cnn, [tiny_cnn.features], x, targets)
    np.testing.assert_allclose(_ours(tiny_cnn, "features", "gradcam-elementwise", x, targets), theirs, atol=1e-5)


@pytest.mark.parametrize("method,cls_name", [("eigengradcam", "EigenGradCAM"), ("kpcacam", "KPCA_CAM")])
def test_principal_component_methods_equal_pgc_up_to_sign(method: str, cls_name: str, tiny_cnn, images) -> None:
    """pytorch-grad-cam leaves the component's sign to the solver; camscope signs it to agree
    with the channel sum. Theirs must equal one of the two signed maps, ours the agreeing one."""
    x = images(3, 32, seed=5)
    targets = [2, 0, 4]
    theirs = _pgc(cls_name, tiny_cnn, [tiny_cnn.features], x, targets)
    ours = _ours(tiny_cnn, "features", method, x, targets)
    out, cap = _fn(tiny_cnn, "features", method, x, targets)
    if method == "eigengradcam":
        from camscope.core.postprocess import first_component

        wa = out * cap.activations
        raw = first_component(wa, reference=wa.sum(dim=1))
        terms = wa
    else:
        raw, terms = out, cap.activations
    plus, minus = _signed_pair(raw, 32)
    for i in range(3):
        assert min(np.abs(theirs[i] - plus[i]).max(), np.abs(theirs[i] - minus[i]).max()) < 1e-4
        np.testing.assert_allclose(ours[i], plus[i], atol=1e-6)
        r = raw[i].flatten().double()
        ref = terms[i].sum(dim=0).flatten().double()
        assert float((r - r.mean()) @ (ref - ref.mean())) >= 0


def test_kpca_projection_equals_sklearn(tiny_cnn, images) -> None:
    """The kernel projection itself (before ReLU) equals scikit-learn's KernelPCA up to sign."""
    sk = pytest.importorskip("sklearn.decomposition")
    out, cap = _fn(tiny_cnn, "features", "kpcacam", images(2, 32, seed=6), [0, 1])
    for i in range(2):
        a = cap.activations[i].double().numpy()
        flat = a.reshape(a.shape[0], -1).T
        flat = flat - flat.mean(axis=0)
        proj = sk.KernelPCA(n_components=1, kernel="sigmoid").fit_transform(flat)[:, 0]
        ours = out[i].double().numpy().ravel()
        assert min(np.abs(ours - proj).max(), np.abs(ours + proj).max()) < 1e-5 * np.abs(proj).max()


# ------------------------------------------------------------------ other scores through the tail


def test_shapleycam_equals_pgc_with_rest_target(residual_cnn, images) -> None:
    """Inside a residual block, so the tail is not linear; ReST target (the paper's)."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST

    x = images(2, 32, seed=7)
    targets = [1, 3]
    theirs = _pgc("ShapleyCAM", residual_cnn, [residual_cnn.block.conv1], x, [ClassifierOutputReST(t) for t in targets])
    ours = _ours(residual_cnn, "block.conv1", "shapleycam", x, targets)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # and the Hessian term matters here: Shapley-CAM is not Grad-CAM of the ReST score
    w, cap = _fn(residual_cnn, "block.conv1", "shapleycam", x, targets)
    from camscope.core.input_gradients import tail_gradients
    from camscope.methods.gradient_variants import _rest

    split = split_model(residual_cnn, "block.conv1")
    g, _ = tail_gradients(split, cap.view_activations, cap.carry, cap.view_index, cap.targets, _rest(cap.targets))
    assert float((w - g.mean(dim=(2, 3))).abs().max()) > 1e-3 * float(w.abs().max())


def test_finercam_equals_pgc(tiny_cnn, images) -> None:
    """pytorch-grad-cam's FinerCAM (the authors' code): main class = the top prediction,
    compared with the 3 classes whose logits are nearest, alpha = 1."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    x = images(3, 32, seed=8)
    with pgc.FinerCAM(tiny_cnn, [tiny_cnn.features]) as cam:
        theirs = cam(x)
    res = CamEngine(tiny_cnn, "features", methods=["finercam"])(x)
    np.testing.assert_allclose(res.maps["finercam"][:, 0].numpy(), theirs, atol=1e-5)


def test_finer_references_are_nearest_logits() -> None:
    from camscope.methods.gradient_variants import finer_references

    logits = torch.tensor([[5.0, 4.9, 1.0, 5.2, -3.0, 4.0]])
    assert finer_references(logits, torch.tensor([0])).tolist() == [[1, 3, 5]]
    assert finer_references(logits[:, :3], torch.tensor([2])).tolist() == [[1, 0]]


def _torchcam_cam(cls, model, layer, x, target, **kw) -> torch.Tensor:
    with cls(model, layer, input_shape=tuple(x.shape[1:]), **kw) as extractor:
        scores = model(x)
        return extractor(target, scores)[0]


def _low_res(weights: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    cam = torch.relu((weights[:, :, None, None] * acts).sum(dim=1))
    cam = cam - cam.amin(dim=(1, 2), keepdim=True)
    return cam / (cam.amax(dim=(1, 2), keepdim=True) + 1e-8)


def test_smoothgradcampp_equals_torchcam_for_one_sample(tiny_cnn, images, monkeypatch) -> None:
    """torch-cam puts the *last* noisy sample's gradient in the ReLU where the paper has the
    average (and weights the last noisy sample's activations, not the photo's): the weights
    agree for N = 1 (same noise: the same seeded generator)."""
    tc = pytest.importorskip("torchcam.methods")
    from camscope.methods import gradient_variants as gv

    x = images(1, 32, seed=9)
    monkeypatch.setattr(gv, "SMOOTH_SAMPLES", 1)
    w, cap = _fn(tiny_cnn, "features", "smoothgradcampp", x, [2])
    split = split_model(tiny_cnn, "features")
    w_eps = gv.smoothgradcampp_weights(cap, Runtime(tiny_cnn, split), samples=1, std=gv.SMOOTH_STD, eps=1e-8)
    torch.manual_seed(gv.SEED)
    with tc.SmoothGradCAMpp(tiny_cnn, "features", num_samples=1, std=gv.SMOOTH_STD, input_shape=(3, 32, 32)) as ex:
        scores = tiny_cnn(x)
        # the weights: torch-cam's map then multiplies them with the last *noisy* activations
        theirs = ex._get_weights(2, scores)[0]
    torch.testing.assert_close(w_eps, theirs, atol=1e-7, rtol=1e-5)
    # torch-cam's 1e-8 in alpha's denominator is the only difference (~1 % here)
    torch.testing.assert_close(w, theirs, atol=0, rtol=2e-2)


def test_smoothgradcampp_averages_noisy_gradients(tiny_cnn, images) -> None:
    """N = 4: the weights equal Grad-CAM++'s formula on D^n averaged over the same noisy inputs,
    computed here with hooks on the full model."""
    from camscope.methods import gradient_variants as gv

    x = images(2, 32, seed=10)
    w, cap = _fn(tiny_cnn, "features", "smoothgradcampp", x, [1, 4])
    gen = torch.Generator()
    ds = [0.0, 0.0, 0.0]
    for i in range(gv.SMOOTH_SAMPLES):
        noisy = []
        for v in range(2):
            gen.manual_seed(gv.SEED)
            draws = [torch.normal(0.0, gv.SMOOTH_STD, size=x.shape[1:], generator=gen) for _ in range(i + 1)]
            noisy.append(x[v] + draws[-1])
        fg = full_gradients(tiny_cnn, torch.stack(noisy), torch.arange(2), torch.tensor([1, 4]), modules=[tiny_cnn.features])
        g = fg.grads[0]
        ds = [ds[0] + g, ds[1] + g**2, ds[2] + g**3]
    d1, d2, d3 = (d / gv.SMOOTH_SAMPLES for d in ds)
    alpha = d2 / (2 * d2 + cap.activations.sum(dim=(2, 3), keepdim=True) * d3)
    alpha = torch.nan_to_num(alpha)
    torch.testing.assert_close(w, (alpha * torch.relu(d1)).sum(dim=(2, 3)), rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------ the Score-CAM family


@pytest.mark.parametrize("method,cls_name", [("sscam", "SSCAM"), ("iscam", "ISCAM")])
def test_score_family_equals_torchcam(method: str, cls_name: str, tiny_cnn, images, monkeypatch) -> None:
    tc = pytest.importorskip("torchcam.methods")
    from camscope.methods import score_family as sf

    monkeypatch.setattr(sf, "SS_SAMPLES", 6)
    monkeypatch.setattr(sf, "IS_STEPS", 5)
    x = images(1, 32, seed=11)
    w, cap = _fn(tiny_cnn, "features", method, x, [3], batch_size=5)
    torch.manual_seed(sf.SEED)
    kw = {"num_samples": 6} if method == "sscam" else {"num_samples": 5}
    theirs = _torchcam_cam(getattr(tc, cls_name), tiny_cnn, "features", x, 3, batch_size=7, **kw)
    torch.testing.assert_close(_low_res(w, cap.activations), theirs, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ several layers


def test_stage_layers(resnet18, make_tiny_cnn) -> None:
    x = torch.zeros(1, 3, 64, 64)
    assert stage_layers(resnet18, "layer4", x, (2, 2)) == ["layer3", "layer2", "layer1"]
    assert stage_layers(resnet18, "layer3", x, (4, 4)) == ["layer2", "layer1", "relu"]
    tiny = make_tiny_cnn()  # features: conv ReLU maxpool conv ReLU; 16x16 at 32
    assert stage_layers(tiny, "features", torch.zeros(1, 3, 32, 32), (16, 16)) == ["features.1"]
    assert not any(m._forward_hooks for m in resnet18.modules())


def test_layercam_fusion_equals_torchcam(resnet18, images) -> None:
    tc = pytest.importorskip("torchcam.methods")
    x = images(1, 64, seed=12)
    fused, _ = _fn(resnet18, "layer4", "layercam-fusion", x, [7])
    layers = ["layer4", "layer3", "layer2", "layer1"]
    with tc.LayerCAM(resnet18, layers, input_shape=(3, 64, 64)) as extractor:
        cams = extractor(7, resnet18(x))
        theirs = extractor.fuse_cams(cams)
    torch.testing.assert_close(fused, theirs, atol=1e-5, rtol=0)


def test_refinecam_equals_pgc(resnet18, images, monkeypatch) -> None:
    """With pytorch-grad-cam's 1e-6 in Grad-CAM++'s alpha denominator (which, on an untrained
    network's early stages, is larger than the g^2 terms: camscope's default is 0)."""
    from camscope.methods import multilayer

    monkeypatch.setattr(multilayer, "GRADCAMPP_EPS", 1e-6)
    x = images(2, 64, seed=13)
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    m = resnet18
    cam = pgc.RefineCAM(m, [m.layer4, m.layer3, m.layer2, m.layer1])
    try:  # no context manager: release its base CAMs' hooks by hand
        theirs = cam(x, [ClassifierOutputTarget(5), ClassifierOutputTarget(9)])
    finally:
        for base in cam.base_cam_per_layer:
            base.activations_and_grads.release()
    np.testing.assert_allclose(_ours(m, "layer4", "refinecam", x, [5, 9]), theirs, atol=1e-5)


# ------------------------------------------------------------------ pixel-level methods


def test_guided_backprop_equals_pgc(resnet18, images) -> None:
    """pytorch-grad-cam swaps the ReLU modules (on a copy here: it replaces them by new ones)."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    x = images(2, 64, seed=14)
    from camscope.methods.pixel import guided_gradients

    split = split_model(resnet18, "layer4")
    cap = capture(split, x, targets_of_view=[[3], [8]], need_gradients=False)
    ours = guided_gradients(cap, Runtime(resnet18, split))
    for i, t in enumerate([3, 8]):
        theirs = pgc.GuidedBackpropReLUModel(copy.deepcopy(resnet18), device="cpu")(x[i : i + 1].clone(), t)
        expected = torch.from_numpy(theirs).permute(2, 0, 1)
        torch.testing.assert_close(ours[i], expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
        # guided: differs from the plain gradient
        plain = full_gradients(resnet18, x, torch.tensor([i]), torch.tensor([t])).input[0]
        assert float((plain - ours[i]).abs().max()) > 0.1 * float(ours[i].abs().max())
    maps = _ours(resnet18, "layer4", "guidedbackprop", x, [3, 8])
    gb = ours.abs().amax(dim=1)
    expected_maps = (gb - gb.amin(dim=(1, 2), keepdim=True)) / (gb.amax(dim=(1, 2), keepdim=True) - gb.amin(dim=(1, 2), keepdim=True))
    np.testing.assert_allclose(maps, expected_maps.numpy(), atol=1e-6)


def test_guided_gradcam_is_gradcam_times_guided_backprop(resnet18, images) -> None:
    """Selvaraju et al. Sec. 3.1, as pytorch-grad-cam's example composes it."""
    x = images(1, 64, seed=15)
    gradcam = _pgc("GradCAM", resnet18, [resnet18.layer3], x, [4])[0]
    assert gradcam.max() > 0.99  # not a blank map
    from camscope.methods.pixel import guided_gradients

    split = split_model(resnet18, "layer3")
    cap = capture(split, x, targets_of_view=[[4]], need_gradients=True)
    gb = guided_gradients(cap, Runtime(resnet18, split))[0].abs().amax(dim=0).numpy()
    expected = gradcam * gb
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    np.testing.assert_allclose(_ours(resnet18, "layer3", "guidedgradcam", x, [4])[0], expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["batchnorm", "conv-bias"])
def test_fullgrad_equals_pgc(kind: str, resnet18, tiny_cnn, images) -> None:
    model, layer, size = (resnet18, "layer4", 64) if kind == "batchnorm" else (tiny_cnn, "features", 32)
    x = images(2, size, seed=16)
    with _quiet():
        theirs = _pgc("FullGrad", model, [], x, [1, 2])
    np.testing.assert_allclose(_ours(model, layer, "fullgrad", x, [1, 2]), theirs, atol=1e-5)


def _quiet():
    import contextlib
    import io

    return contextlib.redirect_stdout(io.StringIO())  # pytorch-grad-cam prints a warning


def test_fullgrad_refuses_models_without_bias_layers() -> None:
    from camscope.errors import UsageError

    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    with pytest.raises(UsageError, match="fullgrad.*biases.*methods that can: .*gradcam"):
        CamEngine(model, "1", methods=["fullgrad"], input_size=(8, 8))


# ------------------------------------------------------------------ the model is left as it was


class _Boom(Exception):
    pass


def _state(model: nn.Module) -> list:
    return [
        (name, type(m), len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for name, m in model.named_modules()
    ]


@pytest.mark.parametrize("method", ["guidedbackprop", "guidedgradcam", "fullgrad", "layercam-fusion", "refinecam"])
def test_whole_model_methods_leave_the_model_unchanged(method: str, make_tiny_cnn, images) -> None:
    model = make_tiny_cnn(seed=3)
    model.train()
    before = _state(model)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = images(2, 32, seed=17)
    ref = model.eval()(x).detach()
    model.train()
    CamEngine(model, "features", methods=[method])(x, top_k=2)
    assert _state(model) == before and model.training
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(model.eval()(x), ref, rtol=0, atol=0)


def test_no_hook_or_guided_relu_survives_an_exception(make_tiny_cnn, images) -> None:
    model = make_tiny_cnn(seed=4)
    before = _state(model)
    x = images(1, 32, seed=18)

    def boom(logits, targets):
        raise _Boom

    with pytest.raises(_Boom):
        full_gradients(model, x, torch.tensor([0]), torch.tensor([1]), modules=list(model.modules())[1:], guided=True, score=boom)
    assert _state(model) == before
    with pytest.raises(_Boom), guided_relu():
        raise _Boom
    # ReLU's backward is the ordinary one again: a negative upstream gradient passes
    z = torch.tensor([1.0, -1.0, 2.0], requires_grad=True)
    (g,) = torch.autograd.grad((F.relu(z) * torch.tensor([-3.0, 1.0, 1.0])).sum(), z)
    assert g.tolist() == [-3.0, 0.0, 1.0]


def test_guided_relu_rectifies_module_functional_and_inplace_relus() -> None:
    z = torch.tensor([1.0, -1.0, 2.0, 3.0], requires_grad=True)
    up = torch.tensor([-3.0, 1.0, 1.0, -2.0])
    for relu in (nn.ReLU(), nn.ReLU(inplace=True), F.relu, torch.relu, lambda t: t.relu()):
        with guided_relu():
            (g,) = torch.autograd.grad((relu(z * 1.0) * up).sum(), z)
        assert g.tolist() == [0.0, 0.0, 1.0, 0.0]


# ------------------------------------------------------------------ the random baseline


def test_random_baseline_is_reproducible_and_uninformative(tiny_cnn, images) -> None:
    x = images(3, 32, seed=19)
    a, _ = _fn(tiny_cnn, "features", "random", x, [0, 1, 2])
    b, _ = _fn(tiny_cnn, "features", "random", x[[2, 0]], [2, 0])  # other batch, other order
    torch.testing.assert_close(b, a[[2, 0]], rtol=0, atol=0)
    c, _ = _fn(tiny_cnn, "features", "random", x[:1], [3])  # same photo, other class
    assert not torch.equal(c[0], a[0])
    assert not torch.equal(a[0], a[1])
    assert a.shape == (3, 16, 16) and 0.0 <= float(a.min()) and float(a.max()) < 1.0
    # uniform on [0,1): mean 1/2, no correlation with the activations' channel sum
    big, cap = _fn(tiny_cnn, "features", "random", images(8, 32, seed=20), [0] * 8)
    assert abs(float(big.mean()) - 0.5) < 0.03
    s = cap.activations.sum(dim=1).flatten()
    r = big.flatten()
    corr = float(torch.corrcoef(torch.stack([s, r]))[0, 1])
    assert abs(corr) < 0.1


# ------------------------------------------------------------------ drawing pixel-level maps


def test_pixel_level_maps_are_drawn_as_pixels() -> None:
    """A pixel-level overlay leaves the photo where the map is 0 and shows a single pixel at
    full colour; the figure's panels follow the registry."""
    from PIL import Image

    from camscope.core.smoothing import Smoothing
    from camscope.render.comparison import figure_rows
    from camscope.render.draw import colorize, overlay

    photo = Image.fromarray(np.full((20, 20, 3), 90, dtype=np.uint8))
    sal = np.zeros((20, 20), dtype=np.float32)
    sal[5, 7] = 1.0
    out = np.asarray(overlay(photo, sal, alpha=0.5, pixel_level=True))
    assert (out[0, 0] == 90).all() and (out[19, 19] == 90).all()
    np.testing.assert_array_equal(out[5, 7], colorize(np.ones((1, 1)))[0, 0])
    plain = np.asarray(overlay(photo, sal, alpha=0.5))
    assert not (plain[0, 0] == 90).all()  # the usual overlay washes every pixel
    maps = {"gradcam": np.zeros((1, 4, 4)), "guidedbackprop": np.zeros((1, 4, 4))}
    rows = figure_rows(maps, 0, ["gradcam", "guidedbackprop"], [Smoothing.of(())], "x")
    assert [p.pixel_level for p in rows[0]] == [False, True]
