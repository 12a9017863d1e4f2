#!/usr/bin/env python
"""Per-family table of the registered methods: where each applies, its passes, its time per photo.

For every registered method: whether it applies to a CNN (ResNet-50), a ViT (ViT-B/16) and a
Swin (Swin-T) -- from the registry's own ``applies_to``, the check ``camscope methods --model``
prints -- its passes per image (as ``camscope methods --markdown`` prints them), and the
median seconds per photo on ResNet-50 (``layer4``) and ViT-B/16 (the last block's ``ln_1``,
camscope's default), beside pytorch-grad-cam / torch-cam where they ship the method, called on
the same model object, input, layer and target class in the same run (ViT: pytorch-grad-cam with
its usual ``reshape_transform`` dropping the class token; torch-cam's ``LeGrad`` on the encoder
blocks). Random weights (``torch.manual_seed(seed)``; the ViT's zero-initialised head
drawn from N(0, 0.02) so that its logits differ; no pretrained weights offline), 224x224,
the predicted class. Each call runs once untimed (warm-up), then ``--repeats`` times.

Methods with K full forwards per image (Score-CAM and its family; Ablation-CAM in the reference
tools, which run the whole network per channel) are timed only with ``--slow`` (minutes to hours
on a CPU); without it their rows give the passes and say "--slow".

    python benchmarks/families.py --photos 1 --repeats 3 --threads 1
    python benchmarks/families.py --photos 1 --slow --methods scorecam,ablationcam

Not part of the test suite. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "images" / "imagenet-samples"
# K full forwards per image in camscope (K = channels): timed only with --slow
SLOW_OURS = {"scorecam", "scorecam-logit-softmax", "sscam", "iscam"}
# K full forwards per image in the reference tools
SLOW_REF = SLOW_OURS | {"ablationcam"}
PGC_BASE = {
    "gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "hirescam": "HiResCAM",
    "layercam": "LayerCAM", "eigencam": "EigenCAM", "ablationcam": "AblationCAM",
    "scorecam-logit-softmax": "ScoreCAM",
}
PGC_VIT = PGC_BASE | {
    "gradcam-elementwise": "GradCAMElementWise", "eigengradcam": "EigenGradCAM", "kpcacam": "KPCA_CAM",
    "random": "RandomCAM",
}


def _norm(m: np.ndarray) -> np.ndarray:
    m = np.maximum(m, 0)
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def _vit_reshape(t: torch.Tensor) -> torch.Tensor:
    """(B, 1 + 14*14, C) tokens -> (B, C, 14, 14), class token dropped (pytorch-grad-cam's tutorial)."""
    b, n, c = t.shape
    s = int(round((n - 1) ** 0.5))
    return t[:, 1:, :].reshape(b, s, s, c).permute(0, 3, 1, 2)


def resnet_references(model: torch.nn.Module) -> dict[str, Callable[[torch.Tensor, int], np.ndarray]]:
    """ResNet-50: catalogue.py's references plus the base methods of pytorch-grad-cam."""
    import pytorch_grad_cam as pgc
    from catalogue import references
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    refs = references(model)
    for name, cls_name in PGC_BASE.items():
        cls = getattr(pgc, cls_name)

        def run(x, c, cls=cls):
            with cls(model=model, target_layers=[model.layer4]) as cam:
                return cam(input_tensor=x, targets=[ClassifierOutputTarget(c)])[0]
        refs[name] = run
    return refs


def vit_references(model: torch.nn.Module, layer: torch.nn.Module) -> dict[str, Callable[[torch.Tensor, int], np.ndarray]]:
    """ViT-B/16: pytorch-grad-cam's classes with the class-token reshape; torch-cam's LeGrad."""
    import pytorch_grad_cam as pgc
    import torchcam.methods as tc
    from pytorch_grad_cam.ablation_layer import AblationLayerVit
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    refs: dict[str, Callable[[torch.Tensor, int], np.ndarray]] = {}
    for name, cls_name in PGC_VIT.items():
        cls = getattr(pgc, cls_name)
        kw = {"ablation_layer": AblationLayerVit()} if name == "ablationcam" else {}

        def run(x, c, cls=cls, kw=kw):
            with cls(model=model, target_layers=[layer], reshape_transform=_vit_reshape, **kw) as cam:
                return cam(input_tensor=x, targets=[ClassifierOutputTarget(c)])[0]
        refs[name] = run

    def legrad(x, c):
        with tc.LeGrad(model, list(model.encoder.layers)) as ex:
            m = ex(c, model(x))[0][0]
        up = F.interpolate(m[None, None].float(), size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        return _norm(up.detach().numpy())
    refs["legrad"] = legrad
    return refs


def _timed(fn: Callable[[], np.ndarray], repeats: int, warm: bool = True) -> tuple[float, np.ndarray]:
    out = fn() if warm else None
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _corr(values: list[float]) -> str:
    ok = [v for v in values if v == v]
    return f"{statistics.median(ok):.3f}" if ok else "blank map"


def _fmt(s: float | None) -> str:
    return "-" if s is None else (f"{s:.3f}" if s < 10 else f"{s:.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="all", help="comma-separated registered names (default: all)")
    ap.add_argument("--photos", type=int, default=1)
    ap.add_argument("--images", type=Path, default=PHOTOS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--slow", action="store_true", help="also time the K-forward methods (minutes to hours)")
    ap.add_argument("--no-reference", action="store_true", help="camscope only")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import torchvision
    from PIL import Image

    from camscope.engine import CamEngine
    from camscope.methods import METHODS
    from camscope.models import Preprocess

    torch.manual_seed(args.seed)
    models = {
        "ResNet-50": torchvision.models.resnet50(weights=None).eval(),
        "ViT-B/16": torchvision.models.vit_b_16(weights=None).eval(),
    }
    # torchvision starts the ViT head at zero (every logit 0, every gradient map blank): a random head
    torch.nn.init.normal_(models["ViT-B/16"].heads.head.weight, std=0.02)
    swin = torchvision.models.swin_t(weights=None).eval()
    names = list(METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
    pre = Preprocess("classic")
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.photos]
    xs = [pre.to_tensor(Image.open(f).convert("RGB"))[None] for f in files]
    refs = {} if args.no_reference else {
        "ResNet-50": resnet_references(models["ResNet-50"]),
        "ViT-B/16": vit_references(models["ViT-B/16"], models["ViT-B/16"].encoder.layers[-1].ln_1),
    }
    layers = {"ResNet-50": "layer4", "ViT-B/16": None}
    sys.stderr.write(f"{len(files)} photo(s), {torch.get_num_threads()} thread(s), median of {args.repeats} "
                     f"after a warm-up, random weights (seed {args.seed})\n")

    rows = []
    for name in names:
        spec = METHODS[name]
        applies = {fam: spec.refusal(m) is None for fam, m in (("CNN", models["ResNet-50"]), ("ViT", models["ViT-B/16"]),
                                                               ("Swin", swin))}
        cells = {}
        for fam, model in models.items():
            if spec.refusal(model) is not None:
                cells[fam] = ("n/a", "", "")
                continue
            ours_t, ref_t, corr = [], [], []
            if name in SLOW_OURS and not args.slow:
                cells[fam] = ("--slow", "", "")
                continue
            engine = CamEngine(model, layers[fam], methods=[name], input_size=(224, 224))
            for x in xs:
                with torch.no_grad():
                    c = int(model(x).argmax())
                t, ours = _timed(lambda x=x, c=c, e=engine, n=name: e(x, targets=[[c]]).maps[n][0, 0].numpy(),
                                 args.repeats, warm=name not in SLOW_OURS)
                ours_t.append(t)
                ref = refs.get(fam, {}).get(name)
                if ref is None or (name in SLOW_REF and not args.slow):
                    continue
                t, theirs = _timed(lambda x=x, c=c, r=ref: r(x, c), args.repeats, warm=name not in SLOW_REF)
                ref_t.append(t)
                theirs = np.asarray(theirs, dtype=np.float64)
                if theirs.shape != ours.shape:
                    theirs = F.interpolate(torch.from_numpy(theirs)[None, None], size=ours.shape, mode="bilinear",
                                           align_corners=False)[0, 0].numpy()
                if ours.std() == 0 or theirs.std() == 0:  # a blank map (random weights) has no correlation
                    corr.append(float("nan"))
                else:
                    corr.append(float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]))
            o = statistics.median(ours_t)
            if ref_t:
                r = statistics.median(ref_t)
                cells[fam] = (_fmt(o), f"{_fmt(r)} ({r / o:.1f}x)", _corr(corr))
            else:
                cells[fam] = (_fmt(o), "-", "")
            sys.stderr.write(f"{name} {fam}: {cells[fam]}\n")
        rows.append((name, spec, applies, cells))

    print("| method | CNN | ViT | Swin | passes per image | ResNet-50 s | reference s (ratio) | corr | ViT-B/16 s | reference s (ratio) | corr |")
    print("|---|:-:|:-:|:-:|---|---:|---:|---:|---:|---:|---:|")
    for name, spec, applies, cells in rows:
        yes = {k: "yes" if v else "-" for k, v in applies.items()}
        r, v = cells["ResNet-50"], cells["ViT-B/16"]
        print(f"| `{name}` | {yes['CNN']} | {yes['ViT']} | {yes['Swin']} | {spec.passes()} | "
              f"{r[0]} | {r[1]} | {r[2]} | {v[0]} | {v[1]} | {v[2]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
