"""Segmenters and detectors (torchvision, random weights): equal to pytorch-grad-cam with its
SemanticSegmentationTarget / FasterRCNNBoxScoreTarget, fast == naive for Ablation-CAM and
Score-CAM, every image of a batch its own map, zero detections, default layers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camscope.engine import CamEngine
from camscope.errors import UsageError
from camscope.targets import Detection, SegmentRegion, Target, Task
from tests.cli import task_models
from tests.reference import reference_finalize, reference_saliency

torchvision = pytest.importorskip("torchvision")

# --------------------------------------------------------------------------- models


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build().eval()


def deeplab() -> nn.Module:
    return _seeded(lambda: torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=3))


def fcn() -> nn.Module:
    return _seeded(lambda: torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=3))


def small_fcn() -> nn.Module:
    """torchvision's FCN on a 2-conv backbone (16 channels at stride 4): one full forward per
    channel is cheap."""
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    def build() -> nn.Module:
        trunk = nn.Sequential()
        trunk.add_module("conv1", nn.Conv2d(3, 8, 3, 2, 1))
        trunk.add_module("relu1", nn.ReLU())
        trunk.add_module("conv2", nn.Conv2d(8, 16, 3, 2, 1))
        trunk.add_module("stage", nn.ReLU())
        return FCN(IntermediateLayerGetter(trunk, {"stage": "out"}), FCNHead(16, 3))

    return _seeded(build)


def faster_rcnn() -> nn.Module:
    """Faster R-CNN (ResNet-18 FPN) with random weights: every box scored, small inputs."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    return _seeded(lambda: FasterRCNN(
        resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5), num_classes=3,
        min_size=64, max_size=96, box_score_thresh=0.0, rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=30, box_detections_per_img=20,
    ))


tiny_rcnn = task_models.tiny_rcnn  # Faster R-CNN on a 3-conv backbone: one full forward per channel is cheap


def images(n: int, h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g)


# --------------------------------------------------------------------------- pytorch-grad-cam


@pytest.fixture()
def pgc_at_our_resolution(monkeypatch: pytest.MonkeyPatch) -> Any:
    """pytorch-grad-cam with its last step (min-max, then cv2 resize) replaced by the reference
    finalisation (resize, then min-max) camscope uses, so the maps compare to 1e-5: what is
    compared is everything before, the target's score, gradients and weights."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    import pytorch_grad_cam.base_cam as base_cam

    def scale(cam: np.ndarray, target_size: Any = None) -> np.ndarray:
        if target_size is None:  # aggregation of one layer: already final
            return np.float32(cam)
        w, h = target_size
        return reference_finalize(torch.from_numpy(np.float32(cam)), (h, w)).numpy()

    monkeypatch.setattr(base_cam, "scale_cam_image", scale)
    return pgc


class Out(nn.Module):
    """The tutorial's wrapper: pytorch-grad-cam needs the segmenter's ``out`` tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


PGC_METHODS = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "hirescam": "HiResCAM"}


@pytest.mark.parametrize("build", [deeplab, fcn], ids=["deeplabv3", "fcn"])
def test_segmentation_equals_pytorch_grad_cam(build: Callable[[], nn.Module], pgc_at_our_resolution: Any) -> None:
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    pgc = pgc_at_our_resolution
    model = build()
    x = images(2, 32, 32, seed=1)
    engine = CamEngine(model, None, methods=list(PGC_METHODS))
    assert engine.layer == "backbone.layer4"
    ours = engine(x, task="segment")
    assert ours.task == "segment"
    with torch.no_grad():
        pred = model(x)["out"].argmax(dim=1)
    targets = []
    for i, (t,) in enumerate(ours.explained):  # default: the most common non-background class
        assert isinstance(t, SegmentRegion) and t.region == "predicted"
        mask = (pred[i] == t.label).float()
        assert torch.equal(t.mask, mask)
        targets.append(SemanticSegmentationTarget(t.label, mask.numpy()))
    wrapped = Out(model).eval()
    for name, cls in PGC_METHODS.items():
        with getattr(pgc, cls)(model=wrapped, target_layers=[model.backbone.layer4]) as cam:
            theirs = cam(input_tensor=x, targets=targets)
        _compare(name, ours.maps[name][:, 0], theirs, model, "backbone.layer4", x, [ts[0] for ts in ours.explained])


