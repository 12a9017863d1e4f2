"""The engine against naive references, batching, the hook path and smoothing.

- every registered method equals ``tests/reference.py`` (full model, one forward per
  channel, hooks) on resnet18 at 64x64 and on small CNNs, with and without dead channels;
- a batch of images gives the maps of one image at a time (top_k, smoothing included);
- the hook fallback gives the maps of the traced split;
- smoothing: variants, test-time augmentation (symmetry, flip equivariance, definition) and the
  sign of eigen smoothing.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from camscope.core.capture import capture
from camscope.core.postprocess import first_component, normalize
from camscope.core.runtime import Runtime, SpeedSettings
from camscope.core.smoothing import AUGMENTATIONS, parse_smoothing
from camscope.core.split import split_model
from camscope.engine import CamEngine, compute_cams
from camscope.errors import UsageError
from camscope.io.rundir import variant_name
from camscope.methods import get_method
from camscope.methods.registry import methods_for
from tests.reference import (
    CATALOGUE_TESTED,
    REFERENCE_WEIGHTS,
    layer_activations,
    reference_maps,
    reference_weights,
)

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = methods_for()  # the attention methods are tested in tests/methods/test_attention.py
#: Methods with a naive reference in tests/reference.py (the catalogue's are checked against the
#: libraries that ship them, tests/methods/test_catalogue.py).
REFERENCED = [m for m in METHODS if m in REFERENCE_WEIGHTS]
#: A map that depends on the image (not only on what the model sees): not flip-equivariant.
EQUIVARIANT = [m for m in METHODS if m != "random"]
PERTURBATION = [m for m in METHODS if REFERENCE_WEIGHTS.get(m) == "perturbation"]
NORM = ((0.5, 0.4, 0.3), (0.25, 0.2, 0.3))


def _assert_maps_close(got: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(got, expected, rtol=0, atol=atol)


def test_every_registered_method_has_a_reference() -> None:
    covered = set(REFERENCE_WEIGHTS) | set(CATALOGUE_TESTED)
    assert set(METHODS) <= covered, set(METHODS) - covered
    assert PERTURBATION  # ablation and score methods exist


# ------------------------------------------------------------------ fast == reference


@functools.cache
def _resnet18_dead(base: nn.Module) -> nn.Module:
    """resnet18 whose ``layer2`` output channels 0, 3, 6, ... are dead (a -1000 bias before
    the block's last ReLU)."""
    model = copy.deepcopy(base)
    with torch.no_grad():
        model.layer2[1].bn2.bias[::3] = -1000.0
    return model.eval()


def _check_against_reference(model, layer, x, method, dead=()) -> None:
    acts = layer_activations(model, layer, x)
    for ch in dead:
        assert torch.all(acts[:, ch] == 0), f"channel {ch} is not dead"
    engine = CamEngine(model, layer, methods=[method], speed=SpeedSettings(batch_size=32))
    res = engine(x)
    targets = res.targets[:, 0]
    expected = reference_maps(method, model, layer, x, targets, chunk=32)
    assert float(expected.amax()) == pytest.approx(1.0)
    _assert_maps_close(res.maps[method][:, 0], expected)
    if method in PERTURBATION:  # the weights themselves, dead channels included
        spec = get_method(method)
        split = split_model(model, layer)
        cap = capture(split, x, targets_of_view=[[int(t)] for t in targets], need_gradients=False)
        w = spec.fn(cap, Runtime(model, split, speed=SpeedSettings(batch_size=32)))
        ref = reference_weights(method, model, layer, x, targets, chunk=32)
        torch.testing.assert_close(w, ref, rtol=0, atol=2e-5 * float(ref.abs().max()))
        if dead and method != "scorecam-logit-softmax":
            assert torch.all(w[:, list(dead)] == 0)


@pytest.mark.parametrize("method", REFERENCED)
def test_resnet18_equals_reference(resnet18, images, method) -> None:
    """resnet18 at layer2 (128 channels; the tail runs layer3, layer4 and fc), a third of its
    channels made dead."""
    dead = tuple(range(0, 128, 3))
    _check_against_reference(_resnet18_dead(resnet18), "layer2", images(1, 48, seed=5), method, dead)


@pytest.mark.parametrize("method", REFERENCED)
@pytest.mark.parametrize("layer", ["block.conv2", "block.conv1"])
def test_inside_a_block_equals_reference(residual_cnn, images, method, layer) -> None:
    """Targets inside a residual block: the tail adds the carried skip connection."""
    _check_against_reference(residual_cnn, layer, images(2, 32, seed=6), method)


@pytest.mark.slow
@pytest.mark.parametrize("method", PERTURBATION)
@pytest.mark.parametrize("layer", ["layer4", "layer3.0.bn2"])
def test_resnet18_slow_layers_equal_reference(resnet18, images, method, layer) -> None:
    """The default layer (512 channels, 2x2) and a layer inside a block, without dead channels.

    In float64: at layer4 of a random resnet18, float32 rounding alone moves Ablation-CAM maps by
    ~1.3e-5 (512 nearly cancelling terms per logit)."""
    model = copy.deepcopy(resnet18).double()
    _check_against_reference(model, layer, images(1, 64, seed=7).double(), method)


@pytest.mark.parametrize("method", REFERENCED)
@pytest.mark.parametrize("head", ["gap", "flat"])
@pytest.mark.parametrize("dead", [(), (1, 4, 7)], ids=["alive", "dead"])
def test_small_cnn_equals_reference(make_tiny_cnn, images, method, head, dead) -> None:
    model = make_tiny_cnn(head=head, dead=dead)
    _check_against_reference(model, "features", images(2, 32, seed=2), method, dead)


# ------------------------------------------------------------------ batching


def _one_at_a_time(engine: CamEngine, x: torch.Tensor, **kw):
    results = [engine(x[i : i + 1], **kw) for i in range(x.shape[0])]
    maps = {k: torch.cat([r.maps[k] for r in results]) for k in results[0].maps}
    return (
        torch.cat([r.targets for r in results]),
        torch.cat([r.probabilities for r in results]),
        maps,
    )


def _check_batched(engine: CamEngine, x: torch.Tensor, **kw) -> None:
    res = engine(x, **kw)
    targets, probs, maps = _one_at_a_time(engine, x, **kw)
    assert torch.equal(res.targets, targets)
    torch.testing.assert_close(res.probabilities, probs, rtol=1e-5, atol=1e-7)
    assert set(res.maps) == set(maps) == set(engine.names)
    for name in maps:
        assert res.maps[name].shape == (x.shape[0], res.targets.shape[1], *x.shape[-2:])
        _assert_maps_close(res.maps[name], maps[name])


@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_one_at_a_time(tiny_cnn_dead, images, method) -> None:
    engine = CamEngine(
        tiny_cnn_dead, "features", methods=[method], smoothing=["eigen", "aug", "eigen,aug"],
        normalization=NORM, speed=SpeedSettings(batch_size=5),
    )
    x = images(3, 32, seed=3)
    _check_batched(engine, x, top_k=2)
    assert engine(x, top_k=2).targets.shape == (3, 2)


def test_batch_equals_one_at_a_time_explicit_targets(tiny_cnn, images) -> None:
    engine = CamEngine(tiny_cnn, "features", methods=METHODS, smoothing="aug", speed=SpeedSettings(batch_size=7))
    x = images(3, 32, seed=4)
    res = engine(x, targets=[[4, 0], [1, 2], [3, 3]])
    assert res.targets.tolist() == [[4, 0], [1, 2], [3, 3]]
    single = [engine(x[i : i + 1], targets=[t]) for i, t in enumerate([[4, 0], [1, 2], [3, 3]])]
    for name in engine.names:
        _assert_maps_close(res.maps[name], torch.cat([s.maps[name] for s in single]))


def test_batch_with_carry_equals_one_at_a_time(residual_cnn, images) -> None:
    """Inside a residual block the tail gathers each row's skip connection by image index."""
    engine = CamEngine(residual_cnn, "block.conv2", methods=METHODS, smoothing="eigen,aug", speed=SpeedSettings(batch_size=4))
    _check_batched(engine, images(3, 32, seed=8), top_k=2)


@pytest.mark.slow
def test_resnet18_batch_with_carry_equals_one_at_a_time(resnet18, images) -> None:
    """In float64: a random resnet18's logits are sums of 512 terms that nearly cancel, so float32
    rounding differences between batch sizes are amplified by Ablation-CAM's (y - y_k) / y and
    XGrad-CAM's division by sums of signed activations (up to 2e-4 on these maps)."""
    model = copy.deepcopy(resnet18).double()
    engine = CamEngine(model, "layer4.0.bn2", methods=["gradcam", "ablationcam", "xgradcam"])
    _check_batched(engine, images(3, 64, seed=8).double(), top_k=2)


# ------------------------------------------------------------------ hook fallback


@pytest.mark.parametrize("method", METHODS)
def test_hook_path_equals_traced(tiny_cnn_dead, images, method) -> None:
    x = images(2, 32, seed=9)
    kw = dict(methods=[method], smoothing="eigen,aug", speed=SpeedSettings(batch_size=4))
    traced = CamEngine(tiny_cnn_dead, "features", **kw)
    hooked = CamEngine(tiny_cnn_dead, "features", allow_trace=False, **kw)
    assert traced.split.traced and not hooked.split.traced
    a, b = traced(x, top_k=2), hooked(x, top_k=2)
    assert torch.equal(a.targets, b.targets)
    for name in traced.names:
        _assert_maps_close(a.maps[name], b.maps[name])


def test_hook_path_inside_block_equals_traced(residual_cnn, images) -> None:
    x = images(2, 32, seed=10)
    kw = dict(methods=METHODS, speed=SpeedSettings(batch_size=3))
    a = CamEngine(residual_cnn, "block.conv1", **kw)
    b = CamEngine(residual_cnn, "block.conv1", allow_trace=False, **kw)
    assert a.split.traced and not b.split.traced
    ra, rb = a(x, top_k=2), b(x, top_k=2)
    for name in a.names:
        _assert_maps_close(ra.maps[name], rb.maps[name])


# ------------------------------------------------------------------ results


def test_result_maps_are_normalised(tiny_cnn, images) -> None:
    res = compute_cams(tiny_cnn, images(2, 32), methods=METHODS, smoothing=["eigen,aug"], top_k=3)
    for name, maps in res.maps.items():
        assert maps.dtype == torch.float32 and maps.shape == (2, 3, 32, 32), name
        assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1, name
        flat = maps.flatten(2)
        assert torch.all((flat.amax(2) == 1) | (flat.amax(2) == 0)), name
    torch.testing.assert_close(res.probabilities.sum(1), torch.ones(2))
    assert set(res.seconds) == {"capture", *METHODS}


def test_engine_rejects_bad_arguments(tiny_cnn) -> None:
    with pytest.raises(UsageError, match="precision"):
        CamEngine(tiny_cnn, "features", speed=SpeedSettings(precision="fp8"))
    with pytest.raises(UsageError, match="batch size"):
        CamEngine(tiny_cnn, "features", speed=SpeedSettings(batch_size=0))
    with pytest.raises(UsageError, match="no method"):
        CamEngine(tiny_cnn, "features", methods=[])
    with pytest.raises(UsageError, match="nosuchcam"):
        CamEngine(tiny_cnn, "features", methods=["nosuchcam"])
    with pytest.raises(UsageError, match="layer9"):
        CamEngine(tiny_cnn, "layer9")
    with pytest.raises(UsageError, match="blur"):
        CamEngine(tiny_cnn, "features", smoothing="blur")


def test_non_spatial_layer_is_a_usage_error(tiny_cnn, images) -> None:
    """A layer whose output is not (N,C,h,w) (here the classifier) is reported as such."""
    with pytest.raises(UsageError, match="classifier"):
        CamEngine(tiny_cnn, "classifier", methods=["gradcam"])(images(1, 32))


def test_aliases_resolve(tiny_cnn, images) -> None:
    engine = CamEngine(tiny_cnn, "features", methods=["Grad-CAM++".replace("-", "").lower()])
    assert engine.names == ["gradcampp"]


# ------------------------------------------------------------------ smoothing


def test_parse_smoothing() -> None:
    def parts(specs):
        return [v.parts for v in parse_smoothing(specs)]

    assert parts(None) == [()]
    assert parts([]) == [()]
    assert parts("none") == [()]
    assert parts(["plain"]) == [()]
    assert parts("eigen") == [(), ("eigen",)]
    assert parts(["aug", "eigen"]) == [(), ("aug",), ("eigen",)]
    assert parts(["eigen,aug"]) == [(), ("eigen", "aug")]
    assert parts(["aug+eigen", " EIGEN , aug "]) == [(), ("eigen", "aug")]
    assert parts(["eigen", "eigen", "none,eigen"]) == [(), ("eigen",)]
    with pytest.raises(UsageError, match="blur") as info:
        parse_smoothing(["eigen,blur"])
    assert "eigen, aug" in str(info.value) and "\n" not in str(info.value)
    assert variant_name("gradcam", ()) == "gradcam"
    assert variant_name("gradcam", ("eigen", "aug")) == "gradcam+eigen+aug"


def test_engine_names_cover_every_variant(tiny_cnn) -> None:
    engine = CamEngine(tiny_cnn, "features", methods=["gradcam", "scorecam"], smoothing=["aug", "eigen,aug"])
    assert engine.names == [
        "gradcam", "scorecam", "gradcam+aug", "scorecam+aug", "gradcam+eigen+aug", "scorecam+eigen+aug",
    ]


def test_augmentations() -> None:
    assert AUGMENTATIONS[0].flip is False and AUGMENTATIONS[0].scale == 1.0
    assert {(a.flip, a.scale) for a in AUGMENTATIONS} == {(f, s) for f in (False, True) for s in (1.0, 0.9, 1.1)}
    x = torch.rand(2, 3, 4, 5)
    mean, std = NORM
    normed = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    for aug in AUGMENTATIONS:
        got = aug.apply(normed, NORM)
        pixels = (x.flip(-1) if aug.flip else x) * aug.scale
        want = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(aug.apply(x, None), (x.flip(-1) if aug.flip else x) * aug.scale)
        maps = torch.rand(2, 4, 5)
        torch.testing.assert_close(aug.invert(maps), maps.flip(-1) if aug.flip else maps)


def _symmetric_cnn(make_tiny_cnn) -> nn.Module:
    """TinyCNN with left-right symmetric kernels: flip-equivariant features, flip-invariant logits."""
    model = make_tiny_cnn(seed=11)
    with torch.no_grad():
        for conv in (model.features[0], model.features[3]):
            conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
    return model


@pytest.mark.parametrize("method", EQUIVARIANT)
def test_aug_map_of_symmetric_setup_is_symmetric(make_tiny_cnn, images, method) -> None:
    model = _symmetric_cnn(make_tiny_cnn)
    x = images(2, 32, seed=12)
    x = (x + x.flip(-1)) / 2
    res = CamEngine(model, "features", methods=[method], smoothing=["aug", "eigen,aug"])(x, top_k=2)
    for name in (f"{method}+aug", f"{method}+eigen+aug"):
        maps = res.maps[name]
        assert float(maps.amax()) == 1.0
        _assert_maps_close(maps, maps.flip(-1))


@pytest.mark.parametrize("method", EQUIVARIANT)
def test_aug_is_flip_equivariant(tiny_cnn, images, method) -> None:
    """The aug map of the mirrored image is the mirrored aug map (same views, same class)."""
    x = images(2, 32, seed=13)
    engine = CamEngine(tiny_cnn, "features", methods=[method], smoothing=["aug", "eigen,aug"], normalization=NORM)
    targets = [[1, 3], [0, 2]]
    a, b = engine(x, targets), engine(x.flip(-1), targets)
    for name in (f"{method}+aug", f"{method}+eigen+aug"):
        _assert_maps_close(b.maps[name], a.maps[name].flip(-1))
    # The plain maps are not flip-equivariant for this model: the test is not vacuous.
    assert (b.maps[method] - a.maps[method].flip(-1)).abs().max() > 0.05


@pytest.mark.parametrize("method", ["gradcam", "ablationcam", "scorecam"])
def test_aug_is_mean_of_inverted_view_maps(tiny_cnn, images, method) -> None:
    """Definition: aug map = normalise(mean over augmentations of the inverted view maps), every
    view explaining the class predicted on the original image."""
    x = images(2, 32, seed=14)
    res = CamEngine(tiny_cnn, "features", methods=[method], smoothing="aug", normalization=NORM)(x)
    plain = CamEngine(tiny_cnn, "features", methods=[method])
    targets = res.targets.tolist()
    views = [aug.invert(plain(aug.apply(x, NORM), targets).maps[method][:, 0]) for aug in AUGMENTATIONS]
    expected = normalize(torch.stack(views).mean(0))
    _assert_maps_close(res.maps[f"{method}+aug"][:, 0], expected)


def test_first_component_sign_follows_reference() -> None:
    g = torch.Generator().manual_seed(15)
    weighted = torch.randn(4, 6, 5, 5, generator=g)
    plain = weighted.sum(1)
    for ref in (plain, -plain, None):
        proj = first_component(weighted, reference=ref)
        r = (plain if ref is None else ref).flatten(1)
        corr = ((proj.flatten(1) - proj.flatten(1).mean(1, keepdim=True)) * (r - r.mean(1, keepdim=True))).sum(1)
        assert torch.all(corr > 0)
    torch.testing.assert_close(first_component(weighted, plain), -first_component(weighted, -plain))
    assert torch.equal(first_component(torch.zeros(1, 3, 4, 4)), torch.zeros(1, 4, 4))


@pytest.mark.parametrize("method", [m for m in REFERENCED if get_method(m).reduce == "sum"])
def test_eigen_smoothing_equals_reference(tiny_cnn_dead, images, method) -> None:
    """Eigen smoothing = first principal component of w*A with the sign of the plain map (the
    reference fixes the sign by its own correlation test)."""
    x = images(2, 32, seed=16)
    res = CamEngine(tiny_cnn_dead, "features", methods=[method], smoothing="eigen")(x)
    expected = reference_maps(method, tiny_cnn_dead, "features", x, res.targets[:, 0], eigen=True, chunk=16)
    _assert_maps_close(res.maps[f"{method}+eigen"][:, 0], expected)
