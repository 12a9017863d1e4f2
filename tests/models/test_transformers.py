"""Vision transformers and other non-CNN classifiers, all with random weights, nothing downloaded.

Models (tiny configurations of the same classes, so that Score-CAM's one forward per channel
stays cheap; the full-size torchvision models are checked where cheap and fully under ``slow``):
torchvision ``VisionTransformer`` and ``SwinTransformer``, timm ``VisionTransformer``, DeiT with
its distillation token (``VisionTransformerDistilled``), timm ``ConvNeXt``, and a Hugging Face
``ViTForImageClassification`` built from a ``ViTConfig`` behind camscope's adapter (which does not
trace with plain torch.fx: its split is the concrete-traced one, tests/models/test_hf_split.py). For each:

- the default layer is the per-architecture rule's, and the reshape it resolves to;
- the tail from the target layer equals the full model (traced and hook paths);
- every registered method gives finite, non-constant maps;
- Ablation-CAM's fast path (tails on ablated maps) equals the naive reference (a full forward
  per channel with a hook zeroing that feature in the layer's own layout), 1e-5;
- Grad-CAM equals pytorch-grad-cam's GradCAM with its ``reshape_transform`` (1e-5).

torchvision builds its ViTs with an all-zero head (every logit 0, every gradient 0, every
gradient map constant), so the tests give it a random head.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torchvision
from torch import Tensor, nn

from camscope.core.layers import default_layer
from camscope.core.runtime import SpeedSettings
from camscope.core.split import split_model
from camscope.engine import CamEngine
from camscope.methods.registry import methods_for
from tests.reference import reference_maps

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_head(model: nn.Module, linear: nn.Linear, seed: int = 0) -> nn.Module:
    with torch.no_grad():
        linear.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(seed))
        if linear.bias is not None:
            linear.bias.zero_()
    return model.eval()


def _tv_vit() -> nn.Module:
    m = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=24, mlp_dim=48, num_classes=5
    )
    return _random_head(m, m.heads.head)


def _tv_swin() -> nn.Module:
    m = torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[4, 4], num_classes=5
    )
    return _random_head(m, m.head)


def _timm_vit() -> nn.Module:
    timm = pytest.importorskip("timm")
    m = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=5
    )
    return _random_head(m, m.head)


def _timm_deit() -> nn.Module:
    timm = pytest.importorskip("timm")
    m = timm.models.deit.VisionTransformerDistilled(
        img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=5
    )
    _random_head(m, m.head, 0)
    return _random_head(m, m.head_dist, 1)


def _timm_convnext() -> nn.Module:
    timm = pytest.importorskip("timm")
    m = timm.models.convnext.ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=5)
    return _random_head(m, m.head.fc)


def _hf_vit() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    from camscope.models.hf_source import HuggingFaceClassifier

    cfg = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=48, num_labels=5,
    )
    hf = transformers.ViTForImageClassification(cfg)
    return _random_head(HuggingFaceClassifier(hf), hf.classifier)


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    size: int
    layer: str
    reshape: str
    traced: bool = True

    def grid(self) -> tuple[str, int, int, int]:
        """(kind, prefix tokens, h, w) parsed from ``reshape``."""
        if self.reshape.startswith("tokens:"):
            _, hw, skip = self.reshape.split(":")
            h, w = (int(v) for v in hw.split("x"))
            return "tokens", int(skip.split("=")[1]), h, w
        return self.reshape, 0, 0, 0


CASES = {
    "tv_vit": Case(_tv_vit, 32, "encoder.layers.encoder_layer_1.ln_1", "tokens:4x4:skip=1"),
    "tv_swin": Case(_tv_swin, 32, "features.3", "nhwc"),
    "timm_vit": Case(_timm_vit, 32, "blocks.1.norm1", "tokens:4x4:skip=1"),
    "timm_deit": Case(_timm_deit, 32, "blocks.1.norm1", "tokens:4x4:skip=2"),
    "timm_convnext": Case(_timm_convnext, 64, "stages.3", "none"),
    "hf_vit": Case(_hf_vit, 32, "hf.vit.layers.1.layernorm_before", "tokens:4x4:skip=1"),
}
NAMES = sorted(CASES)


@functools.cache
def _model(name: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return CASES[name].build()


def _x(name: str, b: int = 2, seed: int = 1) -> Tensor:
    s = CASES[name].size
    return torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(seed))


def _close(a: Tensor, b: Tensor, rtol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()) + 1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_default_layer_and_reshape(name: str) -> None:
    case, model = CASES[name], _model(name)
    size = (1, 3, case.size, case.size)
    assert default_layer(model, input_size=size) == case.layer
    engine = CamEngine(model, methods=["gradcam"], input_size=size)
    assert engine.layer == case.layer
    assert engine.resolve_reshape((case.size, case.size)).describe() == case.reshape
    assert engine.split.traced is case.traced


@pytest.mark.parametrize("name", NAMES)
def test_tail_equals_model(name: str) -> None:
    case, model = CASES[name], _model(name)
    x = _x(name)
    with torch.no_grad():
        ref = model(x)
        for allow_trace in (True, False) if case.traced else (False,):
            split = split_model(model, case.layer, allow_trace=allow_trace)
            maps, carry = split.head(x)
            kind, skip, h, w = case.grid()
            if kind == "tokens":
                assert maps.shape[-2:] == (h, w) and carry.kept is not None and carry.kept.shape[1] == skip
            _close(split.tail(maps, carry), ref)
            # one image broadcast to several modified rows: each row as its own tail run
            m1, c1 = split.head(x[:1])
            rows = m1.expand(3, -1, -1, -1) * torch.tensor([1.0, 0.5, 0.0])[:, None, None, None]
            expected = torch.cat([split.tail(rows[i : i + 1], c1) for i in range(3)])
            _close(split.tail(rows, c1), expected)
    assert all(not m._forward_hooks for m in model.modules())


#: IS-CAM's weights are a softmax (all positive) over channels of signed (norm) activations: on
#: the random ConvNeXt, the first image's map is negative everywhere, so blank after the ReLU;
#: torch-cam's ISCAM gives the same blank map for it.
BLANK_OK = {("timm_convnext", "iscam")}


@pytest.mark.parametrize("name", NAMES)
def test_every_method_gives_finite_nonconstant_maps(name: str) -> None:
    case, model = CASES[name], _model(name)
    x = _x(name)
    engine = CamEngine(model, methods=methods_for(model), speed=SpeedSettings(batch_size=16), input_size=x.shape)
    res = engine(x)
    for method, maps in res.maps.items():
        assert maps.shape == (2, 1, case.size, case.size), method
        assert torch.isfinite(maps).all(), method
        flat = maps.flatten(1)
        if (name, method) in BLANK_OK:  # blank (all 0) is the right answer there, not a bug
            assert bool((flat.amax(1) > flat.amin(1)).any()), f"{name} {method}: every map blank"
            continue
        assert bool((flat.amax(1) > flat.amin(1)).all()), f"{name} {method}: a constant map"


@pytest.mark.parametrize("name", NAMES)
def test_ablation_fast_equals_naive(name: str) -> None:
    case, model = CASES[name], _model(name)
    x = _x(name)
    targets = [1, 3]
    fast = CamEngine(model, case.layer, methods=["ablationcam"], speed=SpeedSettings(batch_size=16))(x, targets=[[t] for t in targets])
    naive = reference_maps("ablationcam", model, case.layer, x, targets, reshape="auto", chunk=16)
    np.testing.assert_allclose(fast.maps["ablationcam"][:, 0].numpy(), naive.numpy(), atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_equal_naive(name: str) -> None:
    """d y_c / d map from the tail equals the gradient w.r.t. the layer output of a plain full
    forward, read in the map's layout (the reference writes the token order out itself)."""
    from camscope.core.capture import capture
    from tests.reference import reference_gradients

    case, model = CASES[name], _model(name)
    x = _x(name)
    cap = capture(split_model(model, case.layer), x, targets_of_view=[[1], [2]])
    assert cap.gradients is not None
    _close(cap.gradients, reference_gradients(model, case.layer, x, [1, 2], reshape="auto"))


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
@pytest.mark.parametrize("name", ["tv_vit", "timm_deit", "tv_swin"])
def test_other_methods_equal_naive(name: str, method: str) -> None:
    case, model = CASES[name], _model(name)
    x = _x(name)
    fast = CamEngine(model, case.layer, methods=[method], speed=SpeedSettings(batch_size=16))(x, targets=[[0], [4]])
    naive = reference_maps(method, model, case.layer, x, [0, 4], reshape="auto", chunk=16)
    np.testing.assert_allclose(fast.maps[method][:, 0].numpy(), naive.numpy(), atol=1e-5)