def _compare(name: str, ours: torch.Tensor, theirs: np.ndarray, model: nn.Module, layer: str, x: torch.Tensor,
             targets: list[Target]) -> None:
    """Equal to 1e-5; for Grad-CAM++, whose pytorch-grad-cam version adds 1e-6 to the alpha
    denominator (which moves maps by up to ~1e-3 when gradients are small), pytorch-grad-cam is
    checked against the paper's formula *with that 1e-6* on camscope's gradients (to 2e-5: the
    cubed gradients of the detector's separate forward round differently, measured 1.04e-5 at
    4 of 2048 pixels), and camscope against the formula without it (to 1e-5)."""
    if name != "gradcampp":
        np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5, err_msg=name)
        return
    from camscope.core.capture import capture
    from camscope.core.split import split_model

    cap = capture(split_model(model, layer), x, resolve=lambda out: [[t] for t in targets])
    g, a = cap.gradients, cap.activations  # float32, as pytorch-grad-cam computes
    for eps, want, atol in ((1e-6, theirs, 2e-5), (0.0, ours.numpy(), 1e-5)):
        g2 = g * g
        alpha = g2 / (2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g + eps)
        alpha = torch.where(g2 != 0, alpha, 0)
        w = (alpha * torch.relu(g)).sum(dim=(2, 3))
        expected = reference_finalize(reference_saliency(w.float(), a.float()), x.shape[-2:])
        np.testing.assert_allclose(want, expected.numpy(), atol=atol, err_msg=f"gradcampp eps={eps}")


def test_faster_rcnn_equals_pytorch_grad_cam(pgc_at_our_resolution: Any) -> None:
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    pgc = pgc_at_our_resolution
    model = faster_rcnn()
    x = images(2, 64, 80, seed=2)
    engine = CamEngine(model, None, methods=list(PGC_METHODS))
    assert engine.layer == "backbone.body.layer4" and not engine.split.traced
    ours = engine(x, task=Task("detect", score_threshold=0.0), top_k=2)
    assert ours.task == "detect" and [len(t) for t in ours.explained] == [2, 2]
    for rank in range(2):
        targets = []
        for ts in ours.explained:
            t = ts[rank]
            assert isinstance(t, Detection)
            targets.append(FasterRCNNBoxScoreTarget([t.label], [t.box.numpy()]))
        for name, cls in PGC_METHODS.items():
            with getattr(pgc, cls)(model=model, target_layers=[model.backbone.body.layer4]) as cam:
                theirs = cam(input_tensor=x, targets=targets)
            _compare(name, ours.maps[name][:, rank], theirs, model, "backbone.body.layer4", x,
                     [ts[rank] for ts in ours.explained])
    # the score of a detection explained with its own box: IoU 1 + its class score
    for i, ts in enumerate(ours.explained):
        for j, t in enumerate(ts):
            assert float(ours.scores[i, j]) == pytest.approx(1.0 + t.detected_score, abs=1e-5)


# --------------------------------------------------------------------------- fast == naive


