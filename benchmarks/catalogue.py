#!/usr/bin/env python
"""Time per photo of the catalogue methods on ResNet-50, beside pytorch-grad-cam / torch-cam.

Same model object (torchvision ResNet-50, random weights after ``torch.manual_seed(seed)``: no
pretrained weights offline), same 224x224 input (classic resize + ImageNet normalisation), same
target class (the predicted one), target layer ``layer4`` (stages layer3/2/1 for the multi-layer
methods). Each tool's call runs once untimed (warm-up), then ``--repeats`` times; the table
shows the median seconds, the ratio reference / camscope and the Pearson correlation of the two
224x224 maps (torch-cam's maps are upsampled and normalised like camscope's first).

    python benchmarks/catalogue.py --photos 2
    python benchmarks/catalogue.py --methods sscam,iscam --photos 1   # K*35 / K*10 forwards: hours on CPU

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FAST = (
    "gradcam-elementwise,eigengradcam,kpcacam,shapleycam,finercam,smoothgradcampp,guidedbackprop,"
    "guidedgradcam,fullgrad,layercam-fusion,refinecam,random"
)
PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "images" / "imagenet-samples"


def _norm(m: np.ndarray) -> np.ndarray:
    m = np.maximum(m, 0)
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def _lowres(cam: torch.Tensor, size: int = 224) -> np.ndarray:
    up = F.interpolate(cam[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return _norm(up.numpy())


def references(model: torch.nn.Module) -> dict[str, Callable[[torch.Tensor, int], np.ndarray]]:
    """method -> fn(x, class) -> (224,224) map of the reference library."""
    import pytorch_grad_cam as pgc
    import torchcam.methods as tc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST, ClassifierOutputTarget

    m = model
    stages = [m.layer4, m.layer3, m.layer2, m.layer1]

    def pgc_cam(cls, layers=None, target=ClassifierOutputTarget, **kw):
        def run(x, c):
            with cls(model=m, target_layers=layers or [m.layer4], **kw) as cam:
                return cam(input_tensor=x, targets=[target(c)])[0]
        return run

    def finer(x, c):
        with pgc.FinerCAM(m, [m.layer4]) as cam:
            return cam(x)[0]

    def refine(x, c):
        cam = pgc.RefineCAM(m, stages)
        try:
            return cam(x, [ClassifierOutputTarget(c)])[0]
        finally:
            for base in cam.base_cam_per_layer:
                base.activations_and_grads.release()

    gb_model = copy.deepcopy(m)  # pytorch-grad-cam swaps its ReLU modules

    def guided(x, c):
        return _norm(np.abs(pgc.GuidedBackpropReLUModel(gb_model, device="cpu")(x, c)).max(axis=2))

    def guided_gradcam(x, c):
        return _norm(pgc_cam(pgc.GradCAM)(x, c) * guided(x, c))

    def fullgrad(x, c):
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # it prints that target_layers is ignored
            return _pgc_fullgrad(pgc, m, x, c)

    def torchcam(cls, layers="layer4", fuse=False, **kw):
        def run(x, c):
            with cls(m, layers, input_shape=(3, 224, 224), **kw) as ex:
                cams = ex(c, m(x))
                return _lowres(ex.fuse_cams(cams)[0] if fuse else cams[0][0])
        return run

    return {
        "gradcam-elementwise": pgc_cam(pgc.GradCAMElementWise),
        "eigengradcam": pgc_cam(pgc.EigenGradCAM),
        "kpcacam": pgc_cam(pgc.KPCA_CAM),
        "shapleycam": pgc_cam(pgc.ShapleyCAM, target=ClassifierOutputReST),
        "finercam": finer,
        "smoothgradcampp": torchcam(tc.SmoothGradCAMpp),
        "guidedbackprop": guided,
        "guidedgradcam": guided_gradcam,
        "fullgrad": fullgrad,
        "layercam-fusion": torchcam(tc.LayerCAM, ["layer4", "layer3", "layer2", "layer1"], fuse=True),
        "refinecam": refine,
        "random": pgc_cam(pgc.RandomCAM),
        "sscam": torchcam(tc.SSCAM, batch_size=16),
        "iscam": torchcam(tc.ISCAM, batch_size=16),
    }


def _pgc_fullgrad(pgc, m, x, c):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with pgc.FullGrad(model=m, target_layers=[]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(c)])[0]


def _timed(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=FAST, help=f"comma-separated (default: {FAST}; also sscam, iscam)")
    ap.add_argument("--photos", type=int, default=2)
    ap.add_argument("--images", type=Path, default=PHOTOS)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import torchvision
    from PIL import Image

    from camscope.engine import CamEngine
    from camscope.models import Preprocess

    torch.manual_seed(args.seed)
    model = torchvision.models.resnet50(weights=None).eval()
    refs = references(model)
    pre = Preprocess("classic")
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.photos]
    print(f"ResNet-50 (random weights, seed {args.seed}), 224x224, layer4, {len(files)} photo(s), "
          f"{torch.get_num_threads()} threads, median of {args.repeats} run(s) after a warm-up")
    print(f"{'method':22s} {'photo':28s} {'camscope s':>10s} {'reference s':>11s} {'ratio':>7s} {'corr':>7s}")
    for method in args.methods.split(","):
        engine = CamEngine(model, "layer4", methods=[method], input_size=(224, 224))
        for f in files:
            x = pre.to_tensor(Image.open(f).convert("RGB"))[None]
            with torch.no_grad():
                c = int(model(x).argmax())
            t_ours, ours = _timed(
                lambda x=x, c=c, e=engine, m=method: e(x, targets=[[c]]).maps[m][0, 0].numpy(), args.repeats
            )
            ref = refs.get(method)
            if ref is None:
                print(f"{method:22s} {f.name[:28]:28s} {t_ours:10.3f} {'-':>11s}")
                continue
            t_ref, theirs = _timed(lambda x=x, c=c, r=ref: r(x, c), args.repeats)
            corr = float(np.corrcoef(ours.ravel(), np.asarray(theirs).ravel())[0, 1])
            print(f"{method:22s} {f.name[:28]:28s} {t_ours:10.3f} {t_ref:11.3f} {t_ref / t_ours:6.2f}x {corr:7.4f}")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
