"""Targets on classifiers and embedding models: hand-computed scores and gradients, the
default target unchanged, user targets, CLIP, and the one-line refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camscope.core.capture import capture
from camscope.core.split import split_model
from camscope.engine import CamEngine
from camscope.errors import UsageError
from camscope.targets import (
    TARGETS,
    TASKS,
    ClassLogit,
    ClassProbability,
    Contrast,
    MultiLabel,
    Target,
    Task,
)

K, C, D = 6, 4, 5


class LinearHead(nn.Module):
    """conv -> ReLU (``feat``, the target layer) -> GAP -> linear: d y / d A_k[i,j] = W_k / hw."""

    def __init__(self, outputs: int = C) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, K, 3, padding=1)
        self.feat = nn.ReLU()
        self.fc = nn.Linear(K, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.feat(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture()
def net() -> LinearHead:
    return LinearHead().eval()


@pytest.fixture()
def x() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 3, 8, 8)


def _grads(model: nn.Module, x: torch.Tensor, per_image: list[list[Target]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gradients, scores, acts) of the capture for explicit targets."""
    split = split_model(model, "feat")
    cap = capture(split, x, resolve=lambda out: per_image)
    return cap.gradients, cap.scores, cap.view_activations


def _hand(model: LinearHead, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, int]:
    with torch.no_grad():
        a = model.feat(model.conv(x)).double().numpy()
    return a, model.fc.weight.detach().double().numpy(), a.shape[2] * a.shape[3]


def test_registry_lists_every_kind_and_task() -> None:
    assert list(TARGETS) == ["logit", "probability", "multilabel", "contrast", "segment", "detection", "similarity"]
    assert TASKS == {"classify": "logit", "zeroshot": "logit", "probability": "probability",
                     "multilabel": "multilabel", "contrast": "contrast", "segment": "segment",
                     "detect": "detection", "embed": "similarity"}


def test_default_target_is_bit_identical_to_class_indices(net: LinearHead, x: torch.Tensor) -> None:
    """The class-logit target gives exactly what the class-index path gave (no tolerance)."""
    split = split_model(net, "feat")
    old = capture(split, x, targets_of_view=[[1, 3], [2, 0]])
    new = capture(split, x, resolve=lambda out: [[ClassLogit(1), ClassLogit(3)], [ClassLogit(2), ClassLogit(0)]])
    assert torch.equal(old.gradients, new.gradients)
    assert torch.equal(old.targets, new.targets) and torch.equal(old.view_index, new.view_index)
    assert torch.equal(old.scores, new.scores)
    eng = CamEngine(net, "feat", methods=["gradcam", "ablationcam", "scorecam", "scorecam-logit-softmax"])
    a = eng(x, [[1, 3], [2, 0]])
    b = eng(x, [[ClassLogit(1), ClassLogit(3)], [ClassLogit(2), ClassLogit(0)]])
    for name in a.maps:
        assert torch.equal(a.maps[name], b.maps[name]), name
    top = eng(x, top_k=2)
    assert top.task == "classify" and top.targets.tolist() == net(x).topk(2).indices.tolist()


def test_multilabel_gradient_equals_hand_computation(net: LinearHead, x: torch.Tensor) -> None:
    """d sigmoid(y_c) / d A_k[i,j] = sigmoid(y_c) (1 - sigmoid(y_c)) W_ck / hw."""
    g, s, _ = _grads(net, x, [[MultiLabel(1), MultiLabel(2)], [MultiLabel(0), MultiLabel(3)]])
    a, w, hw = _hand(net, x)
    y = net(x).detach().double().numpy()
    rows = [(0, 1), (0, 2), (1, 0), (1, 3)]
    for r, (i, c) in enumerate(rows):
        p = 1 / (1 + np.exp(-y[i, c]))
        np.testing.assert_allclose(float(s[r]), p, rtol=1e-6)
        mask = a[i] > 0  # the ReLU's derivative (at the layer's output it is already applied)
        expected = p * (1 - p) * w[c][:, None, None] / hw * np.ones_like(mask)
        np.testing.assert_allclose(g[r].numpy(), expected, rtol=1e-5, atol=1e-9)