def _pgc_reshape(case: Case) -> Callable[[Tensor], Tensor]:
    """pytorch-grad-cam's ``reshape_transform`` as its ViT/Swin tutorials write it."""
    kind, skip, h, w = case.grid()
    if kind == "tokens":
        return lambda t: t[:, skip:, :].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)
    if kind == "nhwc":
        return lambda t: t.permute(0, 3, 1, 2)
    return lambda t: t


@pytest.mark.parametrize("name", NAMES)
def test_gradcam_equals_pytorch_grad_cam(name: str) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    case, model = CASES[name], _model(name)
    x = _x(name)
    targets = [2, 0]
    with pgc.GradCAM(
        model=model, target_layers=[model.get_submodule(case.layer)], reshape_transform=_pgc_reshape(case)
    ) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    ours = CamEngine(model, case.layer, methods=["gradcam"])(x, targets=[[t] for t in targets])
    np.testing.assert_allclose(ours.maps["gradcam"][:, 0].numpy(), theirs, atol=1e-5)


# ----------------------------------------------------------------- the full-size torchvision models


@functools.cache
def _full(arch: str, **kw: object) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(weights=None, **kw)
    head = {"vit": lambda: model.heads.head, "max": lambda: model.classifier[-1]}.get(arch[:3], lambda: model.head)()
    return _random_head(model, head)