def _layer_output(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    kept: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: kept.append(o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return kept[-1]


def naive_ablation(model: nn.Module, layer: nn.Module, x1: torch.Tensor, target: Target) -> torch.Tensor:
    """(y - y_k) / y with channel k of the layer zeroed, one full forward per channel."""
    idx = torch.tensor([0])
    with torch.no_grad():
        y = float(target.score(model(x1), idx)[0])
    k = _layer_output(model, layer, x1).shape[1]
    w = torch.zeros(k)
    for ch in range(k):
        def zero(m: nn.Module, i: Any, o: torch.Tensor, ch: int = ch) -> torch.Tensor:
            o = o.clone()
            o[:, ch] = 0
            return o

        handle = layer.register_forward_hook(zero)
        try:
            with torch.no_grad():
                w[ch] = (y - float(target.score(model(x1), idx)[0])) / y
        finally:
            handle.remove()
    return w


def naive_scorecam(model: nn.Module, layer: nn.Module, x1: torch.Tensor, target: Target) -> torch.Tensor:
    """Official Score-CAM: the target's probability for x * minmax(up(A_k)), one forward per
    non-constant channel (constant channels: 0)."""
    acts = _layer_output(model, layer, x1)[0]
    w = torch.zeros(acts.shape[0])
    idx = torch.tensor([0])
    for ch in range(acts.shape[0]):
        up = F.interpolate(acts[None, ch : ch + 1], size=x1.shape[-2:], mode="bilinear", align_corners=False)
        if up.max() == up.min():
            continue
        mask = (up - up.min()) / (up.max() - up.min())
        with torch.no_grad():
            w[ch] = float(target.probability(model(x1 * mask), idx)[0])
    return w


def _naive_maps(naive: Callable[..., torch.Tensor], model: nn.Module, layer: nn.Module, x: torch.Tensor,
                explained: list[list[Target]]) -> torch.Tensor:
    out = []
    for i, ts in enumerate(explained):
        acts = _layer_output(model, layer, x[i : i + 1])
        row = []
        for t in ts:
            w = naive(model, layer, x[i : i + 1], t)[None]
            row.append(reference_finalize(reference_saliency(w, acts), x.shape[-2:])[0])
        out.append(torch.stack(row))
    return torch.stack(out)


@pytest.mark.parametrize("method,naive", [("ablationcam", naive_ablation), ("scorecam", naive_scorecam)])
def test_perturbation_fast_equals_naive_on_a_segmenter(method: str, naive: Callable[..., torch.Tensor]) -> None:
    model = small_fcn()
    x = images(2, seed=3)
    engine = CamEngine(model, None, methods=[method])
    assert engine.layer == "backbone.stage"  # the backbone's last stage
    res = engine(x, task="segment")
    assert all(isinstance(t, SegmentRegion) for ts in res.explained for t in ts)
    expected = _naive_maps(naive, model, model.backbone.stage, x, res.explained)
    np.testing.assert_allclose(res.maps[method].numpy(), expected.numpy(), atol=1e-5)
    assert res.maps[method].amax(dim=(2, 3)).min() == 1  # every image has its map


@pytest.mark.parametrize("method,naive", [("ablationcam", naive_ablation), ("scorecam", naive_scorecam)])
def test_perturbation_fast_equals_naive_on_a_detector(method: str, naive: Callable[..., torch.Tensor]) -> None:
    model = tiny_rcnn()
    x = images(2, seed=4)
    res = CamEngine(model, "backbone.5", methods=[method])(x, task=Task("detect", score_threshold=0.0), top_k=2)
    assert [len(t) for t in res.explained] == [2, 2]
    expected = _naive_maps(naive, model, model.backbone[5], x, res.explained)
    np.testing.assert_allclose(res.maps[method].numpy(), expected.numpy(), atol=1e-5)


# --------------------------------------------------------------------------- batches, zero targets, refusals


def test_every_segmentation_image_gets_its_map() -> None:
    """A batch of two images: each map equals the image's map explained alone, and none is
    blank (the case where pytorch-grad-cam users get an all-zero second map)."""
    model = small_fcn()
    x = images(2, seed=5)
    engine = CamEngine(model, None, methods=["gradcam", "ablationcam", "scorecam"])
    both = engine(x, task="segment")
    for i in range(2):
        alone = engine(x[i : i + 1], task="segment")
        assert alone.explained[0][0].label == both.explained[i][0].label
        for name in both.maps:
            np.testing.assert_allclose(both.maps[name][i].numpy(), alone.maps[name][0].numpy(), atol=1e-5)
            assert float(both.maps[name][i].max()) == 1.0


def test_segment_given_box_and_class() -> None:
    model = small_fcn()
    x = images(1, seed=6)
    res = CamEngine(model, None, methods=["gradcam"])(x, [[2]], task=Task("segment", boxes=[(8, 8, 40, 32)]))
    (t,) = res.explained[0]
    assert t.label == 2 and t.region == "box" and int(t.mask.sum()) == 32 * 24
    with torch.no_grad():
        y = model(x)["out"][0, 2, 8:32, 8:40].sum()
    assert float(res.scores[0, 0]) == pytest.approx(float(y), rel=1e-5)
    with pytest.raises(UsageError, match=r"^box 8,8,80,32 is outside the 64x64 image$"):
        CamEngine(model, None, methods=["gradcam"])(x, [[2]], task=Task("segment", boxes=[(8, 8, 80, 32)]))
    with pytest.raises(UsageError, match=r"^class 5 is out of range: the model has 3 classes \(0\.\.2\)$"):
        CamEngine(model, None, methods=["gradcam"])(x, [[5]], task="segment")


def test_detector_finding_nothing_gives_zero_targets() -> None:
    """Nothing above the threshold: explained with zero targets, not a failure; a batch mixing
    an image with detections and one without keeps both (the empty slots are zero maps)."""
    model = tiny_rcnn()
    x = images(2, seed=7)
    engine = CamEngine(model, "backbone.5", methods=["gradcam", "ablationcam", "scorecam"])
    none = engine(x, task=Task("detect", score_threshold=2.0))
    assert none.explained == [[], []] and none.maps["gradcam"].shape == (2, 0, 64, 64)
    with torch.no_grad():
        best = [float(d["scores"].max()) for d in model(x)]
    threshold = (best[0] + best[1]) / 2  # one image above it, one below
    some = engine(x, task=Task("detect", score_threshold=threshold), top_k=1)
    counts = [len(t) for t in some.explained]
    assert sorted(counts) == [0, 1]
    empty = counts.index(0)
    for name in some.maps:
        assert some.maps[name].shape == (2, 1, 64, 64)
        assert float(some.maps[name][empty].abs().max()) == 0.0
    assert some.targets[empty].tolist() == [-1] and bool(torch.isnan(some.scores[empty, 0]))


def test_detection_given_box_outside_the_photo() -> None:
    model = tiny_rcnn()
    x = images(1, seed=8)
    engine = CamEngine(model, "backbone.5", methods=["gradcam"])
    with pytest.raises(UsageError, match=r"^box -5,0,30,30 is outside the 64x64 image$"):
        engine(x, task=Task("detect", boxes=[(-5, 0, 30, 30, 1)]))
    res = engine(x, task=Task("detect", boxes=[(4, 4, 40, 40, None)]))
    assert res.explained[0][0].label == -1  # any label


def test_aug_smoothing_refuses_spatial_targets() -> None:
    model = tiny_rcnn()
    with pytest.raises(UsageError, match="box or mask target"):
        CamEngine(model, "backbone.5", methods=["gradcam"], smoothing="aug")(images(1), task="detect")


_SLOW = pytest.mark.slow  # building them with random weights takes 4-26 s each on 2 cores
TASK_MODELS = ["fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large",
               "fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn", "ssdlite320_mobilenet_v3_large",
               pytest.param("fasterrcnn_resnet50_fpn_v2", marks=_SLOW), pytest.param("retinanet_resnet50_fpn", marks=_SLOW),
               pytest.param("fcos_resnet50_fpn", marks=_SLOW), pytest.param("ssd300_vgg16", marks=_SLOW),
               pytest.param("maskrcnn_resnet50_fpn", marks=_SLOW)]
DEFAULT_LAYERS = {
    "fcn_resnet50": "backbone.layer4", "deeplabv3_mobilenet_v3_large": "backbone.16",
    "lraspp_mobilenet_v3_large": "backbone.16", "ssd300_vgg16": "backbone.features",
    "ssdlite320_mobilenet_v3_large": "backbone.features.0", "fasterrcnn_mobilenet_v3_large_fpn": "backbone.body.16",
}


@pytest.mark.parametrize("name", TASK_MODELS)
def test_default_layers_of_torchvision_task_models(name: str) -> None:
    """The loader builds every torchvision segmenter / detector with random weights, names its
    task, and the default layer is the backbone's last stage (FPN detectors: C5)."""
    from camscope.core.layers import default_layer
    from camscope.models import load_model

    loaded = load_model(name, weights_tag=None)
    assert loaded.info["task"] == ("segment" if name.split("_")[0] in ("fcn", "deeplabv3", "lraspp") else "detect")
    assert default_layer(loaded.model) == DEFAULT_LAYERS.get(name, "backbone.body.layer4")
    if loaded.info["task"] == "detect":
        assert loaded.preprocess.mean == (0.0, 0.0, 0.0) and loaded.preprocess.std == (1.0, 1.0, 1.0)