def test_contrast_gradient_equals_hand_computation(net: LinearHead, x: torch.Tensor) -> None:
    """d (y_c - y_d) / d A_k = (W_ck - W_dk) / hw; its Grad-CAM map is ReLU(sum_k (W_c - W_d)_k A_k)."""
    g, s, _ = _grads(net, x, [[Contrast(1, 2)], [Contrast(3, 0)]])
    a, w, hw = _hand(net, x)
    y = net(x).detach().double().numpy()
    for r, (i, c, d) in enumerate([(0, 1, 2), (1, 3, 0)]):
        np.testing.assert_allclose(float(s[r]), y[i, c] - y[i, d], rtol=1e-5)
        np.testing.assert_allclose(g[r].numpy(), np.broadcast_to(((w[c] - w[d]) / hw)[:, None, None], g[r].shape),
                                   rtol=1e-5, atol=1e-9)
    res = CamEngine(net, "feat", methods=["gradcam"])(x, task=Task("contrast", contrast=0), top_k=1)
    c0 = int(net(x[:1]).argmax())
    if c0 != 0:
        assert res.explained[0][0].describe() == {"kind": "contrast", "class": c0, "contrast": 0}


def test_probability_gradient_equals_softmax_jacobian(net: LinearHead, x: torch.Tensor) -> None:
    """d p_c / d A_k = p_c (W_ck - sum_j p_j W_jk) / hw."""
    g, s, _ = _grads(net, x, [[ClassProbability(2)], [ClassProbability(1)]])
    _, w, hw = _hand(net, x)
    p = torch.softmax(net(x), dim=1).detach().double().numpy()
    for r, (i, c) in enumerate([(0, 2), (1, 1)]):
        np.testing.assert_allclose(float(s[r]), p[i, c], rtol=1e-6)
        expected = p[i, c] * (w[c] - p[i] @ w) / hw
        np.testing.assert_allclose(g[r].numpy(), np.broadcast_to(expected[:, None, None], g[r].shape), rtol=1e-5, atol=1e-9)


def test_multilabel_default_targets_use_the_threshold(net: LinearHead, x: torch.Tensor) -> None:
    probs = torch.sigmoid(net(x)).detach()
    res = CamEngine(net, "feat", methods=["gradcam"])(x, task=Task("multilabel", score_threshold=0.5))
    for i in range(2):
        want = [int(c) for c in probs[i].argsort(descending=True) if probs[i, c] >= 0.5]
        assert [t.label for t in res.explained[i]] == want
        assert res.targets[i, : len(want)].tolist() == want
        assert (res.targets[i, len(want):] == -1).all()
    # a threshold no label reaches: zero targets, zero maps, no failure
    none = CamEngine(net, "feat", methods=["gradcam"])(x, task=Task("multilabel", score_threshold=1.1))
    assert none.explained == [[], []] and none.maps["gradcam"].shape == (2, 0, 8, 8)


def test_user_callable_target(net: LinearHead, x: torch.Tensor) -> None:
    """A callable output -> (N,) is a target: 2 y_3 has twice y_3's gradient."""
    split = split_model(net, "feat")
    cap = capture(split, x, resolve=lambda out: [[_as_target(lambda o: 2 * o[:, 3])]] * 2)
    ref = capture(split, x, targets_of_view=[[3], [3]])
    torch.testing.assert_close(cap.gradients, 2 * ref.gradients, rtol=0, atol=0)
    eng = CamEngine(net, "feat", methods=["gradcam", "ablationcam"])
    a = eng(x, targets=lambda o: 2 * o[:, 3])
    b = eng(x, [[3], [3]])
    torch.testing.assert_close(a.maps["gradcam"], b.maps["gradcam"], rtol=0, atol=1e-6)
    torch.testing.assert_close(a.maps["ablationcam"], b.maps["ablationcam"], rtol=0, atol=1e-6)
    with pytest.raises(UsageError, match="one score per image"):
        eng(x, targets=lambda o: o)


def _as_target(fn):
    from camscope.targets import CallableTarget

    return CallableTarget(fn)