def test_vit_b_16_small_input() -> None:
    """vit_b_16 itself (built for 32x32 inputs: 2x2 patches + the class token): default layer,
    reshape, tail == model, Grad-CAM == pytorch-grad-cam."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _full("vit_b_16", image_size=32)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    engine = CamEngine(model, methods=["gradcam"])
    assert engine.layer == "encoder.layers.encoder_layer_11.ln_1"
    assert engine.resolve_reshape((32, 32)).describe() == "tokens:2x2:skip=1"
    with torch.no_grad():
        _close(engine.split.forward(x), model(x), rtol=1e-4)
    with pgc.GradCAM(
        model=model, target_layers=[model.encoder.layers[-1].ln_1],
        reshape_transform=lambda t: t[:, 1:].reshape(t.shape[0], 2, 2, t.shape[2]).permute(0, 3, 1, 2),
    ) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(7), ClassifierOutputTarget(9)])
    ours = engine(x, targets=[[7], [9]]).maps["gradcam"][:, 0]
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5)


def test_swin_t_small_input() -> None:
    """swin_t itself on 64x64 inputs: the last stage, channels-last (2x2), tail == model."""
    model = _full("swin_t")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    engine = CamEngine(model, methods=["gradcam", "eigencam"], input_size=(64, 64))
    assert engine.layer == "features.7"
    assert engine.resolve_reshape((64, 64)).describe() == "nhwc"
    with torch.no_grad():
        _close(engine.split.forward(x), model(x), rtol=1e-4)
    res = engine(x)
    assert all(bool(torch.isfinite(m).all()) for m in res.maps.values())


@pytest.mark.slow
@pytest.mark.parametrize("arch,layer,reshape", [
    ("vit_b_16", "encoder.layers.encoder_layer_11.ln_1", "tokens:14x14:skip=1"),
    ("swin_t", "features.7", "nhwc"),
    ("maxvit_t", "blocks.3", "none"),
])  # fmt: skip
def test_full_size_at_224(arch: str, layer: str, reshape: str) -> None:
    """The torchvision models at 224x224: default layer, reshape, tail == model, Grad-CAM,
    Ablation-CAM and Eigen-CAM finite, Grad-CAM and Eigen-CAM non-constant (fast == naive is
    checked above on small configurations of the same classes: the naive Ablation-CAM of
    vit_b_16 is 768 full forwards)."""
    model = _full(arch)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    engine = CamEngine(model, methods=["gradcam", "ablationcam", "eigencam"])
    assert engine.layer == layer
    assert engine.resolve_reshape((224, 224)).describe() == reshape
    with torch.no_grad():
        _close(engine.split.forward(x), model(x), rtol=1e-4)
    res = engine(x)  # the predicted class
    for method, maps in res.maps.items():
        flat = maps.flatten(1)
        assert torch.isfinite(maps).all(), method
        # (random maxvit_t: Ablation-CAM's weighted sum is negative everywhere, so its ReLU'd
        # map is blank; the weights themselves equal per-channel full forwards)
        if method != "ablationcam":
            assert bool((flat.amax(1) > flat.amin(1)).all()), method
