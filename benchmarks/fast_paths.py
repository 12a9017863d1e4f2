#!/usr/bin/env python
"""Score-CAM / Ablation-CAM on one photo for any ``--model``: speed settings side by side.

The default ``--freeze auto`` against ``--freeze off`` (what ``auto`` did before the frozen copy
was used for timm, Hugging Face and import-path models: the channels-last eager copy), and the
hook path of the split (``allow_trace=False``, a full forward per Ablation-CAM tail: what
Hugging Face models used before their split traced) against the traced split. Runs alternate
(off, auto, off, auto...) so that load on a shared machine hits both; every time is the engine
call alone (model built once, imports excluded), with the Runtime's chosen mode.

    python benchmarks/fast_paths.py --model examples.efficientnet_lite0:build --methods scorecam --photo P.jpg
    python benchmarks/fast_paths.py --model hf/DIR --weights-tag none --methods ablationcam --compare split
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--weights-tag", default="IMAGENET1K_V1")
    p.add_argument("--photo", default="/work/shared/images/imagenet-samples/n01608432_kite.JPEG")
    p.add_argument("--methods", default="scorecam")
    p.add_argument("--compare", choices=("freeze", "split"), default="freeze")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from PIL import Image

    from camscope.core.runtime import SpeedSettings
    from camscope.engine import CamEngine
    from camscope.models import load_model

    loaded = load_model(args.model, weights_tag=args.weights_tag)
    x = loaded.preprocess.to_tensor(Image.open(args.photo).convert("RGB"))[None]
    methods = args.methods.split(",")
    if args.compare == "freeze":
        variants = {"freeze off": {"speed": SpeedSettings(freeze=False)}, "freeze auto": {"speed": SpeedSettings()}}
    else:
        variants = {"hook split": {"allow_trace": False}, "traced split": {}}
    engines = {k: CamEngine(loaded.model, methods=methods, input_size=x.shape, **kw) for k, kw in variants.items()}
    times: dict[str, list[float]] = {k: [] for k in variants}
    maps = {}
    for _ in range(args.repeats):
        for k, engine in engines.items():
            t0 = time.perf_counter()
            res = engine(x)
            times[k].append(time.perf_counter() - t0)
            maps[k] = res.maps
            print(f"{k:14s} {times[k][-1]:8.1f} s  mode={engine.runtime.mode}  traced={engine.split.traced}", flush=True)
    a, b = variants
    ta, tb = min(times[a]), min(times[b])
    print(f"{args.model} {args.methods}: {a} {ta:.1f} s, {b} {tb:.1f} s, ratio {ta / tb:.2f}x")
    for m in maps[a]:
        diff = float((maps[a][m] - maps[b][m]).abs().max())
        print(f"  {m}: max |map difference| {diff:.2e}")


if __name__ == "__main__":
    main()