class Embedder(nn.Module):
    """conv -> ReLU (``feat``) -> GAP -> linear to a D-dim embedding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv = nn.Conv2d(3, K, 3, padding=1)
        self.feat = nn.ReLU()
        self.fc = nn.Linear(K, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.feat(self.conv(x)).mean(dim=(2, 3)))


def test_similarity_equals_hand_computed_cosine(x: torch.Tensor) -> None:
    """score = e.c / (|e||c|); d score / d e = c/(|e||c|) - (e.c) e / (|e|^3 |c|); Grad-CAM map =
    ReLU(sum_k (W^T d)_k A_k) min-max normalised (GAP head: the gradient is constant over space)."""
    model = Embedder().eval()
    torch.manual_seed(1)
    concept = torch.randn(D)
    res = CamEngine(model, "feat", methods=["gradcam"])(x, task=Task("embed", concept=concept, concept_name="ref"))
    with torch.no_grad():
        a = model.feat(model.conv(x)).double().numpy()
        e = model(x).double().numpy()
    c = concept.double().numpy()
    w = model.fc.weight.detach().double().numpy()  # (D, K)
    for i in range(2):
        ne, nc = np.linalg.norm(e[i]), np.linalg.norm(c)
        np.testing.assert_allclose(float(res.scores[i, 0]), e[i] @ c / (ne * nc), rtol=1e-6)
        de = c / (ne * nc) - (e[i] @ c) * e[i] / (ne**3 * nc)
        sal = np.maximum(np.tensordot(w.T @ de, a[i], axes=1), 0)
        expected = (sal - sal.min()) / (sal.max() - sal.min())
        np.testing.assert_allclose(res.maps["gradcam"][i, 0].numpy(), expected, atol=1e-5)
    assert res.task == "embed" and res.target_names(0) == ["ref"]


def test_hugging_face_output_objects(net: LinearHead, x: torch.Tensor) -> None:
    """A model returning a Hugging Face ModelOutput is explained through its logits."""
    from transformers.modeling_outputs import ImageClassifierOutput

    class HF(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = net

        def forward(self, pixel_values: torch.Tensor) -> ImageClassifierOutput:
            return ImageClassifierOutput(logits=self.inner(pixel_values))

    model = HF().eval()
    a = CamEngine(model, "inner.feat", methods=["gradcam", "ablationcam"])(x, [[1], [2]])
    b = CamEngine(net, "feat", methods=["gradcam", "ablationcam"])(x, [[1], [2]])
    for name in a.maps:
        torch.testing.assert_close(a.maps[name], b.maps[name], rtol=0, atol=1e-6)


class TwoInputs(nn.Module):
    """A model whose forward takes the image and a second input."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor, extra: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        return scale * self.base(x) + extra


def test_model_with_several_inputs(net: LinearHead) -> None:
    """Other inputs held fixed (WithFixedInputs): the maps of scale * y + extra for one image."""
    from camscope.models.fixed_inputs import WithFixedInputs

    torch.manual_seed(4)
    x1 = torch.randn(1, 3, 8, 8)
    extra = 1e-3 * torch.randn(1, C)
    model = WithFixedInputs(TwoInputs(net), extra, scale=2.0)
    methods = ["gradcam", "ablationcam"]
    c = int(net(x1).argmax())
    a = CamEngine(model, "model.base.feat", methods=methods)(x1, [[c]])
    b = CamEngine(net, "feat", methods=methods)(x1, [[c]])
    # Grad-CAM: the gradient is scaled by 2; Ablation-CAM: (y'-y'_k)/y' = (y-y_k)/y * 2y/(2y+e),
    # a positive factor for the top class: the normalised maps are the same
    torch.testing.assert_close(a.maps["gradcam"], b.maps["gradcam"], rtol=0, atol=1e-6)
    torch.testing.assert_close(a.maps["ablationcam"], b.maps["ablationcam"], rtol=0, atol=1e-5)


