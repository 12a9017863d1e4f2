"""Attention methods (rollout, Chefer et al. 2021, LeGrad) and the attention capture under them.

- the capture leaves the model's output exactly as it is (gradients enabled: bit for bit;
  without gradients torchvision's ``nn.MultiheadAttention`` would take PyTorch's fused native
  path, which rounds differently) and its probabilities equal the model's own: torchvision's
  (by hand from ``in_proj``), timm's fused and unfused attention, Hugging Face's sdpa and eager
  attention (``output_attentions``), BEiT's relative position bias, DeiT's two prefix tokens;
- no hook and no function mode survive an exception;
- rollout equals a hand computation (3 tokens, 2 blocks) and, on a tiny torchvision ViT, the
  rollout of the probabilities of a naive forward written out here;
- Chefer's rule and LeGrad equal their formulas applied to the gradients of that naive forward
  (every attention computed explicitly, the gradients by autograd), and LeGrad equals torch-cam's
  ``LeGrad`` (1e-5);
- maps for torchvision's ``vit_b_16`` (random weights, small input), timm DeiT and a Hugging Face
  ViT from a config; the refusal on a CNN and on Swin names the methods that can.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from camscope.core.attention import attention_capture, attention_refusal
from camscope.core.capture import capture
from camscope.engine import CamEngine
from camscope.errors import UsageError
from camscope.methods.attention import chefer_maps, legrad_maps, rollout_maps
from camscope.methods.registry import METHODS, methods_for

pytestmark = pytest.mark.usefixtures("one_thread")

ATTENTION = ["rollout", "chefer", "legrad"]


def _head(linear: nn.Linear, seed: int) -> None:
    with torch.no_grad():
        linear.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(seed))


def _tv_vit(layers: int = 2) -> nn.Module:
    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=layers, num_heads=2, hidden_dim=24, mlp_dim=48, num_classes=5
    )
    _head(m.heads.head, 0)
    return m.eval()


def _timm(kind: str, fused: bool = True) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    cls = timm.models.deit.VisionTransformerDistilled if kind == "deit" else timm.models.vision_transformer.VisionTransformer
    m = cls(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=5)
    _head(m.head, 0)
    if kind == "deit":
        _head(m.head_dist, 1)
    for blk in m.blocks:
        blk.attn.fused_attn = fused
    return m.eval()


def _hf(kind: str, attn: str = "sdpa") -> nn.Module:
    transformers = pytest.importorskip("transformers")
    from camscope.models.hf_source import HuggingFaceClassifier

    torch.manual_seed(0)
    common = dict(
        image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=48, num_labels=5,
    )
    if kind == "vit":
        hf = transformers.ViTForImageClassification(transformers.ViTConfig(**common))
    elif kind == "deit":
        hf = transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**common))
    else:
        hf = transformers.BeitForImageClassification(
            transformers.BeitConfig(**common, use_relative_position_bias=True)
        )
    hf.set_attn_implementation(attn)
    return HuggingFaceClassifier(hf).eval()


def _x(b: int = 2, size: int = 32, seed: int = 1) -> Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ reference probabilities


def _tv_reference_probs(model: nn.Module, x: Tensor) -> list[Tensor]:
    """softmax(q k^T / sqrt(d)) by hand from each MultiheadAttention's in_proj and its input."""
    inputs: list[Tensor] = []
    hooks = [b.self_attention.register_forward_pre_hook(lambda _m, a: inputs.append(a[0])) for b in model.encoder.layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for blk, h in zip(model.encoder.layers, inputs, strict=True):
        att = blk.self_attention
        e, heads = h.shape[-1], att.num_heads
        q, k, _ = F.linear(h, att.in_proj_weight, att.in_proj_bias).split(e, -1)
        q, k = (t.reshape(h.shape[0], -1, heads, e // heads).transpose(1, 2) for t in (q, k))
        out.append(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(e // heads), -1))
    return out


def _timm_reference_probs(model: nn.Module, x: Tensor) -> list[Tensor]:
    """timm's own unfused attention: the output of ``attn_drop`` (identity in eval) is P."""
    ref = copy.deepcopy(model)
    seen: list[Tensor] = []
    for blk in ref.blocks:
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_hook(lambda _m, _i, o: seen.append(o))
    with torch.no_grad():
        ref(x)
    return seen


def _hf_reference_probs(model: nn.Module, x: Tensor) -> list[Tensor]:
    """Hugging Face's eager attention, ``output_attentions=True``."""
    hf = copy.deepcopy(model.hf)
    hf.set_attn_implementation("eager")
    with torch.no_grad():
        return list(hf(pixel_values=x, output_attentions=True).attentions)


CAPTURE_CASES = {
    "tv_vit": (_tv_vit, _tv_reference_probs),
    "timm_vit_fused": (lambda: _timm("vit", True), _timm_reference_probs),
    "timm_vit_unfused": (lambda: _timm("vit", False), _timm_reference_probs),
    "timm_deit": (lambda: _timm("deit"), _timm_reference_probs),
    "hf_vit_sdpa": (lambda: _hf("vit", "sdpa"), _hf_reference_probs),
    "hf_vit_eager": (lambda: _hf("vit", "eager"), _hf_reference_probs),
    "hf_deit": (lambda: _hf("deit"), _hf_reference_probs),
    "hf_beit": (lambda: _hf("beit"), _hf_reference_probs),
}


@pytest.mark.parametrize("name", sorted(CAPTURE_CASES))
def test_capture_keeps_the_output_and_reads_the_models_probabilities(name: str) -> None:
    build, reference = CAPTURE_CASES[name]
    model = build()
    x = _x()
    ref = model(x)
    with attention_capture(model, blocks=True) as rec:
        out = model(x)
    assert torch.equal(out, ref)  # gradients enabled: bit for bit
    assert len(rec.probs) == len(rec.blocks) == 2
    assert all(p.requires_grad for p in rec.probs)
    with torch.no_grad():
        ref0 = model(x)
        with attention_capture(model) as rec0:
            out0 = model(x)
    torch.testing.assert_close(out0, ref0, rtol=1e-5, atol=1e-5)
    expected = reference(model, x)
    assert len(expected) == 2
    for got, want, got0 in zip(rec.probs, expected, rec0.probs, strict=True):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got0, want, rtol=1e-5, atol=1e-6)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_no_hook_or_mode_survives_an_exception() -> None:
    model = _tv_vit()

    def boom(_m, _i, _o):
        raise RuntimeError("boom")

    handle = model.encoder.layers[1].mlp.register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"), attention_capture(model, blocks=True):
            model(_x())
    finally:
        handle.remove()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch._C._len_torch_function_stack() == 0


# ------------------------------------------------------------------ naive reference


def _naive_tv_vit(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """torchvision's ViT written out with explicit attention: (logits, P per block, block outputs)."""
    n = x.shape[0]
    z = torch.cat([model.class_token.expand(n, -1, -1), model._process_input(x)], 1) + model.encoder.pos_embedding
    probs, blocks = [], []
    for blk in model.encoder.layers:
        h = blk.ln_1(z)
        att = blk.self_attention
        e, heads = h.shape[-1], att.num_heads
        q, k, v = (
            t.reshape(n, -1, heads, e // heads).transpose(1, 2)
            for t in F.linear(h, att.in_proj_weight, att.in_proj_bias).split(e, -1)
        )
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(e // heads), -1)
        probs.append(p)
        z = z + att.out_proj((p @ v).transpose(1, 2).reshape(n, -1, e))
        z = z + blk.mlp(blk.ln_2(z))
        blocks.append(z)
    return model.heads(model.encoder.ln(z)[:, 0]), probs, blocks


def test_rollout_hand_computation() -> None:
    """3 tokens (class + 2 patches), 1 head, 2 blocks. Ã1 = 0.5 P1 + 0.5 I = [[.75, .125, .125],
    [0, 1, 0], [0, 0, 1]]; Ã2 = [[.5, .5, 0], [.25, .75, 0], [0, 0, 1]]; row 0 of Ã2 Ã1 =
    0.5 [.75, .125, .125] + 0.5 [0, 1, 0] = [.375, .5625, .0625] -> map [.5625, .0625]."""
    p1 = torch.tensor([[0.5, 0.25, 0.25], [0, 1, 0], [0, 0, 1]])[None, None]
    p2 = torch.tensor([[0.0, 1, 0], [0.5, 0.5, 0], [0, 0, 1]])[None, None]
    np.testing.assert_allclose(rollout_maps([p1, p2], 1).numpy(), [[0.5625, 0.0625]], atol=1e-7)


def test_rollout_chefer_legrad_equal_the_naive_forward() -> None:
    model = _tv_vit()
    x = _x()
    logits, probs, blocks = _naive_tv_vit(model, x)
    torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-5)
    targets = [[1, 3], [0, 2]]
    engine = CamEngine(model, methods=ATTENTION)
    cap = capture(engine.split, x, targets_of_view=targets, need_gradients=False)
    got = {m: METHODS[m].fn(cap, engine.runtime).reshape(2, 2, 4, 4) for m in ATTENTION}
    # rollout, by the formula in numpy on the naive probabilities
    for i in range(2):
        r = np.eye(17)
        for p in probs:
            a = 0.5 * p[i].detach().double().mean(0).numpy() + 0.5 * np.eye(17)
            r = (a / a.sum(1, keepdims=True)) @ r
        for j in range(2):
            np.testing.assert_allclose(got["rollout"][i, j].flatten().numpy(), r[0, 1:], rtol=1e-5, atol=1e-7)
    for i in range(2):
        for j, c in enumerate(targets[i]):
            grads = torch.autograd.grad(logits[i, c], probs, retain_graph=True)
            r = np.eye(17)
            for p, g in zip(probs, grads, strict=True):
                a = np.maximum(g[i].double().numpy() * p[i].detach().double().numpy(), 0).mean(0)
                r = r + a @ r
            np.testing.assert_allclose(got["chefer"][i, j].flatten().numpy(), r[0, 1:], rtol=1e-5, atol=1e-7)
            per_layer = []
            for z, p in zip(blocks, probs, strict=True):
                s = model.heads(model.encoder.ln(z.mean(1)))[i, c]
                (g,) = torch.autograd.grad(s, p, retain_graph=True)
                per_layer.append(np.maximum(g[i].double().numpy(), 0).mean((0, 1))[1:])
            np.testing.assert_allclose(got["legrad"][i, j].flatten().numpy(), np.mean(per_layer, 0), rtol=1e-5, atol=1e-8)
    assert float(got["chefer"].abs().max()) > 0 and float(got["legrad"].abs().max()) > 0


def test_formulas_on_given_tensors() -> None:
    """chefer_maps / legrad_maps on hand-set P and gradients (2 heads, 2 tokens, no prefix)."""
    p = torch.tensor([[[0.5, 0.5], [0.2, 0.8]], [[1.0, 0.0], [0.0, 1.0]]])[None]
    g = torch.tensor([[[2.0, -1.0], [1.0, 1.0]], [[-1.0, 3.0], [0.5, 0.0]]])[None]
    # mean_h ReLU(g*p): head0 [[1, 0], [.2, .8]], head1 [[0, 0], [0, 0]] -> [[.5, 0], [.1, .4]];
    # R = I + Ā = [[1.5, 0], [.1, 1.4]]; no prefix: mean of rows = [.8, .7]
    np.testing.assert_allclose(chefer_maps([p], [g], 0).numpy(), [[0.8, 0.7]], atol=1e-7)
    # ReLU(g) mean over heads and queries: head0 [[2, 0], [1, 1]], head1 [[0, 3], [.5, 0]] -> [.875, 1]
    np.testing.assert_allclose(legrad_maps([g], 0).numpy(), [[0.875, 1.0]], atol=1e-7)


def test_legrad_equals_torchcam() -> None:
    torchcam = pytest.importorskip("torchcam.methods")
    model = _tv_vit(3)
    x = _x()
    engine = CamEngine(model, methods=["legrad"])
    targets = [2, 4]
    cap = capture(engine.split, x, targets_of_view=[[t] for t in targets], need_gradients=False)
    got = METHODS["legrad"].fn(cap, engine.runtime)
    with torchcam.LeGrad(model, list(model.encoder.layers)) as extractor:
        for i, t in enumerate(targets):
            scores = model(x[i : i + 1])
            ref = extractor(t, scores, normalized=False)[0][0]
            torch.testing.assert_close(got[i], ref, rtol=1e-5, atol=1e-7)
    assert all(not m._forward_hooks for m in model.modules())


def test_several_targets_equal_single_runs() -> None:
    model = _tv_vit()
    x = _x()
    engine = CamEngine(model, methods=ATTENTION)
    both = engine(x, targets=[[1, 3], [0, 2]])
    for j in range(2):
        one = engine(x, targets=[[[1, 3], [0, 2]][i][j] for i in range(2)])
        for m in ATTENTION:
            torch.testing.assert_close(both.maps[m][:, j], one.maps[m][:, 0], rtol=0, atol=1e-6)


# ------------------------------------------------------------------ real architectures


def _vit_b_16() -> nn.Module:
    torch.manual_seed(0)
    m = torchvision.models.vit_b_16(weights=None, image_size=64)
    _head(m.heads.head, 0)
    return m.eval()


def _timm_deit_small() -> nn.Module:
    timm = pytest.importorskip("timm")
    m = timm.create_model("deit_small_distilled_patch16_224", pretrained=False, img_size=64, num_classes=7)
    _head(m.head, 0)
    _head(m.head_dist, 1)
    return m.eval()


@pytest.mark.parametrize("build", [_vit_b_16, _timm_deit_small, lambda: _hf("vit")], ids=["vit_b_16", "timm_deit", "hf_vit"])
def test_maps_for_real_architectures(build) -> None:
    model = build()
    size = 64 if build is not None and build in (_vit_b_16, _timm_deit_small) else 32
    x = _x(2, size)
    res = CamEngine(model, methods=[*ATTENTION, "gradcam"], input_size=x.shape)(x)
    for m in ATTENTION:
        maps = res.maps[m]
        assert maps.shape == (2, 1, size, size) and torch.isfinite(maps).all(), m
        flat = maps.flatten(1)
        assert bool((flat.amax(1) > flat.amin(1)).all()), f"{m}: a constant map"
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_refused_on_a_cnn_and_on_swin(tiny_cnn) -> None:
    assert attention_refusal(tiny_cnn) is not None
    with pytest.raises(UsageError, match=r"method 'rollout' cannot explain this model: .*attention.*; methods that can: gradcam"):
        CamEngine(tiny_cnn, "features", methods=["gradcam", "rollout"])
    swin = torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[4, 4], num_classes=5
    )
    assert "windows" in (attention_refusal(swin) or "")
    for m in ATTENTION:
        assert m not in methods_for(swin) and m not in methods_for(tiny_cnn)
        assert m in methods_for(_tv_vit())
