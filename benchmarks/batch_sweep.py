#!/usr/bin/env python
"""How many rows per pass? camscope's Score-/Ablation-CAM over batch sizes, precisions and
memory formats, on one device. The CPU defaults in ``camscope/methods/perturbation.py``
(``FORWARD_BATCH``, ``TAIL_BATCH``) were chosen with it; the CUDA ones were not measured (no GPU
was available) and are what this script checks on a GPU.

    python benchmarks/batch_sweep.py --device cuda --photos 2
    python benchmarks/batch_sweep.py --device cpu --scorecam-batches 4,8,16 --ablation-batches 64,256

For every setting it prints the median seconds per photo over the photos (each photo timed
``--repeats`` times after one warm-up) and the lowest map correlation with the fp32 maps at the
first batch size. ``--forward-only`` times just the Score-CAM engine's full forwards (``Runtime
.forward`` on a batch of copies of the photos; milliseconds per image, fastest of the repeats):
seconds instead of minutes per setting, e.g. to compare eager and frozen copies:

    python benchmarks/batch_sweep.py --forward-only --freeze both --precisions fp32 --scorecam-batches 4,8,16

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

if str(Path(__file__).resolve().parent) not in sys.path:  # the cams package next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from cams import camscope_api as cs  # noqa: E402
from cams.common import DEFAULT_IMAGES, measure, measure_interleaved, pearson  # noqa: E402
from cams.context import build_model, list_photos  # noqa: E402


def ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", default=str(DEFAULT_IMAGES), help="folder of photos")
    p.add_argument("--photos", type=int, default=2, help="photos timed (default 2)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per photo after a warm-up")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--scorecam-batches", type=ints, default=None,
                   help="images per full forward (default: cpu 4,8,16,32; cuda 16,32,64,128,256,512)")
    p.add_argument("--ablation-batches", type=ints, default=None,
                   help="rows per tail pass at layer3 (default: cpu 64,256; cuda 128,256,512,1024,2048)")
    p.add_argument("--precisions", default=None, help="default: fp32,bf16 (cpu), fp32,bf16,fp16 (cuda)")
    p.add_argument("--channels-last", default="auto", choices=("auto", "both", "on", "off"),
                   help="memory format of Score-CAM's full forwards (default: camscope's choice)")
    p.add_argument("--freeze", default="auto", choices=("auto", "both", "on", "off"),
                   help="TorchScript-frozen copy for Score-CAM's full forwards (default: camscope's choice)")
    p.add_argument("--forward-only", action="store_true",
                   help="time only the full forwards (ms per image), not whole Score-/Ablation-CAM runs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    model, _ = build_model(args.model, seed=args.seed, device=args.device, prog="batch_sweep")
    pre = cs.classic_preprocess()
    paths = list_photos(Path(args.images), prog="batch_sweep")
    photos = [pre.to_tensor(cs.load_image(p))[None].to(device) for p in paths[: args.photos]]
    precisions = (args.precisions or ("fp32,bf16,fp16" if cuda else "fp32,bf16")).split(",")
    sc_batches = args.scorecam_batches or ([16, 32, 64, 128, 256, 512] if cuda else [4, 8, 16, 32])
    ab_batches = args.ablation_batches or ([128, 256, 512, 1024, 2048] if cuda else [64, 256])
    choice = {"auto": [None], "both": [True, False], "on": [True], "off": [False]}
    formats = choice[args.channels_last]
    freezes = choice[args.freeze]
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"# {args.model} (random weights, seed {args.seed}) on {name}, torch {torch.__version__}, "
          f"{len(photos)} photos, {args.repeats} repeats")
    timing = {"budget_s": math.inf, "device": device}

    def run(method: str, layer: str, batch: int, precision: str, cl: bool | None, fz: bool | None):
        engine = cs.cam_engine(model, layer, methods=[method], batch_size=batch, precision=precision,
                               channels_last=cl, freeze=fz)
        per_photo, maps = [], []
        for x in photos:
            m = measure(lambda x=x: engine(x), repeats=args.repeats, **timing)
            per_photo.append(m.seconds)
            maps.append(m.output.maps[method][0, 0].numpy())
        if cuda:
            torch.cuda.empty_cache()
        return statistics.median(per_photo), maps

    def corr(a: list, b: list) -> float:
        return min(pearson(x, y) for x, y in zip(a, b, strict=True))

    def label(flag: bool | None) -> str:
        return "auto" if flag is None else ("on" if flag else "off")

    if args.forward_only:
        # Per precision and batch size, the settings (channels-last x freeze) take turns run by
        # run, so that drifts in the machine's speed hit them all alike.
        print("\n| full forwards | rows/pass | precision | channels-last | freeze | copy used | ms/image (fastest) | ms/image (median) |")
        print("|---|---:|---|---|---|---|---:|---:|")
        for precision in precisions:
            for b in sc_batches:
                xb = torch.cat(photos).repeat((b + len(photos) - 1) // len(photos), 1, 1, 1)[:b]
                settings = [(cl, fz) for cl in formats for fz in freezes]
                rts = [cs.cam_engine(model, "layer4.-1", methods=["scorecam"], precision=precision,
                                     channels_last=cl, freeze=fz).runtime for cl, fz in settings]
                for rt in rts:
                    rt.forward(xb)  # warm-up (builds the private copy); measure_interleaved adds one more
                ms = measure_interleaved({str(i): (lambda rt=rt, xb=xb: rt.forward(xb)) for i, rt in enumerate(rts)},
                                         repeats=max(1, args.repeats), **timing)
                for i, ((cl, fz), rt) in enumerate(zip(settings, rts, strict=True)):
                    ts = [t / b * 1000 for t in ms[str(i)].times]
                    print(f"| {args.model} | {b} | {precision} | {label(cl)} | {label(fz)} | "
                          f"{cs.copy_used(rt)} | {min(ts):.1f} | {statistics.median(ts):.1f} |", flush=True)
        return 0

    print("\n| method | layer | rows/pass | precision | channels-last | freeze | s/photo | min corr vs fp32 |")
    print("|---|---|---:|---|---|---|---:|---:|")
    for method, layer, batches in (("scorecam", "layer4.-1", sc_batches), ("ablationcam", "layer3.-1", ab_batches)):
        ref = None
        for precision in precisions:
            settings = [(cl, fz) for cl in formats for fz in freezes] if method == "scorecam" else [(None, None)]
            for cl, fz in settings:
                for b in batches:
                    if cuda:
                        torch.cuda.reset_peak_memory_stats(device)
                    s, maps = run(method, layer, b, precision, cl, fz)
                    ref = ref or maps
                    extra = f" (peak {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB)" if cuda else ""
                    print(f"| {method} | {layer} | {b} | {precision} | {label(cl)} | {label(fz)} | {s:.3f}{extra} | "
                          f"{corr(ref, maps):.5f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