def test_bad_inputs_give_one_line(net: LinearHead, x: torch.Tensor) -> None:
    eng = CamEngine(net, "feat", methods=["gradcam"])
    with pytest.raises(UsageError, match=r"^class 7 is out of range: the model has 4 classes \(0\.\.3\)$"):
        eng(x, [[7], [0]])
    with pytest.raises(UsageError, match="needs the class to contrast with"):
        eng(x, [[1], [0]], task="contrast")
    with pytest.raises(UsageError, match="^unknown task 'pose'"):
        eng(x, task="pose")
    with pytest.raises(UsageError, match="segment targets need per-pixel logits"):
        eng(x, task="segment")
    emb = CamEngine(Embedder().eval(), "feat", methods=["gradcam"])
    with pytest.raises(UsageError, match="the embed task needs a concept"):
        emb(x, task="embed")
    from camscope.models.clip import concept_embedding

    with pytest.raises(UsageError, match="^the text concept 'a dog' needs a CLIP model"):
        concept_embedding("a dog", Embedder())
    with pytest.raises(UsageError, match="has 3 dimensions, the model's embedding 5"):
        emb(x, task=Task("embed", concept=torch.ones(3)))
    for err in (UsageError,):
        try:
            eng(x, [[9], [0]])
        except err as e:
            assert "\n" not in str(e)


# --------------------------------------------------------------------------- CLIP


@pytest.fixture(scope="module")
def tiny_clip():
    """An open_clip CLIP with random weights from a tiny config (nothing downloaded)."""
    pytest.importorskip("open_clip")
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CLIP(
            embed_dim=16,
            vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=32),
            text_cfg=CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
        )
    return model.eval()


def test_clip_zero_shot_logits_and_text_concept(tiny_clip) -> None:
    import open_clip

    from camscope.models.clip import ClipImageEncoder, ClipZeroShot, concept_embedding

    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 32)
    prompts = ["a dog", "a cat", "a car"]
    zs = ClipZeroShot(tiny_clip, prompts)
    with torch.no_grad():
        t = tiny_clip.encode_text(open_clip.tokenize(prompts, context_length=16))
        e = tiny_clip.encode_image(x)
        expected = tiny_clip.logit_scale.exp() * F.normalize(e, dim=1) @ F.normalize(t, dim=1).T
    torch.testing.assert_close(zs(x).detach(), expected, rtol=1e-5, atol=1e-5)
    res = CamEngine(zs, None, methods=["gradcam", "ablationcam"])(x, task="zeroshot", top_k=2)
    assert res.task == "zeroshot" and res.targets.tolist() == expected.topk(2).indices.tolist()
    assert res.maps["gradcam"].shape == (2, 2, 32, 32)

    enc = ClipImageEncoder(tiny_clip)
    concept = concept_embedding("a dog", enc)
    torch.testing.assert_close(concept, t[0], rtol=1e-5, atol=1e-6)
    res = CamEngine(enc, None, methods=["gradcam"])(x, task=Task("embed", concept=concept, concept_name="a dog"))
    torch.testing.assert_close(res.scores[:, 0], F.cosine_similarity(e, t[:1]), rtol=1e-5, atol=1e-6)
    assert res.target_names(1) == ["a dog"]


def test_explain_api_takes_targets_and_task(net: LinearHead, x: torch.Tensor) -> None:
    import camscope

    a = camscope.explain(net, x, layer="feat", methods=["gradcam"], targets=[[MultiLabel(1)], [MultiLabel(2)]])
    b = CamEngine(net, "feat", methods=["gradcam"])(x, [[MultiLabel(1)], [MultiLabel(2)]])
    assert torch.equal(a.maps["gradcam"], b.maps["gradcam"]) and a.target_names(0) == ["class 1"]
    c = camscope.explain(net, x, layer="feat", methods=["gradcam"], task=Task("multilabel", score_threshold=0.0),
                         top_k=2, images_per_call=1)
    assert c.task == "multilabel" and [len(t) for t in c.explained] == [2, 2] and c.maps["gradcam"].shape[1] == 2


def test_labels_imagenet_names_classes_and_wordnet_ids() -> None:
    """--labels imagenet: the bundled ImageNet-1k names and WordNet ids, for a model that has
    none (random weights here; the same for an import-path model)."""
    from camscope.models import ModelSpec

    loaded = ModelSpec("resnet18", weights_tag=None, labels="imagenet").load()
    assert len(loaded.categories) == 1000 and loaded.categories[21] == "kite"
    assert loaded.wnids is not None and loaded.wnids[21] == "n01608432"


def test_readme_table_comes_from_the_registry() -> None:
    from pathlib import Path

    from camscope.targets import targets_markdown

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = text.index("<!-- targets-table")
    block = text[text.index("\n", start) + 1 : text.index("<!-- /targets-table -->")].strip()
    assert block == targets_markdown()
