"""Hugging Face semantic segmentation (SegFormer) and detection (DETR) through ``hf/PATH``.

Tiny configs with random weights, written by ``save_pretrained`` (with their image processors)
into a temporary folder and loaded as a user would (offline). Checked: the task, default layer,
class names and preprocessing come from the folder; Grad-CAM on SegFormer equals a hand-made
gradient through plain hooks and pytorch-grad-cam with ``SemanticSegmentationTarget`` (on the
logits' own H/4 resolution); DETR's detections are the queries (softmax without the no-object
column, boxes in input pixels), the detection target picks the query whose box it was given,
and Grad-CAM equals the hand-made gradient of that query's ``IoU + p`` and pytorch-grad-cam's
``FasterRCNNBoxScoreTarget``; Ablation-CAM and Score-CAM equal the naive one-forward-per-channel
references; every method's maps are finite and not constant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import camscope
from camscope.engine import CamEngine
from camscope.errors import UsageError
from camscope.models import load_model
from camscope.targets import Detection, SegmentRegion, Task, detections_of, infer_task
from camscope.targets.detection import set_detections
from tests.reference import reference_finalize, reference_saliency
from tests.targets.test_vision_tasks import (  # noqa: F401  (a fixture)
    _layer_output,
    naive_ablation,
    naive_scorecam,
    pgc_at_our_resolution,
)

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

SEG_LABELS = {0: "background", 1: "road", 2: "car", 3: "person"}
DET_LABELS = {0: "cat", 1: "dog", 2: "kite"}
SIZE = 64


def _segformer() -> nn.Module:
    cfg = transformers.SegformerConfig(
        depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 2, 2],
        mlp_ratios=[2, 2, 2, 2], decoder_hidden_size=16, num_labels=4, id2label=SEG_LABELS,
        label2id={v: k for k, v in SEG_LABELS.items()},
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.SegformerForSemanticSegmentation(cfg).eval()
        with torch.no_grad():  # LayerNorms as initialised (weight 1, bias 0) make every position's
            for m in model.modules():  # channels sum to 0: a degenerate map for Score-CAM
                if isinstance(m, nn.LayerNorm):
                    m.weight.normal_(1.0, 0.5)
                    m.bias.normal_(0.0, 0.5)
    return model


def _detr() -> nn.Module:
    backbone = transformers.ResNetConfig(
        hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], embedding_size=8, out_features=["stage4"])
    cfg = transformers.DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, d_model=16,
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=6, num_labels=3, id2label=DET_LABELS,
        label2id={v: k for k, v in DET_LABELS.items()},
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.DetrForObjectDetection(cfg).eval()
        with torch.no_grad():  # distinct queries (the init makes them all alike), distinct boxes
            model.model.query_position_embeddings.weight.normal_(0, 1.0)
            attn = model.model.decoder.layers[0].encoder_attn  # each query looks at its own places
            for lin in (attn.q_proj, attn.k_proj):
                lin.weight.normal_(0, 1.0)
            for p in [*model.bbox_predictor.parameters(), *model.class_labels_classifier.parameters()]:
                p.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_tasks")
    _segformer().save_pretrained(root / "segformer")
    transformers.SegformerImageProcessor(
        size={"height": SIZE, "width": SIZE}, image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25],
    ).save_pretrained(root / "segformer")
    _detr().save_pretrained(root / "detr")
    transformers.DetrImageProcessor(image_mean=[0.4, 0.4, 0.4], image_std=[0.2, 0.2, 0.2]).save_pretrained(root / "detr")
    return {"segment": root / "segformer", "detect": root / "detr"}


@pytest.fixture(scope="module")
def seg(folders: dict[str, Path]) -> Any:
    return load_model(f"hf/{folders['segment']}")


@pytest.fixture(scope="module")
def det(folders: dict[str, Path]) -> Any:
    return load_model(f"hf/{folders['detect']}")


def _x(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _hook_gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor, i: int, score: Any) -> torch.Tensor:
    """Grad-CAM by hand of image ``i`` of the batch ``x``: a forward hook keeps the layer's
    output, ``score(output)`` is differentiated, weights = spatial mean of the gradient
    (Selvaraju et al. 2017, Eq. 1-2)."""
    kept: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, inp, o: kept.append(o))
    try:
        out = model(x)
        a = kept[-1]
        (g,) = torch.autograd.grad(score(out), a)
    finally:
        handle.remove()
    w = g[i : i + 1].mean(dim=(2, 3))
    return reference_finalize(reference_saliency(w.detach(), a[i : i + 1].detach()), x.shape[-2:])


# --------------------------------------------------------------------------- loading


def test_task_layer_labels_and_preprocessing_from_the_folder(seg: Any, det: Any) -> None:
    assert seg.info["task"] == "segment" and det.info["task"] == "detect"
    assert seg.categories == list(SEG_LABELS.values()) and det.categories == list(DET_LABELS.values())
    assert seg.preprocess.size == (SIZE, SIZE) and seg.preprocess.mean == (0.5, 0.5, 0.5)
    assert seg.preprocess.std == (0.25, 0.25, 0.25)
    # a detector's map covers the whole photo (as torchvision's), with its processor's statistics
    assert det.preprocess.mode == "classic" and det.preprocess.size == (800, 800)
    assert det.preprocess.mean == (0.4, 0.4, 0.4) and det.preprocess.std == (0.2, 0.2, 0.2)
    assert CamEngine(seg.model, None, methods=["gradcam"]).layer == "hf.segformer.stages.3"
    assert CamEngine(det.model, None, methods=["gradcam"]).layer == "hf.model.input_projection"
    with torch.no_grad():
        out_seg, out_det = seg.model(_x()), det.model(_x())
    assert out_seg.shape == (2, 4, SIZE // 4, SIZE // 4) and infer_task(out_seg) == "segment"
    assert infer_task(out_det) == "detect" and len(out_det) == 2 and out_det[0]["boxes"].shape == (6, 4)


def test_set_detections_by_hand() -> None:
    logits = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 0.0, 3.0]]])  # 2 classes + no-object
    boxes = torch.tensor([[[0.5, 0.25, 0.5, 0.5], [0.1, 0.2, 0.2, 0.2]]])
    (d,) = set_detections(logits, boxes, (40, 80))  # H=40, W=80
    e = np.exp([2.0, 0.0, 1.0])
    assert d["labels"].tolist() == [0, 0]
    assert float(d["scores"][0]) == pytest.approx(e[0] / e.sum(), abs=1e-6)
    assert float(d["scores"][1]) == pytest.approx(1 / (2 + np.exp(3.0)), abs=1e-6)
    torch.testing.assert_close(d["boxes"], torch.tensor([[20.0, 0.0, 60.0, 20.0], [0.0, 4.0, 16.0, 12.0]]))


def test_raw_detr_output_is_refused_in_one_line() -> None:
    out = _detr()(pixel_values=_x(1))
    with pytest.raises(UsageError, match="HuggingFaceDetector"):
        detections_of(out)


# --------------------------------------------------------------------------- SegFormer


@pytest.mark.usefixtures("pgc_at_our_resolution")
def test_segformer_gradcam_equals_hand_gradient_and_pytorch_grad_cam(seg: Any) -> None:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    model, x = seg.model, _x(2, seed=1)
    engine = CamEngine(model, None, methods=["gradcam", "hirescam"])
    res = engine(x)  # task from the output: segment
    assert res.task == "segment"
    layer = model.hf.segformer.stages[3]
    with torch.no_grad():
        pred = model(x).argmax(dim=1)
    theirs_targets = []
    for i, (t,) in enumerate(res.explained):
        assert isinstance(t, SegmentRegion) and t.label != 0  # background never by default
        assert t.mask.shape == (SIZE // 4, SIZE // 4) and torch.equal(t.mask, (pred[i] == t.label).float())
        hand = _hook_gradcam(model, layer, x, i, lambda out, i=i, t=t: (out[i, t.label] * t.mask).sum())
        np.testing.assert_allclose(res.maps["gradcam"][i, 0].numpy(), hand[0].numpy(), atol=1e-5)
        theirs_targets.append(SemanticSegmentationTarget(t.label, t.mask.numpy()))
    for name, cls in (("gradcam", "GradCAM"), ("hirescam", "HiResCAM")):
        with getattr(pgc, cls)(model=model, target_layers=[layer]) as cam:
            theirs = cam(input_tensor=x, targets=theirs_targets)
        np.testing.assert_allclose(res.maps[name][:, 0].numpy(), theirs, atol=1e-5, err_msg=name)
    assert float(res.maps["gradcam"].std()) > 0.05


def test_segformer_box_in_input_pixels_is_area_averaged_to_the_logits(seg: Any) -> None:
    x = _x(1, seed=2)
    with torch.no_grad():
        out = seg.model(x)
    task = Task("segment", classes=[2], boxes=[(0, 0, 30, 64)])
    res = CamEngine(seg.model, None, methods=["gradcam"])(x, task=task)
    (t,) = res.explained[0]
    assert t.region == "box" and t.mask.shape == (16, 16)
    want = torch.zeros(16, 16)
    want[:, :7] = 1.0
    want[:, 7] = 2 / 4  # cell 7 covers pixels 28..31, of which 28 and 29 are in the box
    torch.testing.assert_close(t.mask, want)
    assert float(res.scores[0, 0]) == pytest.approx(float((out[0, 2] * want).sum()), rel=1e-5)
    assert t.mask_at((SIZE, SIZE)).shape == (SIZE, SIZE)


# --------------------------------------------------------------------------- DETR


@pytest.mark.usefixtures("pgc_at_our_resolution")
def test_detr_target_picks_the_query_and_equals_hand_gradient(det: Any) -> None:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
    from torchvision.ops import box_iou

    model, x = det.model, _x(2, seed=3)
    with torch.no_grad():
        raw = model.hf(pixel_values=x)
    probs = torch.softmax(raw.logits, -1)[..., :-1]
    res = CamEngine(model, None, methods=["gradcam"])(x, task=Task("detect", score_threshold=0.0), top_k=2)
    assert res.task == "detect" and [len(ts) for ts in res.explained] == [2, 2]
    layer = model.hf.model.input_projection
    for i, ts in enumerate(res.explained):
        order = probs[i].max(-1).values.argsort(descending=True)
        for rank, t in enumerate(ts):
            q = int(order[rank])  # the rank-th most confident query, by hand
            cx, cy, w, h = raw.pred_boxes[i, q].tolist()
            box = [(cx - w / 2) * SIZE, (cy - h / 2) * SIZE, (cx + w / 2) * SIZE, (cy + h / 2) * SIZE]
            assert isinstance(t, Detection) and t.label == int(probs[i, q].argmax())
            np.testing.assert_allclose(t.box.numpy(), box, atol=1e-4)
            assert float(res.scores[i, rank]) == pytest.approx(1 + float(probs[i, q].max()), abs=1e-5)

            def score(out: Any, i: int = i, q: int = q, t: Detection = t) -> torch.Tensor:
                # the same arithmetic as the adapter: at IoU 1 (a detection explained with its own
                # box) the IoU's gradient sits on min/max ties, which rounding decides
                cx, cy, w, h = out.pred_boxes[i, q].unbind(-1)
                xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]) * torch.full((4,), float(SIZE))
                iou = box_iou(t.box[None], xyxy[None])[0, 0]
                return iou + torch.softmax(out.logits[i, q], -1)[t.label]

            hand = _hook_gradcam(model.hf, layer, x, i, score)
            np.testing.assert_allclose(res.maps["gradcam"][i, rank].numpy(), hand[0].numpy(), atol=1e-5)
    targets = [FasterRCNNBoxScoreTarget([ts[0].label], [ts[0].box.numpy()]) for ts in res.explained]
    with pgc.GradCAM(model=model, target_layers=[layer]) as cam:
        theirs = cam(input_tensor=x, targets=targets)
    np.testing.assert_allclose(res.maps["gradcam"][:, 0].numpy(), theirs, atol=1e-5)


# --------------------------------------------------------------------------- every method, fast == naive


@pytest.mark.parametrize("task", ["segment", "detect"])
def test_every_method_gives_finite_varied_maps(task: str, seg: Any, det: Any) -> None:
    loaded = seg if task == "segment" else det
    methods = ["gradcam", "gradcampp", "hirescam", "layercam", "ablationcam", "scorecam", "eigencam"]
    res = camscope.explain(loaded, _x(2, seed=4), methods=methods, top_k=1,
                           task=Task(task, score_threshold=0.0))
    assert res.task == task
    for name in methods:
        m = res.maps[name]
        assert m.shape == (2, 1, SIZE, SIZE) and torch.isfinite(m).all(), name
        # DETR's input projection (no ReLU) is about half negative, and on its 2x2 map Grad-CAM++'s
        # positive weights give an all-negative sum for these random weights: a zero map, rightly
        if not (task == "detect" and name == "gradcampp"):
            assert float(m.amax()) == 1.0 and float(m.std(dim=(2, 3)).max()) > 0.01, name
    assert float(res.maps["gradcam"].std(dim=(2, 3)).min()) > 0.01


@pytest.mark.parametrize("method,naive", [("ablationcam", naive_ablation), ("scorecam", naive_scorecam)])
@pytest.mark.parametrize("task", ["segment", "detect"])
def test_perturbation_methods_equal_naive(task: str, method: str, naive: Any, seg: Any, det: Any) -> None:
    """transformers >= 5 records SegFormer's stage outputs with its own hooks, which torch.fx does
    not run, and DETR's forward branches on tensors: both use the hook path (a full forward per
    tail call), checked here against a full forward per channel."""
    model = (seg if task == "segment" else det).model
    x = _x(2, seed=5)
    engine = CamEngine(model, None, methods=[method])
    layer = model.get_submodule(engine.layer)
    res = engine(x, task=Task(task, score_threshold=0.0), top_k=1)
    expected = []
    for i, (t,) in enumerate(res.explained):
        w = naive(model, layer, x[i : i + 1], t)[None]
        acts = _layer_output(model, layer, x[i : i + 1])
        expected.append(reference_finalize(reference_saliency(w, acts), x.shape[-2:])[0])
    np.testing.assert_allclose(res.maps[method][:, 0].numpy(), torch.stack(expected).numpy(), atol=1e-5)
    assert float(res.maps[method].std()) > 0.01
